"""A kubo RPC stand-in on 127.0.0.1 for `ww run --ipfs`: a mock, because kubo's daemon cannot
run here.  It answers ``id`` as a node would (`ww run` checks the node first) and hands every
other request to :meth:`KuboStandIn.answer`, which a test overrides to hold a request, read
an upload, or refuse."""

from __future__ import annotations

import socket
import subprocess
import threading
from typing import BinaryIO

from tests.conftest import HANG, WW

ID_ANSWER = b'{"ID": "12D3KooWStandIn", "Addresses": [], "Protocols": []}'


class KuboStandIn:
    """Serves each connection on a thread of its own until :meth:`close`; ``api`` is the
    multiaddr to pass as ``--ipfs``.  By default a request other than ``id`` gets a 500."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.api = f"/ip4/127.0.0.1/tcp/{self.port}/http"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline()
                if not line:
                    return
                head += line
            if head.startswith(b"POST /api/v0/id"):
                self.reply(conn, ID_ANSWER)
            else:
                self.answer(head, stream, conn)

    def answer(self, head: bytes, stream: BinaryIO, conn: socket.socket) -> None:
        """Answer the request whose head (request line and headers) is ``head``; its body,
        if any, is next on ``stream``."""
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    @staticmethod
    def reply(conn: socket.socket, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self._server.close()

    def run(self, cell: str, *options: str) -> subprocess.CompletedProcess[str]:
        """``ww OPTIONS run --with-ipfs`` of ``cell`` on this kubo, to its end; then
        :meth:`close`."""
        try:
            return subprocess.run([WW, *options, "run", "--with-ipfs", "--ipfs", self.api, cell],
                                  capture_output=True, text=True, timeout=HANG)
        finally:
            self.close()
