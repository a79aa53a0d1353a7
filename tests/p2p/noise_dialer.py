"""A libp2p `/noise` dialer written for the tests, in Python with ``cryptography``: what a
go-libp2p peer sends (multistream's header and ``/noise`` in one write, Noise XX with
libp2p's handshake payload, ``/yamux/1.0.0`` inside), with an identity of any kind and a
payload the test may spoil (a bad signature, an oversized key, another key type), to attack
what a host checks.  Not a general libp2p peer: after the handshake it can send a Yamux ping
and see whether the connection answers or ends.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import socket
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ww.core.addrs import NOISE_PROPOSAL

SIG_PREFIX = b"noise-libp2p-static-key:"
HEADER = NOISE_PROPOSAL[:20]
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
YAMUX = b"\x13/multistream/1.0.0\n\x0d/yamux/1.0.0\n"


def _pb_bytes(field: int, data: bytes) -> bytes:
    n, out = len(data), bytearray([field << 3 | 2])
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def public_key_message(key_type: int, data: bytes) -> bytes:
    """libp2p's PublicKey protobuf: Type (varint), Data."""
    return bytes([0x08, key_type]) + _pb_bytes(2, data)


@dataclass
class Identity:
    """An identity: its PublicKey message and how it signs."""

    key: bytes
    sign: object  # (bytes) -> bytes

    @staticmethod
    def rsa(bits: int = 2048, exponent_bits: int = 0) -> Identity:
        """An RSA identity; ``exponent_bits``: a public exponent that long (odd, a prime
        factor of neither p-1 nor q-1), which no key generator makes but a peer may."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        if exponent_bits:
            private = _with_exponent(private, exponent_bits)
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return Identity(public_key_message(0, der),
                        lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256()))

    @staticmethod
    def rsa_pkcs1(null_params: bool | bytes | None = None) -> Identity:
        """An honest RSA identity whose public key go-libp2p does not read: bare PKCS#1
        RSAPublicKey DER (``null_params`` None), PKIX whose rsaEncryption algorithm has
        no NULL parameters (False), or these bytes as its parameters (a NULL with content,
        ``05 01 00``: Go takes ``05 00`` only)."""
        from Crypto.Util.asn1 import DerBitString, DerObjectId, DerSequence

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.PKCS1)
        if null_params is not None:
            algorithm = [DerObjectId("1.2.840.113549.1.1.1").encode()]
            if isinstance(null_params, bytes):
                algorithm.append(null_params)
            der = DerSequence([DerSequence(algorithm).encode(),
                               DerBitString(der).encode()]).encode()
        return Identity(public_key_message(0, der),
                        lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256()))

    @staticmethod
    def rsa_private_encoded() -> Identity:
        """An honest RSA identity whose PublicKey message carries its *private* key (PKCS#1
        RSAPrivateKey DER): no public key encoding, which go-libp2p refuses."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = private.private_bytes(serialization.Encoding.DER,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        return Identity(public_key_message(0, der),
                        lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256()))

    @staticmethod
    def rsa_costly(bits: int, kind: str = "private") -> Identity:
        """An "RSA key" that costs a reader which checks more than it must, whatever the
        signature (which is nothing).  ``private``: a PKCS#1 RSAPrivateKey whose prime p is
        a ``bits``-bit odd number with no small factor (q = 3, n = 3p): pycryptodome
        (py-libp2p's reader) does Miller-Rabin on p.  ``dh``: an X9.42 Diffie-Hellman key
        (PKIX) whose p and q have about ``bits`` bits: pycryptodome refuses it, and
        py-libp2p then gives it to `cryptography`, whose OpenSSL checks the parameters.
        ``long``: a PKCS#1 public key whose modulus has ``bits`` bits (pycryptodome decodes
        an INTEGER in quadratic time, before it looks at the key's size)."""
        import secrets

        small = 1
        for k in range(3, 2000, 2):
            small *= k
        while True:
            p = secrets.randbits(bits) | (1 << (bits - 1)) | 1
            if math.gcd(p, small) == 1:
                break
        if kind == "private":
            der = _der_sequence([0, 3 * p, 65537, 5, p, 3, 1, 1, 1])
        elif kind == "long":
            der = _der_sequence([p, 65537])
        else:
            q = secrets.randbits(bits - 10) | (1 << (bits - 11)) | 1
            x942 = b"\x06\x07\x2a\x86\x48\xce\x3e\x02\x01"  # dhpublicnumber
            algorithm = _der(0x30, x942 + _der_sequence([p, 2, q]))
            der = _der(0x30, algorithm + _der(0x03, b"\x00" + _der_integer(2)))
        return Identity(public_key_message(0, der), lambda data: bytes(256))

    @staticmethod
    def secp256k1() -> Identity:
        private = ec.generate_private_key(ec.SECP256K1())
        point = private.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.CompressedPoint)
        def sign(data: bytes) -> bytes:  # low S, as libsecp256k1 (py-libp2p's) wants it
            r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
            return encode_dss_signature(r, min(s, SECP256K1_N - s))

        return Identity(public_key_message(2, point), sign)

    @staticmethod
    def ed25519() -> Identity:
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        return Identity(public_key_message(1, raw), private.sign)


