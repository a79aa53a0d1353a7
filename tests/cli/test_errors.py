"""`ww` in-process: every error of the one tree (ww.core.errors) ends as one line on stderr and
the exit status its class carries, with no traceback unless --debug; nothing exits the process.

These tests call ``ww.cli.main.run_cli`` in the test's own process: they are about parsing and
exit codes, not about the process boundary (tests/host/test_run_interface.py runs the real
console script).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import click
import pytest

import ww
from ww.cli import main as cli_main
from ww.cli.main import run_cli
from ww.core import errors
from ww.core.errors import WwError


def _all_modules() -> None:
    """Import every module of ww, so that every subclass of WwError is defined."""
    for info in pkgutil.walk_packages(ww.__path__, "ww."):
        importlib.import_module(info.name)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _instance(cls: type[WwError]) -> WwError:
    """An instance of ``cls`` with a one-line message, whatever its constructor takes."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return cls(*[f"{p.name}-value" for p in params])


_all_modules()
ALL_ERRORS = [WwError, *_subclasses(WwError)]


def test_every_error_class_carries_an_exit_status():
    assert len(ALL_ERRORS) > 20  # the walk found the areas' classes, not just the core's
    for cls in ALL_ERRORS:
        assert isinstance(cls.exit_code, int) and 1 <= cls.exit_code <= 255, cls


def test_the_exit_statuses_of_the_spec_are_kept():
    from ww import cell
    from ww.host.denied import CapabilityDenied
    from ww.ipfs.api import NotFoundError
    from ww.p2p.dial_policy import AddressNotAllowed

    expected = {
        errors.WwError: 1, errors.UsageError: 2, errors.AddressError: 2,
        errors.AuthenticationFailed: 64, errors.DeniedError: 65, errors.ResourceLimitError: 66,
        errors.NotExecutableError: 126, errors.CommandNotFoundError: 127, errors.HostError: 1,
        errors.IpfsError: 1, NotFoundError: 1, errors.P2PError: 1, AddressNotAllowed: 1,
        errors.CellError: 1, cell.CapabilityNotGranted: 65, cell.CapabilityDenied: 65,
        CapabilityDenied: 65,
    }
    assert {cls: cls.exit_code for cls in expected} == expected


def test_the_areas_errors_are_in_the_one_tree():
    from ww import cell
    from ww.host.denied import CapabilityDenied
    from ww.host.policy import AuthenticationFailed
    from ww.ipfs.api import IpfsError
    from ww.p2p import P2PError

    for cls in (IpfsError, P2PError, cell.CellError, cell.RemoteError, CapabilityDenied,
                AuthenticationFailed):
        assert issubclass(cls, WwError), cls
    # A denial is still the PermissionError callers caught before.
    assert issubclass(CapabilityDenied, PermissionError)
    assert issubclass(cell.CapabilityDenied, PermissionError)


@click.command()
@click.argument("index", type=int)
def _raise(index: int) -> None:
    raise _instance(ALL_ERRORS[index])


@pytest.fixture
def raising_command(monkeypatch):
    monkeypatch.setitem(cli_main.COMMANDS, "raise", f"{__name__}:_raise")


@pytest.mark.parametrize("index", range(len(ALL_ERRORS)),
                         ids=[c.__qualname__ for c in ALL_ERRORS])
def test_each_error_ends_as_one_line_and_its_status(index, raising_command, capsys):
    cls = ALL_ERRORS[index]
    status = run_cli(["raise", str(index)])
    out, err = capsys.readouterr()
    assert (status, out, err) == (cls.exit_code, "", f"ww: {_instance(cls)}\n")


def test_debug_adds_the_traceback(raising_command, capsys):
    index = ALL_ERRORS.index(errors.HostError)
    assert run_cli(["--debug", "raise", str(index)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.endswith("ww: message-value\n")
    # --debug does not stay on for the next run in the same process
    assert run_cli(["raise", str(index)]) == 1
    assert capsys.readouterr().err == "ww: message-value\n"


def test_a_bug_is_one_line_naming_it(monkeypatch, capsys):
    @click.command()
    def bug() -> None:
        raise KeyError("oops")

    monkeypatch.setattr(cli_main, "_bug", bug, raising=False)
    monkeypatch.setitem(cli_main.COMMANDS, "bug", "ww.cli.main:_bug")
    assert run_cli(["bug"]) == 1
    assert capsys.readouterr().err == (
        "ww: internal error: KeyError: 'oops' (rerun with --debug for details)\n")


def test_an_unknown_command_is_a_usage_error_of_one_line(capsys):
    assert run_cli(["no-such-command"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ww: No such command 'no-such-command'.") and err.count("\n") == 1


def test_a_bad_option_value_is_a_usage_error_of_one_line(capsys):
    assert run_cli(["call", "--timeout", "0", "/ip4/127.0.0.1/tcp/1/p2p/x", "m"]) == 2
    assert capsys.readouterr().err == "ww: --timeout: give a number of seconds greater than 0\n"


def test_a_malformed_address_is_an_address_error_exiting_2(capsys):
    assert run_cli(["id", "--listen", "/dns4/example.com/tcp/1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ww: --listen: listen address '/dns4/example.com/tcp/1'")
    assert err.count("\n") == 1


def test_idgen_in_process_prints_a_key_that_parses(capsys):
    from ww.core.identity import parse_private_key

    assert run_cli(["idgen"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert parse_private_key(out.strip()).peer_id.startswith("12D3KooW")


def test_schema_in_process_prints_the_directory_of_the_schema_files(capsys):
    assert run_cli(["schema"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    assert "interface Host" in (Path(out.strip()) / "cell.capnp").read_text()


def test_help_exits_0(capsys):
    assert run_cli(["--help"]) == 0
    assert "Usage: ww" in capsys.readouterr().out


def test_debug_belongs_to_its_own_call_when_calls_overlap(monkeypatch, capsys):
    """Two `ww` calls in one process at once (threads): the one without --debug, started and
    finished while the other runs, does not switch the other's --debug off (it was a module
    global each call reset)."""
    import threading

    from tests.conftest import HANG

    inside, release = threading.Event(), threading.Event()

    @click.command()
    def hold() -> None:
        inside.set()
        assert release.wait(HANG)
        raise errors.HostError("held")

    monkeypatch.setitem(cli_main.COMMANDS, "hold", f"{__name__}:_held")
    monkeypatch.setattr(f"{__name__}._held", hold, raising=False)
    monkeypatch.setitem(cli_main.COMMANDS, "raise", f"{__name__}:_raise")
    statuses: list[int] = []
    debugged = threading.Thread(target=lambda: statuses.append(run_cli(["--debug", "hold"])))
    debugged.start()
    try:
        assert inside.wait(HANG)
        assert run_cli(["raise", str(ALL_ERRORS.index(errors.HostError))]) == 1
    finally:
        release.set()
        debugged.join(HANG)
    assert statuses == [1]
    err = capsys.readouterr().err
    assert "ww: message-value\n" in err and err.endswith("ww: held\n")
    assert err.count("Traceback (most recent call last)") == 1


def test_a_corrupt_node_key_is_one_line_not_an_internal_error(tmp_path, monkeypatch, capsys):
    from ww.core.identity import IDENTITY_FILE

    home = tmp_path / "home"
    home.mkdir()
    (home / IDENTITY_FILE).write_bytes(b"garbage\n")
    (home / IDENTITY_FILE).chmod(0o600)
    monkeypatch.setenv("WW_HOME", str(home))
    assert run_cli(["id"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"ww: {home / IDENTITY_FILE}: private key is not a libp2p protobuf key "
                   "(protobuf field number 0)\n")
