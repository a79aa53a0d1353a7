"""`ww`'s console script: a plain `ww run` goes straight to ww.app, all else through click.

Importing click costs a `ww run` more than the rest of its start-up together, so a command
line of the form ``ww [--debug] [--json] run [FLAGS...] EXECUTABLE [ARGS...]`` is parsed here,
from the flag table :data:`ww.app.options.FLAGS`, without click.  Anything this parser is not
sure of -- ``--help``, an unknown or malformed flag, a value a flag's check refuses, a missing
EXECUTABLE, a ``WW_*`` variable of a repeatable flag or a switch's variable that is not
plainly true or false -- goes to the click command instead
(:mod:`ww.cli.main`), which then prints the same help and the same usage errors as always.
So the fast path accepts only command lines click would parse to the very same options
(tests/cli/test_entry.py holds the two together), and never has a message of its own.
"""

from __future__ import annotations

import os
import sys

from ww.app.options import FLAGS, GLOBAL_FLAGS, MANY, SWITCH, RunOptions

_BY_FLAG = {flag.flag: flag for flag in FLAGS}
_GLOBAL = {flag.flag: flag.field for flag in GLOBAL_FLAGS}
_JAILS = ("bwrap", "none")


def main(argv: list[str] | None = None) -> None:
    """Run `ww` with ``argv`` (default: the process's arguments); never returns."""
    occupy_closed_stdio()
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_run(args)
    if options is None:
        from ww.cli.main import main as click_main

        click_main(args)
        return
    try:
        from ww.app.run import run

        status = run(options)
    except BaseException as failure:  # reported exactly as the click command reports it
        from ww.cli.main import main as click_main

        click_main(args, failure=failure, debug=options.debug)
        return
    exit_now(status)


def parse_run(args: list[str]) -> RunOptions | None:
    """The options of a plain `ww run` command line, or None: let click parse it."""
    from_env = _from_environment()
    if from_env is None:
        return None  # a variable this parser is not sure of: click reads and checks it
    found: dict[str, object] = {}
    i = 0
    while i < len(args) and args[i] in _GLOBAL:
        found[_GLOBAL[args[i]]] = True
        i += 1
    if i == len(args) or args[i] != "run":
        return None
    i += 1
    many: dict[str, list[str]] = {}
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        flag = _BY_FLAG.get(name)
        if flag is None or (flag.kind == SWITCH and eq):
            return None
        if flag.kind == SWITCH:
            found[flag.field] = True
            continue
        if not eq:
            if i == len(args) or args[i].startswith("-"):
                return None
            value = args[i]
            i += 1
        if flag.kind == MANY:
            many.setdefault(flag.field, []).append(value)
        else:
            found[flag.field] = value
    if i == len(args):
        return None  # no EXECUTABLE
    env_fields = {f for f in from_env if f not in found and f not in many}
    for field, setting in from_env.items():  # as click: the command line beats the variable
        found.setdefault(field, setting)
    found["from_env"] = tuple(f.field for f in FLAGS if f.field in env_fields)
    try:
        found.update(_checked(found, many))
    except ValueError:
        return None
    return RunOptions(executable=args[i], args=tuple(args[i + 1:]),
                      ww_env=os.environ.get("WW_ENV", ""),
                      search_path=os.environ.get("PATH", os.defpath),
                      **found)  # type: ignore[arg-type]


# click's reading of a boolean flag's variable (BoolParamType); any other value is an error
# click reports, so such a command line goes to click.
_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")


def _from_environment() -> dict[str, object] | None:
    """The options the ``WW_*`` variables set, as click reads them: a switch's variable is a
    boolean, a one-value flag's is its value, an empty variable is unset.  None where this
    parser is not sure: a variable of a repeatable flag (click splits it), or a switch's
    value that is not a plain boolean."""
    found: dict[str, object] = {}
    for flag in (*FLAGS, *GLOBAL_FLAGS):
        value = os.environ.get(flag.envvar) if flag.envvar else None
        if not value:
            continue
        if flag.kind == MANY:
            return None
        if flag.kind == SWITCH:
            word = value.strip().lower()
            if word not in _TRUE + _FALSE:
                return None
            found[flag.field] = word in _TRUE
        else:
            found[flag.field] = value
    return found


def _checked(found: dict[str, object], many: dict[str, list[str]]) -> dict[str, object]:
    """The values as click's types and callbacks make them; ValueError where they refuse."""
    checked: dict[str, object] = {name: tuple(values) for name, values in many.items()}
    checked["peers_on_command_line"] = "peers" in many
    if found.get("jail", "bwrap") not in _JAILS:
        raise ValueError("--jail")
    if found.get("routing", "dht") not in ("dht", "dhtserver", "none"):
        raise ValueError("--routing")
    if found.get("inbound", "full") not in ("full", "calls"):
        raise ValueError("--inbound")
    if "login_timeout" in found:
        checked["login_timeout"] = float(str(found["login_timeout"]))
    if "ipfs_api" in found:
        checked["ipfs_api"] = _ipfs_api(str(found["ipfs_api"]))
    if many.get("peers") or many.get("join") or many.get("listen") or many.get("bootstrap"):
        from ww.p2p import check_join_addr, check_listen_addr

        for name, check in (("peers", check_join_addr), ("join", check_join_addr),
                            ("listen", check_listen_addr), ("bootstrap", check_join_addr)):
            if name in many:
                checked[name] = tuple(check(value) for value in many[name])
    if "allow_dial" in many:
        from ww.p2p.dial_policy import parse_range

        checked["allow_dial"] = tuple(str(parse_range(value)) for value in many["allow_dial"])
    return checked


def _ipfs_api(value: str) -> str | None:
    if not value:
        return None
    from ww.ipfs.api import IpfsError
    from ww.ipfs.kubo import KuboClient

    try:
        KuboClient(value)  # parses the address; contacts nothing
    except IpfsError as e:
        raise ValueError(str(e)) from None
    return value


def occupy_closed_stdio() -> None:
    """Open ``/dev/null`` on any of fds 0, 1 and 2 the caller closed (``ww … >&-``), in the
    direction that fails (read-only for 1 and 2, write-only for 0), inheritable as they are.

    Writing to stdout still fails, as on the closed fd (EBADF); but the number is taken, so
    no file `ww` opens later gets it: `ww run --audit trail.log cell >&-` opened the audit
    trail as fd 1, and the cell's relayed output was written into it, forged records and all.
    """
    for fd, flags in ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_RDONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        new = os.open(os.devnull, flags)  # the lowest free number: fd, as those below are open
        if new != fd:
            os.dup2(new, fd)
            os.close(new)
        os.set_inheritable(fd, True)


def exit_now(status: int) -> None:
    """Exit at once: flush our output, then skip the interpreter's teardown.

    Tearing down the modules a command imported costs `ww run` milliseconds for nothing;
    every file `ww` writes is closed (and, where it matters, fsynced) by the code that
    wrote it, before this point.  Then the lines the host writes on stderr while a cell
    runs (:mod:`ww.host.lines`) are written out, as far as stderr takes them.
    """
    for stream in (sys.stdout, sys.stderr):  # (once a cell ran, stderr's go to the lines)
        if stream is None:  # started with that fd closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    lines = sys.modules.get("ww.host.lines")  # console, audit and own lines still waiting
    if lines is not None:
        lines.drain()  # the terminal is restored; bounded: see ww.host.lines
    os._exit(status)
