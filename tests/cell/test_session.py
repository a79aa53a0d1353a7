"""The fd 3 session seen from real cells: login, granted and absent capabilities, the SDK."""

from __future__ import annotations

import subprocess

from tests.conftest import HANG, host_env, run_ww

SYNC_CELL = """
import ww.cell
with ww.cell.session() as s:
    print("granted", ",".join(s.granted))
    s.console.println("hello from the cell")
    print("ping", s.console.ping(b"\\x00payload\\xff").hex())
"""


def test_console_capability_reaches_the_hosts_stderr_and_ping_echoes(make_cell):
    r = run_ww("run", "--with-console", make_cell(SYNC_CELL))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["granted console", "ping " + b"\x00payload\xff".hex()]
    assert "[cell] hello from the cell\n" in r.stderr


def test_with_all_grants_every_capability(make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            print(",".join(s.granted))
    """)
    r = run_ww("run", "--with-all", cell)
    from ww.host.policy import CAPABILITIES

    assert r.stdout.strip() == ",".join(CAPABILITIES), r.stderr
    assert "console" in CAPABILITIES


def test_capability_flags_are_read_from_ww_with_env_vars(make_cell):
    r = run_ww("run", make_cell(SYNC_CELL), env=host_env(WW_WITH_CONSOLE="1"))
    assert r.returncode == 0, r.stderr
    assert "[cell] hello from the cell" in r.stderr


def test_absent_capability_is_a_clear_catchable_error(make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            print("granted", s.granted)
            try:
                s.console.println("should not arrive")
            except ww.cell.CapabilityNotGranted as e:
                print("caught:", e)
    """)
    r = run_ww("run", cell)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "granted []"
    assert lines[1].startswith("caught: the 'console' capability was not granted")
    assert "--with-console" in lines[1]
    assert "should not arrive" not in r.stderr


