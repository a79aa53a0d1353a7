"""Node identities: Ed25519 keys in libp2p's encodings, peer ids derived as go-libp2p does.

A private key travels as libp2p's protobuf ``PrivateKey { Type = 1 (Ed25519), Data = seed ||
public key }`` -- the 68 bytes go-libp2p's ``MarshalPrivateKey`` writes.  ``ww idgen`` prints
those bytes in base58btc (or raw with ``--raw``); :func:`parse_private_key` reads either back.

A peer id is the multihash of the public key's protobuf (``PublicKey { Type, Data }``): the
identity multihash when that protobuf is at most 42 bytes (every Ed25519 key: ``12D3KooW...``),
sha2-256 otherwise (RSA: ``Qm...``), printed in base58btc -- byte for byte go-libp2p's
``peer.IDFromPublicKey``.

The node's own key lives in its repository (:func:`load_or_create`), and signatures over a
domain-separated challenge (:func:`sign_login` / :func:`verify_login`) are how a cell proves
its identity to the host.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ww.core import multibase, varint
from ww.core import protobuf as _protobuf
from ww.core.errors import UsageError, WwError
from ww.core.fsutil import fsync_dir, private_directory, publish_new_file

__all__ = [
    "KEY_TYPE_RSA",
    "KEY_TYPE_ED25519",
    "IDENTITY_FILE",
    "LOGIN_CONTEXT",
    "IdentityError",
    "KeyFileError",
    "UnprotectedKeyError",
    "MAX_KEY_FILE_SIZE",
    "PublicKey",
    "PrivateKey",
    "Identity",
    "parse_private_key",
    "marshal_public_key",
    "peer_id_from_public_key",
    "decode_peer_id",
    "public_key_from_peer_id",
    "load_or_create",
    "read_key_file",
    "require_private",
    "key_from_flag",
    "write_key_file",
    "login_message",
    "sign_login",
    "verify_login",
]

KEY_TYPE_RSA = 0
KEY_TYPE_ED25519 = 1
_KEY_TYPE_NAMES = {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}

IDENTITY_FILE = "identity.key"
"""Name of the private key file inside a node repository (raw protobuf bytes, mode 0600)."""

LOGIN_CONTEXT = b"ww-login-v1\x00"
"""Prefix of every signed login challenge, so a login signature can never mean anything else."""

_MAX_INLINE_KEY_LEN = 42  # go-libp2p: keys whose protobuf is longer are hashed into the id
# The longest peer id in bytes: the CID form's version and codec, then an identity multihash's
# code, length and inline key.  A longer text is refused before decoding (base58 and base36
# decode in time quadratic in the length: a cell's or a client's megabyte would hold a thread).
_MAX_PEER_ID_BYTES = 2 + 2 + 2 + _MAX_INLINE_KEY_LEN
_MH_IDENTITY = 0x00
_MH_SHA2_256 = 0x12
_CID_V1 = 0x01
_CODEC_LIBP2P_KEY = 0x72
_SEED_LEN = 32
_PUBLIC_LEN = 32
_SIGNATURE_LEN = 64


class IdentityError(WwError, ValueError):
    """A key, peer id or signature is malformed or does not check out; ``str()`` is one line.

    (Exit status 1 where nothing more specific maps it, as for a corrupt node key under
    `ww id`; still the ValueError callers caught before.)"""


class KeyFileError(WwError):
    """A key file cannot be written where it was asked for (exit 1): ``ww idgen -o`` onto a
    name that exists, or into a directory that does not or that it may not write."""


class UnprotectedKeyError(IdentityError):
    """A key file others may read or change, or one owned by another user: refused, as
    OpenSSH refuses such a private key (exit 1; 2 where a flag named the file)."""


MAX_KEY_FILE_SIZE = 4096
"""A key file is at most this long (``ww idgen`` writes 68 bytes, or 93 characters)."""


def _encode_key_protobuf(key_type: int, data: bytes) -> bytes:
    return _protobuf.uvarint_field(1, key_type) + _protobuf.bytes_field(2, data)


def _decode_key_protobuf(data: bytes, what: str) -> tuple[int, bytes]:
    """Parse ``{ Type = 1 (varint); Data = 2 (bytes) }``; strict, since input may be anything."""
    key_type: int | None = None
    key_data: bytes | None = None
    try:
        for field, wire_type, value in _protobuf.fields(data):
            if (field, wire_type) == (1, _protobuf.VARINT):
                key_type = int(value)  # type: ignore[arg-type]
            elif (field, wire_type) == (2, _protobuf.LEN):
                key_data = bytes(value)  # type: ignore[arg-type]
            else:
                raise IdentityError(f"{what} has an unexpected protobuf field ({field})")
    except _protobuf.ProtobufError as err:
        raise IdentityError(f"{what} is not a libp2p protobuf key ({err})") from None
    if key_type is None or key_data is None:
        raise IdentityError(f"{what} is not a libp2p protobuf key (Type or Data missing)")
    return key_type, key_data


def _require_ed25519(key_type: int, what: str) -> None:
    if key_type != KEY_TYPE_ED25519:
        name = _KEY_TYPE_NAMES.get(key_type, f"type {key_type}")
        raise IdentityError(f"{what} is a {name} key; only Ed25519 keys are supported")


def marshal_public_key(key_type: int, data: bytes) -> bytes:
    """libp2p's public key protobuf for a key of ``key_type`` whose own encoding is ``data``.

    For Ed25519 ``data`` is the 32-byte key; for RSA it is the PKIX (SubjectPublicKeyInfo) DER.
    """
    return _encode_key_protobuf(key_type, data)


def peer_id_from_public_key(public_key_protobuf: bytes) -> str:
    """The base58btc peer id of a public key given in libp2p's protobuf encoding."""
    if len(public_key_protobuf) <= _MAX_INLINE_KEY_LEN:
        digest, code = public_key_protobuf, _MH_IDENTITY
    else:
        digest, code = hashlib.sha256(public_key_protobuf).digest(), _MH_SHA2_256
    return multibase.b58encode(varint.encode(code) + varint.encode(len(digest)) + digest)


