"""`ww daemon`'s life: start, one per repository, a clean stop, the log."""

from __future__ import annotations

import json
import signal

from tests.conftest import run_ww

from .conftest import Daemon, multipart


def test_a_second_daemon_on_the_repository_names_the_first_ones_pid(daemon):
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/tcp/0")
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"pid {daemon.proc.pid}" in r.stderr and "another ww daemon" in r.stderr


def test_sigterm_and_sigint_stop_it_cleanly_and_the_repository_checks_clean(ww_home):
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = Daemon(ww_home)
        body, headers = multipart([("a.bin", "application/octet-stream", b"x" * 700_000)])
        status, _, reply = d.post("add", body=body, headers=headers)
        assert status == 200, reply
        assert (ww_home / "api").read_text().strip() == d.api.removesuffix("/http")
        code, events = d.stop(sig)
        assert code == 0, events
        names = [e["event"] for e in events]
        assert names[-2:] == ["stopping", "stopped"], names
        assert events[-2]["signal"] == signal.Signals(sig).name
        assert not (ww_home / "api").exists()
        r = run_ww("repo", "check")
        assert r.returncode == 0, r.stdout + r.stderr
    # the lock went with it: a new daemon starts
    Daemon(ww_home).stop()


def test_log_lines_are_json_with_json_and_one_line_per_event_without(ww_home, tmp_path):
    d = Daemon(ww_home)
    _, events = d.stop()
    for event in events:
        assert {"ts", "event", "daemon"} <= event.keys()
        assert event["daemon"] == d.proc.pid
    assert [e["event"] for e in events][:1] == ["started"]
    import os
    import subprocess

    from tests.conftest import WW

    proc = subprocess.Popen([WW, "daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--listen",
                             "/ip4/127.0.0.1/tcp/0"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WW_HOME": str(ww_home)})
    lines = []
    while not any(" api: " in line for line in lines):
        line = proc.stderr.readline()
        assert line, lines
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    lines += rest.splitlines(keepends=True)
    assert proc.returncode == 0
    assert all(line.startswith("ww daemon: ") for line in lines), lines
    assert lines[-1] == "ww daemon: stopped\n"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            continue
        raise AssertionError(f"a JSON line without --json: {line}")


def test_a_bad_api_address_is_a_usage_error_and_leaves_no_lock_held(ww_home):
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/udp/5001")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("ww: ") and r.stderr.count("\n") == 1, r.stderr
    Daemon(ww_home).stop()