def _der(tag: int, body: bytes) -> bytes:
    """A DER element: ``tag``, its length, ``body``."""
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def _der_integer(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))  # a leading 0: positive


def _der_sequence(numbers: list[int]) -> bytes:
    """A DER SEQUENCE of non-negative INTEGERs."""
    return _der(0x30, b"".join(_der_integer(v) for v in numbers))


def _with_exponent(private: rsa.RSAPrivateKey, bits: int) -> rsa.RSAPrivateKey:
    import secrets

    numbers = private.private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    while True:
        e = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                 public).private_key()


class _Symmetric:
    """Noise's SymmetricState and CipherState (Noise_XX_25519_ChaChaPoly_SHA256)."""

    def __init__(self) -> None:
        self.h = b"Noise_XX_25519_ChaChaPoly_SHA256"
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(b"")  # the empty prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = hkdf(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, pt: bytes) -> bytes:
        if self.k is None:
            ct = pt
        else:
            ct = ChaCha20Poly1305(self.k).encrypt(nonce(self.n), pt, self.h)
            self.n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ct: bytes) -> bytes:
        assert self.k is not None
        pt = ChaCha20Poly1305(self.k).decrypt(nonce(self.n), ct, self.h)
        self.n += 1
        self.mix_hash(ct)
        return pt


def hkdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    return out1, hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()


def nonce(n: int) -> bytes:
    return b"\x00" * 4 + struct.pack("<Q", n)


def _raw(key: x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class NoiseDialer:
    """One connection to ``port`` on 127.0.0.1 as a `/noise` dialer whose handshake
    payload carries ``key`` (a PublicKey message) and ``signature``."""

    def __init__(self, port: int, timeout: float, proposal: bytes = NOISE_PROPOSAL) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.proposal = proposal  # or ww's LANE_PROPOSAL: the same Noise handshake follows
        self.tx: bytes = b""
        self.rx: bytes = b""
        self.tx_n = self.rx_n = 0

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the host ended the connection")
            data += chunk
        return data

    def _frame(self) -> bytes:
        (n,) = struct.unpack(">H", self._exact(2))
        return self._exact(n)

    def _send_frame(self, data: bytes) -> None:
        self.sock.sendall(struct.pack(">H", len(data)) + data)

    def handshake(self, identity: Identity, *, key: bytes | None = None,
                  signature: bytes | None = None) -> None:
        """multistream /noise, Noise XX as the initiator, multistream /yamux inside.
        ``key``/``signature`` replace what ``identity`` would send (spoiled payloads)."""
        self.sock.sendall(self.proposal)
        if self._exact(len(self.proposal)) != self.proposal:
            raise ConnectionError("the host did not agree /noise")
        s = _Symmetric()
        e = x25519.X25519PrivateKey.generate()
        static = x25519.X25519PrivateKey.generate()
        s.mix_hash(_raw(e.public_key()))
        s.encrypt_and_hash(b"")
        self._send_frame(_raw(e.public_key()))
        msg = self._frame()  # <- e, ee, s, es, payload
        re = msg[:32]
        s.mix_hash(re)
        s.mix_key(e.exchange(x25519.X25519PublicKey.from_public_bytes(re)))
        rs = s.decrypt_and_hash(msg[32:80])
        s.mix_key(e.exchange(x25519.X25519PublicKey.from_public_bytes(rs)))
        s.decrypt_and_hash(msg[80:])  # the host's payload (not checked here)
        ours = _raw(static.public_key())
        sig = signature if signature is not None else identity.sign(SIG_PREFIX + ours)
        payload = _pb_bytes(1, key if key is not None else identity.key) + _pb_bytes(2, sig)
        part = s.encrypt_and_hash(ours)
        s.mix_key(static.exchange(x25519.X25519PublicKey.from_public_bytes(re)))
        self._send_frame(part + s.encrypt_and_hash(payload))
        self.tx, self.rx = hkdf(s.ck, b"")
        self.send(YAMUX)
        got = b""
        while len(got) < len(YAMUX):
            got += self.receive()
        if got != YAMUX:
            raise ConnectionError(f"the host did not agree yamux: {got!r}")

    def send(self, data: bytes) -> None:
        self._send_frame(ChaCha20Poly1305(self.tx).encrypt(nonce(self.tx_n), data, b""))
        self.tx_n += 1

    def receive(self) -> bytes:
        pt = ChaCha20Poly1305(self.rx).decrypt(nonce(self.rx_n), self._frame(), b"")
        self.rx_n += 1
        return pt

    def ping(self) -> bool:
        """A Yamux ping: True if answered, False if the connection ended instead."""
        try:
            self.send(struct.pack(">BBHII", 0, 2, 1, 0, 7))
            while True:
                frame = self.receive()
                if frame[:4] == struct.pack(">BBH", 0, 2, 2):
                    return True
        except (ConnectionError, OSError):
            return False

    def close(self) -> None:
        self.sock.close()
