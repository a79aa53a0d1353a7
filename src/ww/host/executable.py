"""Finding the program a cell runs, and what it needs to see inside the jail.

The host checks the executable before launching anything (bubblewrap would report a
missing or non-executable program as its own exit 1): 127 when it is not found, 126 when
it cannot be executed.  For a script, the interpreter named on its ``#!`` line must be
visible in the jail too.  A ``#!`` line is content, so it never decides what of the host is
bound (see :func:`interpreter_binds`): an interpreter in the system directories needs
nothing; the Python `ww` itself runs on gets the few files of its installation it needs;
one the operator named with ``--interpreter`` gets its installation; any other is bound
alone when it is a system file under another name, and refused otherwise.
"""

from __future__ import annotations

import os
import stat  # os imports it anyway: free
import sys

from ww.core.errors import CommandNotFoundError, NotExecutableError, UsageError
from ww.core.records import NamedTuple

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence

# Directories every jail already mounts read-only; nothing under them needs its own bind.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class Bind(NamedTuple):
    """One host file or directory the jail shows read-only: ``source`` at ``dest``.

    ``source`` is the real path (no symlink in it) the host resolved and checked, when it
    checked; ``dest`` is the path the cell knows it by.  The jail binds exactly ``source``,
    never resolving ``dest`` again: a symlink on the way to ``dest`` that someone flips
    after the check cannot change what the cell is shown.
    """

    source: str
    dest: str


def bind(path: str) -> Bind:
    """``path`` bound at its own place, from where it really is now."""
    return Bind(os.path.realpath(path), path)


class Program(NamedTuple):
    """What the jail must exec and expose for one cell program."""

    argv: list[str]  # exec argv: [program, args...] or [interpreter, (interp-arg), script, args...]
    binds: list[Bind]  # what the jail shows read-only


def is_system(path: str) -> bool:
    """Whether ``path`` is one of :data:`SYSTEM_DIRS` or below one: every jail mounts those,
    so nothing there needs a bind of its own."""
    return any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS)


def which(name: str, search_path: str | None = None) -> str | None:
    """The first executable file ``name`` in ``search_path`` (default: $PATH), made absolute.

    (shutil.which does the same, but importing shutil costs `ww run` a millisecond.)
    """
    dirs = (search_path if search_path is not None else os.environ.get("PATH", os.defpath))
    for d in dirs.split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None


def resolve(command: str, search_path: str | None = None) -> str:
    """The absolute path of ``command``: as given if it has a slash, else searched in PATH."""
    if "/" in command:
        path = os.path.abspath(command)
        if not os.path.lexists(path):
            raise CommandNotFoundError(f"{command}: no such file")
        return path
    found = which(command, search_path)
    if found is None:
        # which() only returns executables; tell "missing" from "not executable".
        for d in (search_path or os.environ.get("PATH", os.defpath)).split(os.pathsep):
            if d and os.path.isfile(os.path.join(d, command)):
                raise NotExecutableError(f"{command}: permission denied (not executable)")
        # As a shell, a bare name is looked up in PATH only, never in the current directory;
        # but say so when the file is right there.
        hint = f" (did you mean ./{command}?)" if os.path.isfile(command) else ""
        raise CommandNotFoundError(f"{command}: command not found{hint}")
    return found


def _check_executable(path: str, shown: str) -> None:
    if not os.path.exists(path):
        raise CommandNotFoundError(f"{shown}: no such file (broken symlink?)")
    if os.path.isdir(path):
        raise NotExecutableError(f"{shown}: is a directory")
    if not os.access(path, os.X_OK):
        raise NotExecutableError(f"{shown}: permission denied (not executable)")


def _read_head(path: str) -> bytes:
    """The first 256 bytes of ``path`` (what the kernel reads to choose a loader), or a 126
    error (see :func:`_read_at`)."""
    return _read_at(path, 0, 256)