def test_uncaught_absent_capability_ends_the_cell_with_status_65(make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            s.console.println("nope")
    """)
    r = run_ww("run", cell)
    assert r.returncode == 65
    assert "not granted" in r.stderr
    assert "Traceback" not in r.stderr


def test_null_capability_in_the_raw_session_fails_without_the_sdk(make_cell):
    """A cell in another language sees an absent capability as a null pointer."""
    cell = make_cell("""
        import asyncio, socket, capnp
        from ww.schema import load
        cell = load("cell")
        async def main():
            stream = await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=3))
            client = capnp.TwoPartyClient(stream)
            host = client.bootstrap().cast_as(cell.Host)
            session = (await host.login()).session
            print(list(session.granted), session._has("console"))
            try:
                await session.console.ping(b"x")
            except capnp.KjException as e:
                print("null:", "null capability" in str(e))
        asyncio.run(capnp.run(main()))
    """)
    r = run_ww("run", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[] False", "null: True"]


def test_async_sdk_and_repeated_logins(make_cell):
    cell = make_cell("""
        import asyncio
        import ww.cell
        async def main():
            async with ww.cell.connect() as s:
                replies = await asyncio.gather(*(s.console.ping(bytes([i])) for i in range(50)))
                print(b"".join(replies) == bytes(range(50)))
                again = await s.relogin()  # a second login on the same connection
                print(await again.console.ping(b"again"))
            try:
                async with ww.cell.connect():  # fd 3 is one connection, now closed
                    pass
            except ww.cell.CellError as e:
                print("second connect:", e)
        asyncio.run(main())
    """)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["True", "b'again'"]
    assert lines[2].startswith("second connect: fd 3 was already used")


def test_fd_by_name_and_missing_name(make_cell, tmp_path):
    (tmp_path / "input").write_text("named input")
    cell = make_cell("""
        import os
        import ww.cell
        print(os.read(ww.cell.fd("input"), 100).decode())
        try:
            ww.cell.fd("cache")
        except ww.cell.FdNotProvided as e:
            print("missing:", e)
    """)
    with open(tmp_path / "input") as f:
        r = run_ww("run", "--fd", f"input={f.fileno()}", cell, pass_fds=(f.fileno(),))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "named input"
    assert lines[1].startswith("missing: no file descriptor named 'cache'")
    assert "--fd cache=" in lines[1]


def test_cell_that_hangs_up_fd_3_keeps_running_and_its_status_is_reported(make_cell):
    cell = make_cell("""
        import os, time
        import ww.cell
        with ww.cell.session() as s:
            s.console.ping(b"x")
        try:
            os.fstat(3)
        except OSError:
            print("fd 3 closed")
        time.sleep(0.3)
        print("still here")
        raise SystemExit(9)
    """)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 9
    assert r.stdout == "fd 3 closed\nstill here\n"


def test_garbage_on_fd_3_does_not_crash_the_host(make_cell):
    cell = make_cell("""
        import os, time
        os.write(3, b"\\xff" * 64 + b"not capnp at all")
        time.sleep(0.3)
        print("cell done")
    """)
    r = run_ww("run", cell)
    assert r.returncode == 0
    assert r.stdout == "cell done\n"
    assert "Traceback" not in r.stderr


def test_schema_command_prints_a_directory_a_cell_can_compile_against(tmp_path):
    r = run_ww("schema")
    assert r.returncode == 0
    schema_dir = r.stdout.strip()
    check = subprocess.run(
        ["python3" if False else __import__("sys").executable, "-c",
         "import os, sys, capnp; capnp.remove_import_hook();"
         # the schemas import /capnp/c++.capnp, which pycapnp ships in its package
         "root = os.path.dirname(os.path.dirname(capnp.__file__));"
         "m = capnp.load(sys.argv[1] + '/cell.capnp', imports=[root, sys.argv[1]]);"
         "print(sorted(m.Session.schema.fieldnames))", schema_dir],
        capture_output=True, text=True, timeout=HANG,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "['console', 'exec', 'granted', 'ipfs', 'p2p']"


def test_host_errors_reach_the_cell_as_one_line_without_host_tracebacks(make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            try:
                s.console.println("x" * 70000)
            except ww.cell.RemoteError as e:
                print("error:", e)
    """)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["error: console line too long (70000 > 65536 characters)"]


LOOP_CELL = """
import asyncio
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        # 2000 calls in flight at once: fd 3's reads pause and resume under them
        replies = await asyncio.gather(*(s.console.ping(i.to_bytes(2, "big"))
                                         for i in range(2000)))
        right = all(r == i.to_bytes(2, "big") for i, r in enumerate(replies))
        print(type(asyncio.get_running_loop()).__module__, right)

ww.cell.run(main())
"""


def test_ww_cell_run_runs_the_cell_on_uvloop_and_the_env_can_ask_for_asyncio(make_cell):
    cell = make_cell(LOOP_CELL)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["uvloop", "True"]
    r = run_ww("run", "--with-console", "--env", "WW_EVENT_LOOP=asyncio", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["asyncio.unix_events", "True"]


def test_the_host_serves_fd_3_on_uvloop_unless_asked_for_asyncio(make_cell):
    from pathlib import Path

    from tests.conftest import WW

    cell = make_cell("""
        import sys
        import ww.cell
        with ww.cell.session() as s:     # connected: the host's loop serves fd 3
            print(s.console.ping(b"up").decode(), flush=True)
            sys.stdin.read()
    """)
    for env, on_uvloop in ((host_env(), True), (host_env(WW_EVENT_LOOP="asyncio"), False)):
        host = subprocess.Popen([WW, "run", "--with-console", cell], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert host.stdout is not None and host.stdout.readline() == "up\n"
            maps = Path(f"/proc/{host.pid}/maps").read_text()
        finally:
            assert host.stdin is not None
            host.stdin.close()
            assert host.wait(HANG) == 0
        assert ("uvloop" in maps) == on_uvloop