def decode_peer_id(text: str) -> bytes:
    """Check a peer id and return its multihash bytes.

    Accepts base58btc (``12D3KooW...``, ``Qm...``) and the CIDv1 form (``bafz...``, codec
    libp2p-key), as go-libp2p's ``peer.Decode`` does.
    """
    shown = text if len(text) <= 80 else text[:77] + "..."  # an error never echoes a megabyte
    try:
        if text.startswith(("1", "Qm")):
            mh = multibase.b58decode(text, _MAX_PEER_ID_BYTES)
        else:
            raw = multibase.decode(text, _MAX_PEER_ID_BYTES)
            version, pos = varint.decode(raw)
            codec, pos = varint.decode(raw, pos)
            if version != _CID_V1 or codec != _CODEC_LIBP2P_KEY:
                raise IdentityError(f"invalid peer id {shown!r}: not a libp2p-key CID")
            mh = raw[pos:]
        code, pos = varint.decode(mh)
        length, pos = varint.decode(mh, pos)
    except (multibase.MultibaseError, varint.VarintError) as err:
        raise IdentityError(f"invalid peer id {shown!r}: {err}") from None
    if code not in (_MH_IDENTITY, _MH_SHA2_256) or len(mh) - pos != length:
        raise IdentityError(f"invalid peer id {shown!r}: not an identity or sha2-256 multihash")
    if code == _MH_SHA2_256 and length != 32:
        raise IdentityError(f"invalid peer id {shown!r}: sha2-256 digest is not 32 bytes")
    if code == _MH_IDENTITY and length > _MAX_INLINE_KEY_LEN:
        raise IdentityError(f"invalid peer id {shown!r}: inline key longer than 42 bytes")
    return mh


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (the raw 32 bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != _PUBLIC_LEN:
            raise IdentityError(f"an Ed25519 public key is 32 bytes, not {len(self.raw)}")

    @classmethod
    def from_protobuf(cls, data: bytes) -> PublicKey:
        """Parse libp2p's ``PublicKey`` protobuf (Ed25519 only)."""
        key_type, raw = _decode_key_protobuf(data, "public key")
        _require_ed25519(key_type, "public key")
        return cls(raw)

    def to_protobuf(self) -> bytes:
        return _encode_key_protobuf(KEY_TYPE_ED25519, self.raw)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.to_protobuf())

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``data``."""
        if len(signature) != _SIGNATURE_LEN:
            return False
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


class PrivateKey:
    """An Ed25519 private key.  ``repr`` never shows the secret."""

    __slots__ = ("_key", "seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != _SEED_LEN:
            raise IdentityError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = bytes(seed)
        self.public_key = PublicKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(_SEED_LEN))

    @classmethod
    def from_protobuf(cls, data: bytes) -> PrivateKey:
        """Parse libp2p's ``PrivateKey`` protobuf as go-libp2p's ``UnmarshalPrivateKey`` does.

        ``Data`` is ``seed || public key`` (64 bytes) or the legacy 96-byte form with the
        public key repeated; the public half must match the seed (go-libp2p does not check
        the 64-byte form, we do: a mismatch means a corrupted key file).
        """
        key_type, body = _decode_key_protobuf(data, "private key")
        _require_ed25519(key_type, "private key")
        if len(body) not in (64, 96):
            raise IdentityError(f"Ed25519 private key data must be 64 or 96 bytes, not {len(body)}")
        if len(body) == 96 and body[64:] != body[32:64]:
            raise IdentityError("Ed25519 private key has two different public keys")
        key = cls(body[:_SEED_LEN])
        if body[32:64] != key.public_key.raw:
            raise IdentityError("Ed25519 private key's public half does not match its seed")
        return key

    def to_protobuf(self) -> bytes:
        """The 68 bytes go-libp2p's ``MarshalPrivateKey`` writes (``ww idgen --raw``)."""
        return _encode_key_protobuf(KEY_TYPE_ED25519, self.seed + self.public_key.raw)

    def to_text(self) -> str:
        """base58btc of :meth:`to_protobuf`, as ``ww idgen`` prints by default."""
        return multibase.b58encode(self.to_protobuf())

    @property
    def peer_id(self) -> str:
        return self.public_key.peer_id

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other.seed == self.seed

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"PrivateKey(peer_id={self.peer_id!r})"