def _read_at(path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``path`` from ``offset``, or a 126 error: the kernel executes
    only a regular file, so anything else (a FIFO, whose ``open`` would wait for a writer
    forever; a device, whose ``open`` may act) is refused from its ``stat``, before it is
    opened; and once more from the file opened, which might have been swapped meanwhile
    (opened without waiting)."""
    try:
        _require_regular(os.stat(path), path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise NotExecutableError(f"{path}: cannot read: {e.strerror}") from None
    try:
        _require_regular(os.fstat(fd), path)
        if offset + size > _MAX_OFFSET:  # an offset from an ELF header: past any file's end
            return b""
        data = b""
        while len(data) < size and (more := os.pread(fd, size - len(data), offset + len(data))):
            data += more
        return data
    except OSError as e:
        raise NotExecutableError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)


_MAX_OFFSET = (1 << 63) - 1  # off_t's


def _require_regular(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
        raise NotExecutableError(f"{path}: cannot execute: Permission denied ({kind}; only a "
                                 "regular file is a program)")


# What an ELF header says about the machine it is for: (EI_CLASS, EI_DATA, e_machine).
# Besides the host's own kind, the 32-bit kind its kernel commonly runs too.
_ELF_COMPAT = {(2, 1, 62): {(1, 1, 3)},  # x86-64 also runs i386
               (2, 1, 183): {(1, 1, 40)}}  # aarch64 also runs 32-bit arm
_ET_EXEC, _ET_DYN = 2, 3
_PT_INTERP = 3
_PATH_MAX = 4096
_host_elf: tuple[int, int, int] | None = None


def _elf_kind(head: bytes) -> tuple[int, int, int] | None:
    """(class, data, machine) of an ELF executable's header, None if it is not one the
    kernel could load (no ELF magic, not an executable or shared object, a program header
    size that does not fit its class, no program headers)."""
    if len(head) < 64 or not head.startswith(b"\x7fELF") or head[4] not in (1, 2):
        return None
    klass, data = head[4], head[5]
    if data not in (1, 2):
        return None

    def half(offset: int) -> int:
        return int.from_bytes(head[offset:offset + 2], "big" if data == 2 else "little")

    phentsize, phnum = (half(54), half(56)) if klass == 2 else (half(42), half(44))
    if half(16) not in (_ET_EXEC, _ET_DYN) or phnum == 0 or phentsize != (56 if klass == 2
                                                                           else 32):
        return None
    return klass, data, half(18)


def _runs_here(head: bytes) -> bool:
    """Whether ``head`` starts an ELF executable for this machine (the one the Python `ww`
    runs on is for, or the 32-bit kind of it :data:`_ELF_COMPAT` names)."""
    global _host_elf
    kind = _elf_kind(head)
    if kind is None:
        return False
    if _host_elf is None:
        _host_elf = _elf_kind(_read_head("/proc/self/exe")) or (0, 0, 0)
    return kind == _host_elf or kind in _ELF_COMPAT.get(_host_elf, ())


def _program_headers_load(path: str, head: bytes) -> bool:
    """Whether the kernel's ELF loader gets past the program headers of ``path`` (whose
    header ``head`` is one :func:`_runs_here` accepts) without ``ENOEXEC``, as
    ``load_elf_binary`` checks them: at most a page of them (and 64 KiB), all inside the
    file, and the first ``PT_INTERP``, if any, 2 to ``PATH_MAX`` bytes ending in a NUL.

    These are the checks that answer ``ENOEXEC``, on which bubblewrap's ``execvp`` runs the
    file with ``/bin/sh``: a file with a valid-looking ELF header and shell commands after
    it ran as a shell script, jailed (``--jail=none``'s ``execve`` refused it)."""
    klass, order = head[4], "big" if head[5] == 2 else "little"

    def word(data: bytes, offset: int, size: int) -> int:
        return int.from_bytes(data[offset:offset + size], order)

    phoff = word(head, 32, 8) if klass == 2 else word(head, 28, 4)
    phentsize, phnum = (word(head, 54, 2), word(head, 56, 2)) if klass == 2 else (
        word(head, 42, 2), word(head, 44, 2))
    size = phentsize * phnum
    if size > min(65536, max(os.sysconf("SC_PAGE_SIZE"), 4096)):
        return False
    table = _read_at(path, phoff, size)
    if len(table) != size:
        return False
    for i in range(phnum):
        entry = table[i * phentsize:(i + 1) * phentsize]
        if word(entry, 0, 4) != _PT_INTERP:
            continue
        offset, filesz = ((word(entry, 8, 8), word(entry, 32, 8)) if klass == 2
                          else (word(entry, 4, 4), word(entry, 16, 4)))
        if not 2 <= filesz <= _PATH_MAX:
            return False
        return _read_at(path, offset + filesz - 1, 1) == b"\0"
    return True


def _check_format(path: str, head: bytes, shown: str) -> None:
    """Refuse (126, "Exec format error") what the kernel would not execute: a file that is
    neither a script with a ``#!`` line naming its interpreter nor an ELF executable for
    this machine (whose program headers the kernel would load: see
    :func:`_program_headers_load`).

    The kernel answers such a file with ENOEXEC, and ``execvp`` (bubblewrap's) then hands
    it to ``/bin/sh`` as a shell script: an HTML page or a text file without ``#!`` would run
    as commands, jailed, while ``--jail=none`` (``execve``) refuses it.  The host decides
    first, the same way for both: nothing runs by accident.
    """
    if _read_shebang(head) is None and not (_runs_here(head)
                                            and _program_headers_load(path, head)):
        raise NotExecutableError(
            f"{shown}: cannot execute: Exec format error (neither an ELF executable for this "
            "machine nor a script starting with #!)")


def _read_shebang(head: bytes) -> list[str] | None:
    """The interpreter and its one argument on a ``#!`` line, read as the kernel reads them
    (``binfmt_script``): only spaces and tabs are trimmed or separate, so a carriage return
    (a script with CRLF line endings) stays in the name: ``#!/bin/sh\r`` names
    ``/bin/sh\r``, which the kernel does not find."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip(" \t")
    if not line:
        return None
    # The interpreter ends at the first space or tab, as the kernel reads it; everything
    # after it is passed as one argument.
    cut = min((i for i in (line.find(" "), line.find("\t")) if i >= 0), default=len(line))
    interp, arg = line[:cut], line[cut:].strip(" \t")
    return [interp] + ([arg] if arg else [])


def _refuse_carriage_return(command: str, interp: str, found: bool) -> None:
    """``#!/bin/sh\r``: the kernel looks for an interpreter named ``/bin/sh\r`` and answers
    ENOENT (bash: "required file not found", 127); so does ``ww``, saying why (unless a file
    of that very name exists: the kernel would run it)."""
    if interp.endswith("\r") and not found:
        raise CommandNotFoundError(
            f"{command}: interpreter {interp!r} not found: the #! line ends in a carriage "
            "return (CRLF line endings; convert the script with dos2unix)")


def _is_installation(prefix: str) -> bool:
    """A directory that is a Python installation or virtualenv, not just any parent of bin/.

    Binding the parent of an interpreter's ``bin`` blindly would expose a whole home
    directory for an interpreter in ``~/bin``; only a real installation is bound.
    """
    if os.path.isfile(os.path.join(prefix, "pyvenv.cfg")):
        return True
    lib = os.path.join(prefix, "lib")
    try:
        return any(name.startswith("python3") for name in os.listdir(lib))
    except OSError:
        return False


def _never_bound(prefix: str) -> bool:
    """The root, the system directories, and the home directory or any directory above it."""
    if prefix == "/" or is_system(prefix):
        return True
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(prefix)
    return home == real or home.startswith(real.rstrip("/") + "/")


def prefix_dirs(interpreter: str) -> list[str]:
    """The installation a Python interpreter needs: a virtualenv and its base installation.

    Any other interpreter outside the system directories is bound alone (the file itself).
    """
    dirs: list[str] = []
    for exe in (interpreter, os.path.realpath(interpreter)):
        bindir = os.path.dirname(exe)
        prefix = os.path.dirname(bindir)
        if os.path.basename(bindir) != "bin" or _never_bound(prefix):
            continue
        if not _is_installation(prefix):
            continue
        dirs.append(prefix)
        cfg = os.path.join(prefix, "pyvenv.cfg")
        if os.path.isfile(cfg):
            with open(cfg, errors="replace") as f:
                for line in f:
                    key, _, value = line.partition("=")
                    home = value.strip()
                    if key.strip() == "home" and home:
                        base = os.path.dirname(home) if os.path.basename(home) == "bin" else home
                        if not _never_bound(base) and _is_installation(base):
                            dirs.append(base)
    return list(dict.fromkeys(dirs))


def _sdk_dir_for(interpreter: str) -> list[str]:
    """When the interpreter is the one `ww` itself runs on, expose the `ww` package too.

    With an editable install the package lives in the source tree, outside the
    virtualenv; only the package directory itself is bound, not the tree around it.
    """
    same = os.path.realpath(interpreter) == os.path.realpath(sys.executable)
    same_env = os.path.dirname(os.path.dirname(interpreter)) == sys.prefix
    if not (same or same_env):
        return []
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    return [] if package.startswith(sys.prefix + "/") else [package]


def _is_own_python(path: str) -> bool:
    """``path`` names the Python `ww` runs on: its executable, a name for it in the same
    ``bin`` directory (``python3``, ``python3.11``), or the real file they lead to."""
    own = os.path.realpath(sys.executable)
    if path in (sys.executable, own):
        return True
    return (os.path.dirname(path) == os.path.dirname(sys.executable)
            and os.path.realpath(path) == own)


def _below(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _own_python_binds() -> list[str]:
    """The files of `ww`'s own Python installation a cell on it needs, and nothing more.

    Its virtualenv's ``pyvenv.cfg`` and the library directories on `ww`'s own ``sys.path``
    (the standard library, ``lib-dynload``, ``site-packages``), its shared ``libpython``,
    and the `ww` package: never the directory around them, which for a virtualenv made in
    a project's root is the whole project.
    """
    binds: list[str] = []
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if os.path.isfile(cfg):
        binds.append(cfg)
    for entry in sys.path:
        for prefix in (sys.prefix, sys.base_prefix):
            rel = os.path.relpath(entry, prefix) if entry and _below(entry, prefix) else ""
            if rel.split("/")[0] in ("lib", "lib64") and os.path.isdir(entry):
                binds.append(entry)
    try:
        with open("/proc/self/maps") as maps:  # the libpython this very interpreter loaded
            binds += [line.split(None, 5)[5].strip() for line in maps
                      if "/libpython" in line and len(line.split(None, 5)) == 6]
    except OSError:
        pass
    binds += _sdk_dir_for(sys.executable)
    # A directory on sys.path inside another (site-packages in the standard library) once.
    kept: list[str] = []
    for path in sorted(set(binds), key=len):
        if not any(_below(path, k) for k in kept):
            kept.append(path)
    return [b for b in dict.fromkeys(binds) if b in kept]


class UntrustedInterpreterError(NotExecutableError):
    """A ``#!`` line names an interpreter outside the system directories nobody vouched for."""


def interpreter_binds(program: str, interpreter: str,
                      trusted: Sequence[str] = ()) -> list[Bind]:
    """What the jail must bind for ``interpreter``, named by the ``#!`` line of ``program``.

    The ``#!`` line is content: it chooses the interpreter, never the host directories the
    jail shows.  So, by the path it names (compared as written, never through symlinks):

    * in the system directories, and a system file: nothing (the jail shows them all);
    * the Python `ww` itself runs on: the interpreter and :func:`_own_python_binds`;
    * one in ``trusted`` (``--interpreter``): the interpreter and its installation
      (:func:`prefix_dirs`), as the operator asked;
    * any other that is a system file under another name (a virtualenv's ``python3`` made
      from the system's): that file alone, at the path named, bound from the very real path
      checked here (never resolved again: whoever can flip a symlink on the path named
      cannot make the jail show another file in its place);
    * anything else: refused (:class:`UntrustedInterpreterError`, exit 126), before the
      host even looks whether the file exists.
    """
    path = os.path.normpath(interpreter)
    if _is_own_python(path):
        return [bind(p) for p in (path, *_own_python_binds())]
    if path in {os.path.normpath(t) for t in trusted}:
        return [bind(p) for p in (path, *prefix_dirs(path))]
    real = os.path.realpath(path)
    if is_system(real):
        return [] if is_system(path) else [Bind(real, path)]
    raise UntrustedInterpreterError(
        f"{program}: interpreter {interpreter} is outside the system directories and is "
        "neither the Python ww runs on nor named with --interpreter: a #! line does not "
        "choose what of the host the jail shows (pass --interpreter to allow it)")


def check_interpreters(paths: list[str] | tuple[str, ...]) -> list[str]:
    """``--interpreter PATH`` values: absolute paths of executable files, or a UsageError."""
    checked = []
    for path in paths:
        if not os.path.isabs(path):
            raise UsageError(f"--interpreter {path!r}: expected an absolute path")
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise UsageError(f"--interpreter {path!r}: not an executable file")
        checked.append(os.path.normpath(path))
    return checked


_ENV_S_SYNTAX = frozenset("\"'\\$#")  # what GNU env -S reads besides white space


def prepare(command: str, args: list[str], search_path: str | None = None,
            interpreters: Sequence[str] = (), jailed: bool = True) -> Program:
    """Resolve ``command`` and work out the exec argv and read-only binds for the jail.

    ``interpreters`` are the ones the operator named with ``--interpreter``: a ``#!`` line
    naming one of them gets its installation bound (see :func:`interpreter_binds`).
    """
    path = resolve(command, search_path)
    _check_executable(path, command)
    head = _read_head(path)
    _check_format(path, head, command)
    shebang = _read_shebang(head)
    if _below(path, "/proc") or _below(path, "/dev"):
        # /proc/self/exe, /dev/fd/5: in the cell they name something else or nothing (the
        # cell is another process, which gets no fd of the host's but 0-3; a jail mounts a
        # /proc and a /dev of its own, and bubblewrap cannot bind over them): the program is
        # the file the host resolved and checked, exec'd by its real path.
        path = os.path.realpath(path)
    binds = [] if is_system(path) else [bind(path)]
    if shebang is None:
        return Program(argv=[path, *args], binds=binds)
    interp, *interp_arg = shebang
    env_prefix: list[str] = []  # `env NAME=VALUE...` run before the interpreter
    _refuse_carriage_return(command, interp, os.path.lexists(interp))
    if os.path.basename(interp) == "env" and interp_arg:
        # `#!/usr/bin/env NAME`: the jail has no PATH of the host's, so resolve NAME here,
        # first in the environment `ww` itself runs from (its virtualenv's bin), so that a
        # `#!/usr/bin/env python3` cell finds the interpreter that has this SDK installed.
        # env gets the rest of the line as one argument, a "\r" at its end included ...
        words = [w for w in interp_arg[0].replace("\t", " ").split(" ") if w]
        if words[0] == "-S":  # ... but its split-string option, `#!/usr/bin/env -S python3
            words = interp_arg[0].split()[1:]  # -S`, splits at any white space, "\r" too
            if any(c in _ENV_S_SYNTAX for c in interp_arg[0]):
                # GNU env also reads quotes, backslash escapes, ${VAR} and # comments there:
                # split as plain words, `-S python3 -c "print(1)"` ran `python3 -c
                # '"print(1)"'`, a program the author never wrote (it printed nothing)
                raise NotExecutableError(
                    f"{command}: unsupported interpreter line: #!{interp} {interp_arg[0]} "
                    "(quotes, backslashes, $ and # after env -S are not read as env reads "
                    "them)")
        # env's NAME=VALUE words before the command set the command's environment
        # (`#!/usr/bin/env -S LC_ALL=C python3`): env itself is kept to set them
        assignments = []
        while words and "=" in words[0][1:]:
            assignments.append(words.pop(0))
        if not words or words[0].startswith("-") or "=" in words[0]:
            raise NotExecutableError(
                f"{command}: unsupported interpreter line: #!{interp} {interp_arg[0]}"
            )
        if assignments:
            if not is_system(interp):  # every jail has the system's env, and only that
                raise NotExecutableError(
                    f"{command}: unsupported interpreter line: #!{interp} {interp_arg[0]} "
                    "(NAME=VALUE is set only by a system env)")
            _check_executable(interp, f"{command}: interpreter {interp}")
            env_prefix = [interp, *assignments]
        name = words[0]
        own_bin = os.path.dirname(sys.executable)
        found = which(name, os.pathsep.join([own_bin, search_path or os.defpath]))
        _refuse_carriage_return(command, name, found is not None)
        if found is None:
            raise CommandNotFoundError(f"{command}: interpreter {name!r} not found in PATH")
        interp, interp_arg = found, words[1:]
    elif not os.path.isabs(interp):
        raise NotExecutableError(f"{command}: interpreter {interp!r} is not an absolute path")
    if jailed:
        extras = interpreter_binds(command, interp, interpreters)
    else:
        extras = []  # --jail=none: nothing is bound, the interpreter runs on the host
    _check_executable(interp, f"{command}: interpreter {interp}")
    _check_format(interp, _read_head(interp), f"{command}: interpreter {interp}")
    for extra in extras:
        if not is_system(extra.dest) and extra not in binds:
            binds.append(extra)
    return Program(argv=[*env_prefix, interp, *interp_arg, path, *args], binds=binds)
