"""A raw lane peer for the tests: the lane dialer's handshake written out in Python
(multistream-select ``/ww/lane/0.1.0``, Noise XX with libp2p's handshake payload from the
``noiseprotocol`` package that py-libp2p uses, multistream-select ``/yamux/1.0.0``), then
Yamux frames written and read by hand, any stream id, any flags, any batching: what the C
connection's own dialer never sends.  Async on the running loop (the C listener under test
is on the same loop); loopback only.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

from ww.core.addrs import LANE
from ww.p2p.lane import ms_line

DATA, WINDOW, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
NOISE_PT_MAX = 65535 - 16


def frame(kind: int, flags: int, sid: int, length: int = 0, body: bytes = b"") -> bytes:
    """One Yamux frame (``length`` is the body's for data, else the header's own value)."""
    return HEADER.pack(0, kind, flags, sid, len(body) if kind == DATA else length) + body


def _pb(field: int, data: bytes) -> bytes:
    assert len(data) < 128
    return bytes([field << 3 | 2, len(data)]) + data


class RawPeer:
    """``await RawPeer.connect(port)``: a handshaken lane connection to 127.0.0.1:``port``;
    :meth:`send` takes Yamux frames (each its own Noise message, or ``together`` in one),
    :meth:`frames` gives what the listener sends, :meth:`closed` tells its end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.noise = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
        self._raw = bytearray()  # bytes read, not yet a whole Noise message
        self._plain = bytearray()  # decrypted, not yet a whole Yamux frame
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = cls(sock)
        try:
            await peer._handshake()
        except BaseException:
            sock.close()
            raise
        return peer

    async def _read(self, n: int) -> bytes:
        while len(self._raw) < n:
            got = await self.loop.sock_recv(self.sock, 1 << 16)
            if not got:
                raise ConnectionError("the listener closed the connection")
            self._raw += got
        out = bytes(self._raw[:n])
        del self._raw[:n]
        return out

    async def _line(self) -> bytes:
        (n,) = await self._read(1)
        return await self._read(n)

    async def _message(self) -> bytes:
        (n,) = struct.unpack(">H", await self._read(2))
        return await self._read(n)

    async def _handshake(self) -> None:
        header = ms_line("/multistream/1.0.0")
        await self.loop.sock_sendall(self.sock, header + ms_line(LANE))
        if (await self._line(), await self._line()) != (header[1:], ms_line(LANE)[1:]):
            raise ConnectionError("the lane was refused")
        identity = Ed25519PrivateKey.generate()
        static = X25519PrivateKey.generate()
        noise = self.noise
        noise.set_as_initiator()
        noise.set_keypair_from_private_bytes(Keypair.STATIC, static.private_bytes_raw())
        noise.start_handshake()
        await self._send_message(noise.write_message())  # -> e
        noise.read_message(await self._message())  # <- e, ee, s, es, payload
        spub = static.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ipub = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        payload = _pb(1, b"\x08\x01" + _pb(2, ipub)) + _pb(
            2, identity.sign(b"noise-libp2p-static-key:" + spub)
        )
        await self._send_message(noise.write_message(payload))  # -> s, se, payload
        assert noise.handshake_finished
        await self._send_plain(header + ms_line("/yamux/1.0.0"))
        want = header + ms_line("/yamux/1.0.0")
        while len(self._plain) < len(want):
            self._plain += noise.decrypt(await self._message())
        if bytes(self._plain[: len(want)]) != want:
            raise ConnectionError("yamux was refused")
        del self._plain[: len(want)]

    async def _send_message(self, msg: bytes) -> None:
        await self.loop.sock_sendall(self.sock, struct.pack(">H", len(msg)) + msg)

    def _sealed(self, plain: bytes) -> bytes:
        out = bytearray()
        for i in range(0, max(len(plain), 1), NOISE_PT_MAX):
            msg = self.noise.encrypt(plain[i : i + NOISE_PT_MAX])
            out += struct.pack(">H", len(msg)) + msg
        return bytes(out)

    async def _send_plain(self, plain: bytes) -> None:
        await self.loop.sock_sendall(self.sock, self._sealed(plain))

    async def send(self, *frames: bytes, together: bool = False) -> None:
        """The frames in one write: each in a Noise message of its own, or all in one."""
        if together:
            await self._send_plain(b"".join(frames))
        else:
            await self.loop.sock_sendall(self.sock, b"".join(self._sealed(f) for f in frames))

    async def frame(self) -> tuple[int, int, int, int, bytes]:
        """The listener's next frame: (type, flags, stream id, length, body)."""
        while True:
            if len(self._plain) >= HEADER.size:
                _, kind, flags, sid, length = HEADER.unpack_from(self._plain)
                body = length if kind == DATA else 0
                if len(self._plain) >= HEADER.size + body:
                    data = bytes(self._plain[HEADER.size : HEADER.size + body])
                    del self._plain[: HEADER.size + body]
                    return kind, flags, sid, length, data
            self._plain += self.noise.decrypt(await self._message())

    def close(self) -> None:
        self.sock.close()