def parse_private_key(data: bytes | str) -> PrivateKey:
    """Read a private key in either form ``ww idgen`` writes: raw protobuf or base58btc text.

    Raw bytes start with ``0x08`` (the protobuf tag of ``Type``), which is not a base58
    character, so the two forms cannot be confused.  Surrounding whitespace in the text form
    (a trailing newline) is ignored.
    """
    if isinstance(data, bytes) and data[:1] == b"\x08":
        return PrivateKey.from_protobuf(data)
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError:
            raise IdentityError(
                "not a private key: neither libp2p protobuf bytes nor base58 text"
            ) from None
    text = data.strip()
    if not text:
        raise IdentityError("not a private key: the input is empty")
    try:
        raw = multibase.b58decode(text)
    except multibase.MultibaseError as err:
        raise IdentityError(f"not a private key: invalid base58 text ({err})") from None
    return PrivateKey.from_protobuf(raw)


def public_key_from_peer_id(peer_id: str) -> PublicKey:
    """The public key an Ed25519 peer id carries inline (``12D3KooW...``)."""
    mh = decode_peer_id(peer_id)
    code, pos = varint.decode(mh)
    length, pos = varint.decode(mh, pos)
    if code != _MH_IDENTITY:
        raise IdentityError(f"peer id {peer_id!r} is a hash; it does not carry its public key")
    return PublicKey.from_protobuf(mh[pos:])


@dataclass(frozen=True)
class Identity:
    """A node's key pair and the peer id derived from it."""

    private_key: PrivateKey
    public_key: PublicKey
    peer_id: str

    @classmethod
    def from_private_key(cls, key: PrivateKey) -> Identity:
        return cls(key, key.public_key, key.peer_id)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def verify(self, signature: bytes, data: bytes) -> bool:
        return self.public_key.verify(signature, data)


