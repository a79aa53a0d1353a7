"""Run inside the test's network namespace (tests/p2p/kubo_dht.py): `ww daemon`, and calls to
its RPC API.

``python daemon_in_lan.py serve WW_BIN ARG...`` starts ``WW_BIN --json daemon ARG...`` (on
``$WW_HOME``), prints one JSON line once it serves (``{"api": "http://...", "id": peer}``),
then runs until its stdin closes: it stops the daemon with SIGTERM and exits with its exit
status, the daemon's log on stderr.

``python daemon_in_lan.py call API_URL COMMAND [QUERY] [FILE]`` posts one RPC API command
(``QUERY``: ``arg=...&...``; ``FILE``: sent as the multipart body, as ``ipfs add`` sends it) and
prints the HTTP status line and the body.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

LIMIT = 300  # seconds: a bound that only stops a hang


def serve(ww: str, args: list[str]) -> int:
    daemon = subprocess.Popen([ww, "--json", "daemon", *args], stdin=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    assert daemon.stderr is not None
    log: list[str] = []
    peer = None
    for line in daemon.stderr:  # the daemon's start, event by event
        log.append(line)
        event = json.loads(line)
        if event["event"] == "started":
            peer = event["peer_id"]
        if event["event"] == "api":
            address = event["listening"].split("/")  # /ip4/127.0.0.1/tcp/PORT/http
            print(json.dumps({"api": f"http://{address[2]}:{address[4]}", "id": peer}),
                  flush=True)
            break
    else:
        print(json.dumps({"error": "the daemon ended", "log": log}), flush=True)
        return daemon.wait(LIMIT)
    drain = threading.Thread(target=lambda: log.extend(daemon.stderr or ()), daemon=True)
    drain.start()
    sys.stdin.read()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(LIMIT)
    drain.join(LIMIT)
    sys.stderr.write("".join(log))
    return code


def call(api: str, command: str, query: str = "", path: str = "") -> None:
    body, headers = b"", {}
    if path:
        boundary = "ww-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{Path(path).name}\"\r\nContent-Type: application/octet-stream"
                f"\r\n\r\n").encode() + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    url = f"{api}/api/v0/{command}" + (f"?{query}" if query else "")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=LIMIT) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    print(status)
    print(text, end="")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3:]))
    call(*sys.argv[2:])
