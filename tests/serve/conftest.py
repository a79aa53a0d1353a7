"""A real `ww daemon` in a subprocess, on its own $WW_HOME and free ports."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG, WW


class Daemon:
    """`ww --json daemon --api /ip4/127.0.0.1/tcp/0 --gateway /ip4/127.0.0.1/tcp/0 --listen
    /ip4/127.0.0.1/tcp/0`, started and waited for (its ``api`` log line, which follows the
    ``gateway`` one); :meth:`stop` sends SIGTERM and returns its status."""

    def __init__(self, home: Path, *extra: str, api: str | None = "/ip4/127.0.0.1/tcp/0",
                 gateway: str | None = "/ip4/127.0.0.1/tcp/0",
                 constants: dict[str, float] | None = None) -> None:
        """``api=None``, ``gateway=None``: no --api, --gateway: the default addresses.
        ``constants``: bounds set otherwise in the daemon, by qualified name
        (``ww.serve.server.KEEP_ALIVE``): a test that must not meet one of them on a slow
        machine sets it out of reach, one that waits one out makes it shorter."""
        self.home = home
        argv = ["--json", "daemon", *(["--api", api] if api else []),
                *(["--gateway", gateway] if gateway else []),
                "--listen", "/ip4/127.0.0.1/tcp/0", *extra]
        command = [WW, *argv]
        if constants:
            command = [sys.executable, "-c",
                       "import importlib, sys\n"
                       f"for name, value in {constants!r}.items():\n"
                       "    module, _, attr = name.rpartition('.')\n"
                       "    assert hasattr(importlib.import_module(module), attr), name\n"
                       "    setattr(importlib.import_module(module), attr, value)\n"
                       "from ww.cli.entry import main\n"
                       "main(sys.argv[1:])", *argv]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "WW_HOME": str(home)}, text=True)
        self.events: list[dict[str, Any]] = []
        self.api = ""
        self.gateway = ""  # its multiaddr; "" with --gateway off
        while not self.api:
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"ww daemon ended before listening: {self.events}")
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "api":
                self.api = event["listening"]
            elif event["event"] == "gateway":
                self.gateway = event["listening"]
        self.unix = self.api.removeprefix("/unix") if self.api.startswith("/unix/") else ""
        host_port = self.api.split("/")
        self.url = "http://localhost" if self.unix else f"http://{host_port[2]}:{host_port[4]}"
        self.peer_id = self.events[0]["peer_id"]

    def post(self, command: str, *args: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, **options: Any
             ) -> tuple[int, Any, bytes]:
        """POST /api/v0/<command>; (status, headers (case-insensitive), body) whatever the
        status."""
        query = [("arg", a) for a in args] + [
            (k.replace("_", "-"), str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in options.items()]
        url = f"{self.url}/api/v0/{command}?{urllib.parse.urlencode(query)}"
        if self.unix:  # --api /unix/<path>: HTTP on the unix socket
            conn = _UnixConnection(self.unix)
            try:
                conn.request("POST", url.removeprefix(self.url), body=body or b"",
                             headers=headers or {})
                reply = conn.getresponse()
                return reply.status, reply.headers, reply.read()
            finally:
                conn.close()
        request = urllib.request.Request(url, data=body or b"", method="POST",
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=HANG) as reply:
                return reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def json(self, command: str, *args: str, **options: Any) -> list[Any]:
        status, _, body = self.post(command, *args, **options)
        assert status == 200, body
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, list[dict[str, Any]]]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=HANG)
        self.events += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        self.other_lines = [line for line in err.splitlines() if not line.startswith("{")]
        return self.proc.returncode, self.events


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 to ``localhost`` over the unix socket at ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=HANG)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(HANG)
        self.sock.connect(self.path)


@pytest.fixture
def daemon(ww_home: Path) -> Iterator[Daemon]:
    d = Daemon(ww_home)
    yield d
    if d.proc.poll() is None:
        d.stop()


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = "wwtestboundary"
              ) -> tuple[bytes, dict[str, str]]:
    """A body as kubo's clients send ``add``: (urlencoded path, content type, bytes) parts."""
    body = b""
    for name, content_type, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{urllib.parse.quote(name, safe='')}\"\r\n"
                 f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