def load_or_create(repo: Path) -> Identity:
    """The identity stored in ``repo``; a new one is created on first use.

    The key file (:data:`IDENTITY_FILE`, mode 0600) appears complete or not at all: it is
    written to a private temporary file and hard-linked into place, and ``link`` refuses to
    replace an existing file.  Two processes racing here therefore both end with the one key
    that won.  Either ``ww idgen`` form is accepted if the file was put there by hand, if
    it is private (:func:`require_private`).
    """
    repo = Path(repo)
    private_directory(repo)  # the user's own, 0700: see the function
    path = repo / IDENTITY_FILE
    found = _read_key_file(path)
    if found is not None:
        return Identity.from_private_key(found)
    key = PrivateKey.generate()
    fd, tmp = tempfile.mkstemp(prefix=f".{IDENTITY_FILE}.", dir=repo)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.to_protobuf())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process won
            found = _read_key_file(path)
            if found is None:  # ... and its file is gone again: a key to use after all
                raise IdentityError(f"{path}: the node key came and went; try again") from None
            return Identity.from_private_key(found)
    finally:
        os.unlink(tmp)
    fsync_dir(repo)
    return Identity.from_private_key(key)


def _read_key_file(path: Path) -> PrivateKey | None:
    """The node key at ``path``, or None where nothing is there.  Read as a key file a flag
    names (:func:`read_key_file`): anything else at that name -- a directory, a dangling
    symlink, a FIFO nobody writes to -- is one line naming it (it was an "internal error",
    and a FIFO hung `ww id`, `ww run` and `ww daemon` for ever)."""
    if not os.path.lexists(path):
        return None
    try:
        return read_key_file(path)
    except IdentityError as err:
        raise type(err)(f"{path}: {err}") from None


def require_private(st: os.stat_result, path: str | os.PathLike[str],
                    opened: int | None = None) -> None:
    """Refuse a key file, by its ``stat`` (taken of the file opened), as OpenSSH refuses a
    private key: one that group or others may read, write or execute (``mode & 0o077``), or
    that belongs to neither the user running ``ww`` nor root.  Raises
    :class:`UnprotectedKeyError`, whose line names the mode and the fix (``chmod 600 FILE``).

    Only a regular file's mode is checked: a pipe (``--node-key <(pass show node.key)``,
    ``/dev/fd/N``, ``/dev/stdin``), a FIFO or a terminal passes the key through rather than
    keeping it, and its mode says nothing of who can read the key at rest.  A named FIFO's
    owner is checked as a file's: another user's FIFO where the key file was expected (a
    name in ``/tmp``) would feed ``ww`` a key that user chose, and knows.  A pipe's owner is
    whoever made it (a shell of another user's piping into ``sudo -u``): not checked, as
    long as it is one of ``ww``'s own file descriptors (stdin, ``<(...)``'s ``/dev/fd/63``);
    ``opened`` is the descriptor the caller opened the key with, which does not count.  A
    pipe reached through another process's ``/proc/PID/fd/N`` (a symlink another user
    planted at the key's name, followed by root), or another user's terminal
    (``/dev/pts/N``), is held to the owner rule: it fed root a key that user chose, past
    the FIFO rule."""
    import stat

    me = os.geteuid()
    named_fifo = stat.S_ISFIFO(st.st_mode) and st.st_dev != _pipe_device()
    if not stat.S_ISREG(st.st_mode) and not named_fifo:
        if st.st_uid not in (me, 0) and not _one_of_our_fds(st, opened):
            what = "pipe" if stat.S_ISFIFO(st.st_mode) else "device"
            raise UnprotectedKeyError(
                f"the key comes through a {what} of uid {st.st_uid}, not of uid {me} running "
                f"ww (nor of root), that is none of ww's own file descriptors: whoever holds "
                f"that {what} chooses the key")
        return
    if st.st_uid not in (me, 0):
        raise UnprotectedKeyError(
            f"the key file belongs to uid {st.st_uid}, not to uid {me} running ww (nor to "
            "root): a private key must be its user's own (ww idgen -o FILE makes one)")
    mode = stat.S_IMODE(st.st_mode)
    if not named_fifo and mode & 0o077:
        import shlex

        raise UnprotectedKeyError(
            f"the key file is accessible by group or others (mode {mode:04o}): a private key "
            f"must be its owner's only: chmod 600 {shlex.quote(os.fspath(path))}")


