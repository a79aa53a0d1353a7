"""kubo's spelling of a boolean option, ``--name=false``, on a click switch pair.

kubo's commands take ``--recursive=false`` or ``--size=false``; click's switch pairs are
``--recursive/--no-recursive``, which keep ``-r`` a plain switch (an option that took a value
would swallow the path after ``ipfs pin add -r``).  A command made with
:func:`kubo_booleans` reads ``--name=false`` as ``--no-name`` and ``--name=true`` as
``--name``, for the names it is given, before ``--``.
"""

from __future__ import annotations

import click

_FALSE = ("false", "f", "0", "no")
_TRUE = ("true", "t", "1", "yes")


def kubo_booleans(*names: str) -> type[click.Command]:
    """A click.Command class that rewrites ``--<name>=<bool>`` for each of ``names``."""
    wanted = {f"--{name}" for name in names}

    def rewrite(arg: str) -> str:
        option, equals, value = arg.partition("=")
        if not equals or option not in wanted:
            return arg
        if value.lower() in _FALSE:
            return "--no-" + option[2:]
        if value.lower() in _TRUE:
            return option
        return arg  # click reports it

    class KuboBooleans(click.Command):
        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            end = args.index("--") if "--" in args else len(args)
            return super().parse_args(ctx, [rewrite(a) for a in args[:end]] + args[end:])

    return KuboBooleans
