"""Finding the program a cell runs, and what it needs to see inside the jail.

The host checks the executable before launching anything (bubblewrap would report a
missing or non-executable program as its own exit 1): 127 when it is not found, 126 when
it cannot be executed.  For a script, the interpreter named on its ``#!`` line must be
visible in the jail too, with the interpreter's prefix (for Python: its virtualenv and
the base installation), so that a Python cell using this project's SDK from the project's
own virtualenv runs with no extra flags.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ww.errors import CommandNotFoundError, NotExecutableError

# Directories every jail already mounts read-only; nothing under them needs its own bind.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass
class Program:
    """What the jail must exec and expose for one cell program."""

    argv: list[str]  # exec argv: [program, args...] or [interpreter, (interp-arg), script, args...]
    binds: list[str] = field(default_factory=list)  # host paths to bind read-only, at the same path


def _is_system(path: str) -> bool:
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
        raise CommandNotFoundError(f"{command}: command not found")
    return found


def _check_executable(path: str, shown: str) -> None:
    if not os.path.exists(path):
        raise CommandNotFoundError(f"{shown}: no such file (broken symlink?)")
    if os.path.isdir(path):
        raise NotExecutableError(f"{shown}: is a directory")
    if not os.access(path, os.X_OK):
        raise NotExecutableError(f"{shown}: permission denied (not executable)")


def _read_shebang(path: str) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        raise NotExecutableError(f"{path}: cannot read: {e.strerror}") from None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not line:
        return None
    # The kernel passes everything after the interpreter as one argument.
    interp, _, arg = line.partition(" ")
    arg = arg.strip()
    return [interp] + ([arg] if arg else [])


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
    if prefix == "/" or _is_system(prefix):
        return True
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(prefix)
    return home == real or home.startswith(real.rstrip("/") + "/")


def _prefix_dirs(interpreter: str) -> list[str]:
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


def prepare(command: str, args: list[str], search_path: str | None = None) -> Program:
    """Resolve ``command`` and work out the exec argv and read-only binds for the jail."""
    path = resolve(command, search_path)
    _check_executable(path, command)
    shebang = _read_shebang(path)
    binds = [] if _is_system(path) else [path]
    if shebang is None:
        return Program(argv=[path, *args], binds=binds)
    interp, *interp_arg = shebang
    if os.path.basename(interp) == "env" and interp_arg:
        # `#!/usr/bin/env NAME`: the jail has no PATH of the host's, so resolve NAME here,
        # first in the environment `ww` itself runs from (its virtualenv's bin), so that a
        # `#!/usr/bin/env python3` cell finds the interpreter that has this SDK installed.
        words = interp_arg[0].split()
        if words[0] == "-S":  # env's split-string option: `#!/usr/bin/env -S python3 -S`
            words = words[1:]
        if not words or words[0].startswith("-"):
            raise NotExecutableError(
                f"{command}: unsupported interpreter line: #!{interp} {interp_arg[0]}"
            )
        name = words[0]
        own_bin = os.path.dirname(sys.executable)
        found = which(name, os.pathsep.join([own_bin, search_path or os.defpath]))
        if found is None:
            raise CommandNotFoundError(f"{command}: interpreter {name!r} not found in PATH")
        interp, interp_arg = found, words[1:]
    elif not os.path.isabs(interp):
        raise NotExecutableError(f"{command}: interpreter {interp!r} is not an absolute path")
    _check_executable(interp, f"{command}: interpreter {interp}")
    for extra in [interp, *_prefix_dirs(interp), *_sdk_dir_for(interp)]:
        if not _is_system(extra) and extra not in binds:
            binds.append(extra)
    return Program(argv=[interp, *interp_arg, path, *args], binds=binds)
