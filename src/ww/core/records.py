"""``NamedTuple`` classes without importing :mod:`typing` at run time.

Importing :mod:`typing` (with :mod:`re`, :mod:`enum`, :mod:`contextlib` and
:mod:`functools`, which it imports) costs `ww run /bin/true` about ten milliseconds of a
start-up budget of a few tens.  ``class X(NamedTuple)`` written against this module's
:data:`NamedTuple` is, for a type checker, :class:`typing.NamedTuple` itself; at run time it
is built by :func:`collections.namedtuple` the way :mod:`typing` builds it: the annotated
fields in order, their defaults, the class's docstring, methods and properties.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    _SKIP = frozenset({"__annotations__", "__module__", "__qualname__", "__dict__",
                       "__weakref__", "__slots__"})

    class _Meta(type):
        def __new__(mcs, name, bases, namespace):  # noqa: N804
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[f] for f in fields if f in namespace]
            cls = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            cls.__annotations__ = dict(namespace.get("__annotations__", {}))
            for key, value in namespace.items():
                if key not in _SKIP and key not in fields:
                    setattr(cls, key, value)
            return cls

    _Base = type.__new__(_Meta, "NamedTuple", (), {})

    def NamedTuple(*args, **kwargs):  # noqa: N802
        raise TypeError("ww.core.records.NamedTuple is only a base class")

    NamedTuple.__mro_entries__ = lambda bases: (_Base,)