def _one_of_our_fds(st: os.stat_result, opened: int | None) -> bool:
    """Is the pipe ``st`` one this process holds on a descriptor other than ``opened``?"""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in names:
        if not name.isdigit() or int(name) == opened:
            continue
        try:
            other = os.fstat(int(name))
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


@functools.cache
def _pipe_device() -> int:
    """The device of the kernel's pipes (pipefs): a FIFO on any other is a named one."""
    read, write = os.pipe()
    try:
        return os.fstat(read).st_dev
    finally:
        os.close(read)
        os.close(write)


def read_key_file(path: str | os.PathLike[str]) -> PrivateKey:
    """The key in a file as ``ww idgen`` writes it, base58btc text or ``--raw`` bytes.

    Raises :class:`IdentityError` whose one line names what is wrong but not the file (the
    caller names its flag and the file): unreadable, open to others or another user's
    (:func:`require_private`), too long, not a key."""
    try:
        # Without waiting for a writer: a FIFO nobody writes to reads as empty at once (it
        # hung `ww run --node-key FIFO` forever); a pipe with its writer, `--node-key
        # <(pass show node.key)`, is read to its end, as blocking as ever once open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise IdentityError(f"cannot read the key file: {e.strerror or e}") from None
    try:
        require_private(os.fstat(fd), path, fd)  # the file opened: no swap after a check
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as e:
        raise IdentityError(f"cannot read the key file: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_SIZE:
        raise IdentityError(f"not a private key: the file is longer than {MAX_KEY_FILE_SIZE} "
                            "bytes")
    return parse_private_key(data)


def key_from_flag(flag: str, spec: str, new: bool = True) -> PrivateKey:
    """The key a command-line flag names: a key file (``read_key_file``) or, where ``new`` is
    allowed, ``new`` for a fresh one.  Anything wrong is a usage error (exit 2) of one line
    naming the flag and the file: ``--node-key 'x.key': cannot read the key file: ...``."""
    if new and spec == "new":
        return PrivateKey.generate()
    try:
        return read_key_file(spec)
    except IdentityError as e:
        raise UsageError(f"{flag} {spec!r}: {e}") from None


def write_key_file(path: str | os.PathLike[str], key: PrivateKey, raw: bool = False) -> None:
    """Write ``key`` to a new file ``path`` (mode 0600), as ``ww idgen -o`` does: base58btc
    text and a newline, or with ``raw`` the 68 protobuf bytes.

    The file appears complete or not at all and is never readable by others
    (:func:`ww.core.fsutil.publish_new_file`); anything already at ``path`` -- a symlink
    included, dangling or not -- is a :class:`KeyFileError` naming it, and is left alone."""
    data = key.to_protobuf() if raw else (key.to_text() + "\n").encode("ascii")
    try:
        publish_new_file(Path(path), data, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{os.fspath(path)} exists ({_what_is_at(path)}); a key is never "
                           "written over anything: remove it or choose another name") from None
    except OSError as e:
        raise KeyFileError(f"cannot write the key to {os.fspath(path)}: "
                           f"{e.strerror or e}") from None


def _what_is_at(path: str | os.PathLike[str]) -> str:
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "it appeared meanwhile"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file"
    return "not a regular file"


def login_message(challenge: bytes) -> bytes:
    """What a cell signs to log in: :data:`LOGIN_CONTEXT` followed by the host's nonce."""
    return LOGIN_CONTEXT + challenge


def sign_login(key: PrivateKey, challenge: bytes) -> tuple[bytes, bytes]:
    """Answer a login challenge as ``Signer.sign`` does: ``(public key protobuf, signature)``."""
    return key.public_key.to_protobuf(), key.sign(login_message(challenge))


def verify_login(public_key_protobuf: bytes, challenge: bytes, signature: bytes) -> str:
    """Check a login answer; return the signer's peer id or raise :class:`IdentityError`."""
    key = PublicKey.from_protobuf(public_key_protobuf)
    if not key.verify(signature, login_message(challenge)):
        raise IdentityError(f"login signature does not verify for peer {key.peer_id}")
    return key.peer_id
