"""Hypercorn on trio: ASGI apps, each on its own listening sockets, until told to stop.

`ww daemon` runs :func:`serve` as its trio run's main task, in the main thread (the libp2p
host has a trio run of its own on another thread): the kubo RPC API on one address and,
given ``--gateway``, the trustless gateway on another -- one :class:`Site` each.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ww.core import heap
from ww.core.errors import AddressError

__all__ = ["Site", "SocketFile", "serve", "bind", "limit_stalls", "give_back_freed", "GRACE",
           "STALL", "READ_SIZE", "CONNECTIONS", "EVICT_AFTER", "SEND_GRACE", "MIN_SEND_RATE",
           "HEAD_SIZE", "HEADER_FIELDS", "QUERY_FIELDS", "H2_STREAMS", "KEEP_ALIVE",
           "FIRST_READ"]

GRACE = 10.0  # seconds the requests in flight get to finish once a stop is asked for
STALL = 120.0  # seconds a connection's sent bytes may stay unacknowledged before it is dropped
READ_SIZE = 1 << 20  # bytes hypercorn reads from a connection at once (its own: 64 KiB)
# Reads of a request body hypercorn holds for the app (its own: 10); a waiting upload holds
# these and the one hypercorn waits to put.  2 rather than 4 (6 MiB a waiting upload): a
# 300 MiB add took as much CPU (1 rather than 2: about 6 % more; docs/benchmarks.md).
APP_QUEUE = 2
# Connections a site serves at once; the next waits to be accepted (in the listening socket's
# backlog, its client's data in the kernel's buffers) until one ends: see serve().
CONNECTIONS = 128
# Seconds the daemon may wait on a client in the middle of a request (its body not all sent)
# before, with every place taken and another client waiting, its connection gives its place
# up; a connection with no request under way (idle, or its request head not complete) gives
# it up at once.  hypercorn's keep-alive timeout, which ends an idle connection in any case.
EVICT_AFTER = 5.0
KEEP_ALIVE = 5.0  # seconds an idle connection, or one whose head is not whole, is kept
# Seconds a connection just accepted that has read nothing yet is given before it counts as
# idle for a waiting client: the daemon looks for the next client's place at once, and the
# read loop may not have had its turn to take what the client sent (Server.first_read_due).
FIRST_READ = 1.0
# With every place taken and a client waiting, a connection whose client leaves the reply the
# daemon has for it untaken (a TCP window it keeps shut, an HTTP/2 flow-control window it
# never opens, or either opened a little now and then) gives its place up once it has taken
# less than MIN_SEND_RATE bytes a second of it over SEND_GRACE seconds or more of the wait:
# the limits the node's Bitswap puts on a peer's replies (ww.ipfs.bitswap: STALL_TIMEOUT,
# and boxo's MIN_SEND_RATE, 100 kbit/s).
SEND_GRACE = 10.0
MIN_SEND_RATE = 12_500
BACKLOG = 1024  # connections the kernel completes and holds for accept() (somaxconn caps it)
# What one request's head may hold while it is under way, whatever the protocol: its request
# line and headers, HEAD_SIZE bytes (h11's incomplete event; HTTP/2's decoded header list),
# at most HEADER_FIELDS header fields and QUERY_FIELDS fields in its query string (more: a
# 431 or a 414, before the app sees it).  Each field is a few Python objects, so a head of
# 16,000 one-byte fields held 1.8 MiB while its request waited, 10,000 query fields 0.9 MiB
# (Apache's LimitRequestFields is 100 too).  And an HTTP/2 connection has at most H2_STREAMS
# requests under way, a stream its client reset counted until its request ends
# (_bound_http2_apps; hypercorn's own: 100 open): HPACK lets a client name a 4 KiB header again
# in one byte, so 100 streams of 64 KiB heads cost it a few KiB and held 8 MiB of the
# daemon's (128 such connections: 875 MiB; docs/security.md).
HEAD_SIZE = 64 * 1024
HEADER_FIELDS = 100
QUERY_FIELDS = 1024
H2_STREAMS = 8

# A stretch over which a client's rate is measured: (when it began, the bytes moved then, the
# seconds not the client's to count then).
Stretch = tuple[float, int, float]


def stretch_rate(stretch: Stretch | None, now: float, moved: int, excused: float = 0.0
                 ) -> tuple[Stretch | None, float | None]:
    """The rate (bytes a second) a client has moved bytes at over ``stretch``, once that is
    :data:`SEND_GRACE` seconds long, else None; and the stretch to measure from next.
    ``moved``: the bytes moved so far; ``excused``: the seconds so far that were not the
    client's (the daemon behind it), left out.  No stretch yet: one begins now.  One at
    :data:`MIN_SEND_RATE` or more ends and the next begins, so a burst does not cover a
    trickle after it.  (Replies taken, :func:`_server_class`'s ``slow_reader``; upload
    bodies sent, :meth:`ww.serve.rpc.Request.body_rate`.)"""
    if stretch is None:
        return (now, moved, excused), None
    since, moved_then, excused_then = stretch
    spent = now - since - (excused - excused_then)
    if spent < SEND_GRACE:
        return stretch, None
    rate = (moved - moved_then) / spent
    return ((now, moved, excused) if rate >= MIN_SEND_RATE else stretch), rate

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Log = Callable[..., None]  # log(event, **fields): ww daemon's EventLog


@dataclass
class Site:
    """An ASGI app and the socket it is served on (bound and listening: see :func:`bind`)."""

    app: ASGIApp
    sock: socket.socket
    loopback: bool  # whether only this machine can reach it (bind()'s second value)
    name: str  # for the log: "api", "gateway"

    @property
    def multiaddr(self) -> str:
        if self.sock.family == socket.AF_UNIX:
            return f"/unix{self.sock.getsockname()}"  # as kubo's Addresses.API names one
        host, port = self.sock.getsockname()[:2]
        proto = "ip6" if self.sock.family == socket.AF_INET6 else "ip4"
        return f"/{proto}/{host}/tcp/{port}/http"


def bind(addr: str, unix: bool = False) -> tuple[socket.socket, bool]:
    """A listening TCP socket for ``/ip4|ip6/<address>/tcp/<port>[/http]`` (port 0: a free
    one), and whether the address is loopback only; with ``unix``, also a unix socket for
    ``/unix/<path>`` (:func:`bind_unix`), which only this machine reaches."""
    import ipaddress

    if unix and addr.startswith("/unix/"):
        return bind_unix(addr), True
    parts = addr.strip("/").split("/")
    if parts and parts[-1] == "http":
        parts = parts[:-1]
    if len(parts) != 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp" \
            or not parts[3].isdigit() or int(parts[3]) > 65535:
        raise AddressError(f"{addr!r}: expected /ip4/<address>/tcp/<port>"
                           + (", /ip6/<address>/tcp/<port> or /unix/<path>" if unix else
                              " or /ip6/<address>/tcp/<port>"))
    try:
        ip = ipaddress.ip_address(parts[1])
    except ValueError:
        raise AddressError(f"{addr!r}: {parts[1]!r} is not an IP address") from None
    if (ip.version == 4) != (parts[0] == "ip4"):
        raise AddressError(f"{addr!r}: {parts[1]!r} is not an {parts[0]} address")
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        limit_stalls(sock)
        sock.bind((str(ip), int(parts[3])))
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        raise AddressError(f"cannot listen on {addr}: {err.strerror}") from None
    return sock, ip.is_loopback


def bind_unix(addr: str) -> socket.socket:
    """A listening unix socket for ``/unix/<path>`` (kubo's form of ``Addresses.API``) that
    only this user may connect to: its file is made with mode 0600 (connecting to a unix
    socket takes write permission on its file) and checked before it listens, so there is
    no moment another user could connect.  A socket file left at the path by a daemon that
    was killed (this user's, no one listening on it) is replaced; anything else there is
    refused.  That look and the replacement are made under the path's lock
    (:func:`_lock_socket_path`), held while the socket is served, so a daemon starting at
    the same moment never takes this one's socket, bound and not yet listening, for a
    stale one.  :class:`SocketFile` removes the file (and the lock) once it is done."""
    import os
    import stat

    path = addr[len("/unix"):]
    if "\0" in path or len(os.fsencode(path)) > 107:
        raise AddressError(f"{addr!r}: a unix socket's path is at most 107 bytes")
    try:
        _check_directories(path)
    except OSError as err:
        raise AddressError(f"cannot listen on {addr}: {err.strerror}") from None
    try:
        _lock_socket_path(path)
    except OSError as err:
        raise AddressError(f"cannot listen on {addr}: {err.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made = None
    try:
        try:
            _bind_private(sock, path)
        except OSError as err:
            if err.errno != errno.EADDRINUSE or not _stale_socket(path):
                raise
            os.unlink(path)
            _bind_private(sock, path)
        made = SocketFile.of(sock)
        st = os.lstat(path)
        if made is None or (st.st_dev, st.st_ino) != (made.dev, made.ino) \
                or not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
            raise OSError(errno.EPERM, "its file is not the private socket made")
        sock.listen(BACKLOG)
    except OSError as err:
        if made is not None:
            made.remove()  # and the lock with it
        else:
            _unlock_socket_path(path)
        sock.close()
        raise AddressError(f"cannot listen on {addr}: {err.strerror}") from None
    return sock


# The lock files of the unix sockets this process listens on (by socket path), each an open
# file held locked (flock) until the socket's file is removed (SocketFile.remove).
_LOCKS: dict[str, int] = {}


def _lock_socket_path(path: str) -> None:
    """Take the lock on the socket path ``path`` for this process: an exclusive ``flock``
    on ``path + ".lock"``, a file of this user's made mode 0600 in the socket's (checked)
    directory, held for as long as the socket is served.  Only its holder looks for a stale
    socket at the path and replaces it: without it, two daemons starting at once on the
    path could each take the other's socket, bound but not yet listening, for one left by
    a killed daemon, and remove it.  The lock goes with the process, so a killed daemon
    leaves none; its file is removed by its holder (:class:`SocketFile`), and one taken
    on a file since removed (a holder that was just done) is taken again on the new one.
    ``OSError`` (``EADDRINUSE``) if another process holds it."""
    import fcntl
    import os
    import stat

    lock_path = path + ".lock"
    for _ in range(8):  # another holder removes the file only as it stops: a few rounds
        try:
            # read-only: flock needs no more, and a umask that leaves 0400 (0277) must not
            # make the next start fail on the file a killed daemon left
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except OSError as err:  # a symlink, a directory, a socket: name the file
            raise OSError(err.errno, f"{lock_path}: {err.strerror}") from None
        try:
            st = os.fstat(fd)
            # one name only: not a hard link to some other file of this user's, which the
            # daemon would hold locked while it serves (its other users kept waiting)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                    or stat.S_IMODE(st.st_mode) & 0o077 or st.st_nlink != 1:
                raise OSError(errno.EPERM, f"{lock_path} is not a lock file of this user's")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(errno.EADDRINUSE,
                              "the socket is in use by another daemon (it holds "
                              f"{os.path.basename(lock_path)})") from None
            try:
                now = os.lstat(lock_path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                _LOCKS[path] = fd
                return
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it meanwhile: the lock of a file gone
    raise OSError(errno.EADDRINUSE, f"{lock_path} keeps being replaced")


def _unlock_socket_path(path: str) -> None:
    """Give up the lock :func:`_lock_socket_path` took on ``path``, removing its file
    (held locked while it is removed, so no other process holds a lock on it then)."""
    import os

    fd = _LOCKS.pop(path, None)
    if fd is None:
        return
    try:
        os.unlink(path + ".lock")
    except OSError:
        pass
    os.close(fd)


def _check_directories(path: str) -> None:
    """Refuse (``OSError``) a socket path that another user could point elsewhere once the
    daemon listens on it: every directory the path goes through, and every symlink it
    follows on the way, must be this user's or root's, and a directory others may write must
    be sticky (as ``/tmp``: there no one else may rename or remove this user's entries).
    Otherwise another user could rename the socket away and listen at its path -- the
    user's clients (``$WW_HOME/api``) would then talk to theirs -- or turn the path to
    another directory before the daemon removes the file."""
    import os
    import stat

    mine = (0, os.geteuid())
    parts = path.split("/")[:-1]
    current, hops = "/", 0
    while True:
        st = os.lstat(current)
        if st.st_uid not in mine:
            raise OSError(errno.EPERM, f"{current} is another user's")
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            target = os.readlink(current)
            parts = target.split("/") + parts
            current = "/" if target.startswith("/") else os.path.dirname(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, f"{current} is not a directory")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise OSError(errno.EPERM, f"others may write to {current}")
        while parts and parts[0] in ("", "."):
            parts.pop(0)
        if not parts:
            return
        name = parts.pop(0)
        # ".." leads to a directory checked already: where ``current`` was reached from
        current = os.path.dirname(current) if name == ".." else os.path.join(current, name)


def _bind_private(sock: socket.socket, path: str) -> None:
    """Bind ``sock`` to ``path``, its file made mode 0600: Linux gives the file the socket
    inode's mode less the umask (``unix_bind``), so the mode is set on the socket first --
    no umask change, which would hold for every thread of the process."""
    import os

    os.fchmod(sock.fileno(), 0o600)
    sock.bind(path)


def _stale_socket(path: str) -> bool:
    """Whether ``path`` is a socket file of this user's that no one listens on."""
    import os
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Not blocking: a listener whose backlog is full (a daemon that hangs) makes a blocking
    # connect wait until it accepts; not blocking, that is EAGAIN: someone listens.
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


@dataclass(frozen=True)
class SocketFile:
    """The file of a unix socket :func:`bind_unix` made, by path, device and inode."""

    path: str
    dev: int
    ino: int

    @classmethod
    def of(cls, sock: socket.socket) -> SocketFile | None:
        """The file of ``sock``, a bound unix socket (None for a TCP socket)."""
        import os

        if sock.family != socket.AF_UNIX or not sock.getsockname():
            return None
        path = sock.getsockname()
        st = os.lstat(path)
        return cls(path, st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Remove the file if it is still the socket's (not one put at its path since)."""
        import os

        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == (self.dev, self.ino):
                os.unlink(self.path)
        except OSError:
            pass
        _unlock_socket_path(self.path)


def limit_stalls(sock: socket.socket, seconds: float = STALL) -> None:
    """Make the kernel drop a connection accepted on the listening socket ``sock`` once data
    sent to it has waited ``seconds`` unacknowledged or unread (its client's receive window
    shut): ``TCP_USER_TIMEOUT``, which accepted connections inherit on Linux.

    hypercorn's trio server shields each write from cancellation, so without it a client
    that stops reading holds its connection, a piece of memory and the server's shutdown
    (which waits for that write past its graceful timeout) for as long as it likes; with it,
    the write fails after ``seconds`` and the connection closes.  :func:`bind` calls it; a
    no-op where the option does not exist."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))


async def serve(sites: list[Site], stop: trio.Event, grace: float | None = None,
                connections: int | None = None, log: Log | None = None) -> None:
    """Serve every site until ``stop`` is set; then stop accepting, let the requests in
    flight finish for at most ``grace`` seconds (:data:`GRACE`), cancel the rest, and
    return.

    Each site serves at most ``connections`` (:data:`CONNECTIONS`) connections at once: the
    next is accepted only once one has ended, so what the daemon holds for its clients is
    bounded by design, whatever a local process opens (each connection holds at most a few
    MiB: its headers, 64 KiB at most, :data:`HEADER_FIELDS` fields, an HTTP/2 connection's of
    at most :data:`H2_STREAMS` streams; what hypercorn read of a body, :data:`APP_QUEUE`
    reads and the one it holds; an upload with a place, a few pieces more: docs/daemon.md).
    Beyond it the client waits (backpressure): its connection is completed by the kernel
    and held in the listening socket's backlog, its data in the kernel's buffers, until it
    is accepted.
    An idle connection ends after hypercorn's keep-alive timeout (5 s), a connection that
    never sends its headers too, and an HTTP/2 one with no stream open whatever else it
    sends (:func:`_bound_http2_apps`), so waiting clients move on; on a stop, at once.

    A request whose client stopped reading is stuck in a write hypercorn shields from
    cancellation: once the grace is over, the connections still open are shut down under it
    (which ends such a write), so a stop takes at most about ``grace`` seconds.

    A defect in serving one connection (hypercorn's, h2's, ours) ends that connection, not
    the site; it is told as the event ``connection-error`` through ``log`` (``ww daemon``'s
    event lines: never written on this loop), by default a line on stderr written the same
    way (:func:`ww.host.lines.put`)."""
    connections = CONNECTIONS if connections is None else connections
    grace = GRACE if grace is None else grace  # read now: a test may have set it
    _read_in_larger_pieces()
    _copy_bodies_once()
    _keep_freed_buffers()
    _drop_what_apps_leave_unread()
    _bound_http2_apps()
    local = {site.sock.getsockname()[:2] if site.sock.family != socket.AF_UNIX
             else site.sock.getsockname() for site in sites}

    async def close_after_grace() -> None:
        await stop.wait()
        await trio.sleep(grace + 1)  # what is left is cancelled after the grace
        while True:
            _shut_down_connections(local)
            await trio.sleep(1)

    async with trio.open_nursery() as outer:
        outer.start_soon(close_after_grace)
        async with trio.open_nursery() as nursery:
            for site in sites:
                nursery.start_soon(_serve_site, site, stop, grace, connections,
                                   log or _tell)
        outer.cancel_scope.cancel()


def _config(grace: float) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.accesslog = None
    config.errorlog = None  # the daemon logs one line per event itself
    config.graceful_timeout = grace
    config.keep_alive_timeout = KEEP_ALIVE  # hypercorn's own, said
    config.h11_max_incomplete_size = HEAD_SIZE  # request line and headers
    config.h2_max_header_list_size = HEAD_SIZE
    config.h2_max_concurrent_streams = H2_STREAMS
    config.max_app_queue_size = APP_QUEUE
    return config


# accept() failing for want of resources: wait a little and try again (as trio's
# serve_listeners does) rather than end the site
_ACCEPT_CAPACITY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _serve_site(site: Site, stop: trio.Event, grace: float, connections: int,
                      log: Log) -> None:
    """hypercorn's own serving loop (``hypercorn.trio.run.worker_serve``), for one ASGI app
    on its socket, with an accept loop of ours that takes a connection only while fewer than
    ``connections`` are open (hypercorn's accepts every connection at once, each with its
    task, its buffers and a file descriptor, as many as clients open).

    With every place taken, a client that waits to be accepted gets the place of a
    connection that keeps the daemon waiting for nothing: one with no request under way
    (idle between requests, or that has not sent a whole request head), the one waited on
    longest first; else one whose request has kept the daemon waiting on its body for
    :data:`EVICT_AFTER` seconds; else one whose request has waited on other requests that
    long (:func:`held_for_others`: an upload waiting for a place); else one whose client
    leaves its reply untaken, or sends its request body, at under :data:`MIN_SEND_RATE`
    over :data:`SEND_GRACE` seconds, the slowest first (a TCP window kept shut or opened a
    little now and then, an HTTP/2 flow-control window never opened, a body trickled a byte
    a second, never silent for :data:`EVICT_AFTER` seconds: hypercorn waits on those for as
    long as the client likes).  Its socket is shut down, as if its client had hung up, and
    its requests are cancelled; until it has ended (its app may be slow to return), its
    place counts as about to free, and no other is cut.  Connections the daemon itself
    holds up otherwise (a request it works on) keep theirs.  So idle connections, uploads
    that trickle a byte now and then (with an upload place or not), uploads waiting behind
    a few that keep sending, and readers that take nothing no longer shut the others out
    for as long as they are held (docs/security.md).
    The apps' lifespan has nothing to do (:func:`lifespan`), so it is not run."""
    import math

    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    config = _config(grace)
    app = wrap_app(_bounded_heads(site.app), config.wsgi_max_body_size,  # type: ignore[arg-type]
                   "asgi")
    context = WorkerContext(None)
    state = ConnectionState({})
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(site.sock))
    slots = trio.Semaphore(connections)
    served: set[Any] = set()  # the connections' servers (_server_class())
    server_class = _server_class()

    async def serve_connection(stream: trio.SocketStream) -> None:
        server = server_class(app, config, context, state, stream)
        served.add(server)
        try:
            await server
        except Exception as err:
            # a defect in serving one connection (hypercorn's, h2's, ours) ends that
            # connection, not the site and with it the daemon, as one did (an HTTP/2
            # client's 1,001 PRIORITY frames: docs/security.md)
            log("connection-error", site=site.name,
                error=" ".join(f"{type(err).__name__}: {err}".split()))
        finally:
            served.discard(server)
            slots.release()
            await trio.aclose_forcefully(stream)

    looked = [-math.inf]  # when a waiting client last had the connections looked over

    async def take_place() -> None:
        while True:
            try:
                slots.acquire_nowait()
                return
            except trio.WouldBlock:
                pass
            await trio.lowlevel.wait_readable(site.sock.fileno())  # a client waits to be taken
            if trio.current_time() - looked[0] > EVICT_AFTER + 1:
                # clients wait again after a while when none did: the readers' rates are
                # measured over this wait (while they keep coming, over the whole of it)
                for server in served:
                    server.stretch = server.body_stretch = None
            looked[0] = trio.current_time()
            if any(server.given_up for server in served):
                # one cut for this client is still to end (its app to return): its place is
                # about to free, and cutting another would take two places for one client
                wait = 1.0
            else:
                try:
                    victim, wait = _longest_waited_on(served, trio.current_time())
                    if victim is not None:
                        victim.give_up_place()
                except Exception as err:
                    # a defect in the look (ours) is told, and this client waits for a
                    # place as if none were to be cut: it ended the site, its listener
                    # closed and every waiting client reset, with no line (a draft's)
                    log("place-error", site=site.name,
                        error=" ".join(f"{type(err).__name__}: {err}".split()))
                    wait = 1.0
            with trio.move_on_after(wait):
                await slots.acquire()  # the victim's, or any that ends meanwhile
                return

    async def accept(conns: trio.Nursery) -> None:
        while True:
            await take_place()
            try:
                stream = await listener.accept()
            except OSError as err:
                slots.release()
                if err.errno not in _ACCEPT_CAPACITY:
                    raise
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            conns.start_soon(serve_connection, stream)

    async with trio.open_nursery() as conns:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(accept, conns)
            await stop.wait()
            accepting.cancel_scope.cancel()
        await listener.aclose()
        # as hypercorn: idle connections close now, the others once their reply is done
        # (keep-alive ends); what is left after the grace is cancelled
        await context.terminated.set()
        conns.cancel_scope.deadline = trio.current_time() + grace


def _tell(event: str, **fields: Any) -> None:
    """An event as ``ww daemon``'s plain event lines read, on stderr: never waiting on this
    loop (:func:`ww.host.lines.put`: a pipe nobody reads held it, and every connection with
    it; past a MiB waiting, dropped and counted)."""
    from ww.host import lines

    lines.put(lines.stderr(), (event_text(event, **fields) + "\n").encode(
        errors="backslashreplace"), "event", json=False)


def event_text(event: str, **fields: Any) -> str:
    """An event as ``ww daemon``'s plain event lines say it (``ww.app.daemon.EventLog``'s
    too): ``ww daemon: <event>: <field> <value> ...``."""
    details = " ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items())
    return f"ww daemon: {event}" + (f": {details}" if details else "")


def _bounded_heads(app: ASGIApp) -> ASGIApp:
    """``app``, with a request whose head has more than :data:`HEADER_FIELDS` header fields
    (a 431) or more than :data:`QUERY_FIELDS` fields in its query string (a 414) refused
    before the app sees it, its body unread (its connection ends with the reply)."""

    async def bounded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            if len(scope.get("headers", ())) > HEADER_FIELDS:
                await _refuse(send, 431, f"more than {HEADER_FIELDS} header fields")
                return
            if scope.get("query_string", b"").count(b"&") >= QUERY_FIELDS:
                await _refuse(send, 414, f"more than {QUERY_FIELDS} query fields")
                return
        await app(scope, receive, send)

    return bounded


async def _refuse(send: Any, status: int, why: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"cache-control", b"no-store"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": f"{status}: {why}\n".encode()})


def _longest_waited_on(served: set[Any], now: float) -> tuple[Any, float]:
    """The connection to give its place to a waiting client (or None), and how long to wait
    for a place before looking again: until the first in the middle of a request could
    give its place up.  First one with no request under way (one just accepted that has read
    nothing yet once waited on :data:`FIRST_READ` seconds), longest waited on first; then
    one whose request's body has brought nothing for :data:`EVICT_AFTER` seconds; then one
    whose request has waited that long on others (:func:`held_for_others`); then one whose
    client has taken its reply, or sent its request's body (:meth:`slow_sender`: uploads
    that trickle, never silent that long), at less than :data:`MIN_SEND_RATE` for
    :data:`SEND_GRACE` seconds, the slowest first."""
    best, best_key = None, (4, 0.0)
    wait = EVICT_AFTER
    for server in served:
        rate = server.slow_reader(now)
        if server.stretch is not None and rate is None:
            wait = min(wait, server.stretch[0] + SEND_GRACE - now)
        sent, due = server.slow_sender(now)
        if sent is None:
            wait = min(wait, due)
        if server.first_read_due() > 0:
            wait = min(wait, server.first_read_due())
        key = server.waited_on()
        if key is not None and key[0] >= 1 and now - key[1] < EVICT_AFTER:
            wait = min(wait, key[1] + EVICT_AFTER - now)
            key = None
        if key is None:
            slow = [r for r in (rate, sent) if r is not None and r < MIN_SEND_RATE]
            if not slow:
                continue
            key = (3, min(slow))
        if key < best_key:
            best, best_key = server, key
    return best, (1.0 if best is not None else max(wait, 0.05))


def _reply_held(sock: Any, protocol: Any) -> int | None:
    """How many bytes the client of the TCP socket ``sock`` has acknowledged, if the daemon
    holds bytes of a reply it has not taken: bytes the kernel holds unsent (a TCP window
    shut, or too small for them; not bytes merely in flight, which a client that reads at
    once may leave unacknowledged for a delayed ACK), or an HTTP/2 stream's send buffer
    (hypercorn's) holds, which only a flow-control window keeps there.  None if it holds
    none, or for a socket other than TCP, or a kernel that does not tell (Linux 4.6 and
    later do: ``tcp_info``)."""
    import struct

    option = getattr(socket, "TCP_INFO", None)
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 256)
    except OSError:
        return None
    if len(info) < _TCPI_NOTSENT_BYTES + 4:
        return None
    acked = int(struct.unpack_from("Q", info, _TCPI_BYTES_ACKED)[0])
    if struct.unpack_from("I", info, _TCPI_NOTSENT_BYTES)[0] > 0:
        return acked
    buffers = getattr(protocol, "stream_buffers", None) or {}
    if any(len(getattr(buffer, "buffer", b"")) for buffer in list(buffers.values())):
        return acked
    return None


# offsets in Linux's struct tcp_info (linux/tcp.h): tcpi_bytes_acked (a u64),
# tcpi_notsent_bytes (a u32)
_TCPI_BYTES_ACKED = 120
_TCPI_NOTSENT_BYTES = 144


_SERVER_CLASS: list[type] = []


def _server_class() -> type:
    """hypercorn's ``TCPServer`` with a read loop that notes since when it waits on its
    client, and a way to give its place up (:func:`_serve_site`)."""
    if _SERVER_CLASS:
        return _SERVER_CLASS[0]
    import math

    import h2.connection
    import h11
    from h2.stream import StreamState
    from hypercorn.events import Closed, RawData, Updated
    from hypercorn.trio import tcp_server

    class Server(tcp_server.TCPServer):  # type: ignore[misc]
        waiting_since: float | None = None  # trio time; None: not reading from the client
        given_up = False
        # the daemon holds reply bytes its client has not taken, seen so at each look while
        # a client waits, since this stretch began (see slow_reader)
        stretch: Stretch | None = None
        # the seconds the read loop has spent on what it read rather than waiting on its
        # client (the app taking it: a worker behind), and since when it does (None: it
        # waits on the client); and the stretch over which its request bodies' rate is
        # measured while a client waits (see slow_sender)
        busy = 0.0
        busy_since: float | None = None
        body_stretch: Stretch | None = None
        read_any = False  # whether the read loop has taken anything its client sent

        async def _read_data(self) -> None:  # hypercorn's, noting the wait
            while True:
                self.waiting_since = trio.current_time()
                if self.busy_since is not None:
                    self.busy += self.waiting_since - self.busy_since
                    self.busy_since = None
                try:
                    with trio.fail_after(self.config.read_timeout or math.inf):
                        data = await self.stream.receive_some(tcp_server.MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError,
                        trio.TooSlowError):
                    break
                finally:
                    self.waiting_since = None
                    self.busy_since = trio.current_time()
                self.read_any = True
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            await self.protocol.handle(Closed())
            # (found by attack) hypercorn leaves the connection's idle timer running once
            # the reading is over, and the connection (its task group) ends only when the
            # timer fires: an idle connection its client hung up on, or whose place it gave
            # up for a waiting client, held that place up to KEEP_ALIVE seconds more, so
            # the daemon, which cuts one at a time, cut one every 5 s, not at once (800
            # connections holding half a head each: another client served after 30 s)
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()
            # hypercorn's HTTP/2 protocol ends its streams on the connection's end but not
            # their send buffers: an app waiting for the client's window to take the rest of
            # its reply (in ``push`` or ``drain``) waited for ever, and held the connection,
            # and so its place, after its client had gone or its place was given up
            protocol = getattr(self.protocol, "protocol", None)
            for buffer in list(getattr(protocol, "stream_buffers", {}).values()):
                await buffer.close()

        async def protocol_send(self, event: Any) -> None:
            # Once a reply is done, hypercorn's h11 protocol ends its request from inside the
            # app's send of the reply's end (``H11Protocol._maybe_recycle``): it puts the
            # request's http.disconnect, then either (re)starts the connection's idle timer
            # (Updated: kept alive) or closes the connection (Closed: the client asked
            # `Connection: close`, or h11 cannot reuse it).  An app that cancels that send
            # on the http.disconnect it puts (the RPC API's watch does; so does Starlette's
            # StreamingResponse, the gateway's files, listings and CARs) cancelled these:
            # the timer's start, so a connection kept alive was never ended, idle or with
            # half a request head; and the close, whose first checkpoint
            # (``TCPServer._close``: ``send_eof`` before ``aclose``) raised the Cancelled
            # before the socket was closed, so the connection stayed open after its whole
            # reply, its idle timer stopped, until its client left -- in about half of the
            # requests, as trio ran the watch or the send first (docs/security.md).
            # Shielded: the timer's start or stop takes a lock held only for such a start
            # or stop, and starts a task; the close shuts the socket's sending side down
            # (trio's send_eof, which does not wait: a send under way makes it fail) and
            # closes it, and puts the http.disconnect of a request still under way
            # (:func:`_drop_what_apps_leave_unread`: without waiting).
            if isinstance(event, (Updated, Closed)):
                with trio.CancelScope(shield=True):
                    await super().protocol_send(event)
                return
            await super().protocol_send(event)

        def waited_on(self) -> tuple[int, float] | None:
            """(0, since when) if the read loop waits on a client with no request under way
            (idle, or its request head not whole); (1, since when) if it waits on the body
            of a request; None if it does not wait on the client (the daemon reads nothing
            now, or a request is whole and the reply the daemon's to give).  HTTP/2: with
            no stream, as idle; with every stream still receiving its request, (1, since);
            with any request whole (its reply the daemon's, whether it works on it, sends
            it, or waits for the client to make room for it), None.  Else (2, since when)
            if a request of its waits on other requests (:func:`held_for_others`)."""
            if self.given_up:
                return None
            key = self._waited_on_client()
            if key is not None:
                return key
            apps = getattr(self._task_group_or_none(), "apps", {})
            held = [since[0] for since in apps.values() if since[0] is not None]
            return (2, min(held)) if held else None

        def _task_group_or_none(self) -> Any:
            return getattr(self, "_task_group", None)

        def _waited_on_client(self) -> tuple[int, float] | None:
            since = self.waiting_since
            if since is None or self.first_read_due() > 0:
                return None
            protocol = getattr(getattr(self, "protocol", None), "protocol", None)
            connection = getattr(protocol, "connection", None)
            if isinstance(connection, h2.connection.H2Connection):
                streams = getattr(protocol, "streams", {})
                if not streams:
                    return 0, since
                for stream_id in streams:
                    stream = connection.streams.get(stream_id)
                    if stream is None or stream.state_machine.state is not StreamState.OPEN:
                        return None  # its request whole (or ended): the daemon's turn
                return 1, since
            if not isinstance(connection, h11.Connection):
                return None
            if connection.their_state is h11.IDLE:
                return 0, since
            return (1, since) if connection.their_state is h11.SEND_BODY else None

        def slow_reader(self, now: float) -> float | None:
            """The rate (bytes a second) at which its client has taken what the daemon sent
            it since the daemon was first seen (this wait: :func:`_longest_waited_on`)
            holding reply bytes it has not taken -- unsent in the kernel for the client's
            TCP window, or held for its HTTP/2 flow-control window -- once that is
            :data:`SEND_GRACE` seconds ago and the bytes are still there; else None (such a
            stretch is begun or ended here; one at :data:`MIN_SEND_RATE` or more ends, and
            the next begins, so a burst does not cover a trickle after it).  A unix socket's
            client is the user's own (its file is 0600): None."""
            if self.given_up:
                return None
            acked = _reply_held(getattr(self.stream, "socket", None),
                                getattr(getattr(self, "protocol", None), "protocol", None))
            if acked is None:
                self.stretch = None
                return None
            self.stretch, rate = stretch_rate(self.stretch, now, acked)
            return rate

        def first_read_due(self) -> float:
            """The seconds left of :data:`FIRST_READ` for a connection whose read loop waits
            for its first read; else 0.  (Found by measuring) the old daemon looked for the
            next waiting client's place as soon as it had accepted one, before that one's
            read loop had its turn to take the request its client had sent (trio's receive
            takes the bytes from the kernel, then lets the others run before it returns),
            and cut it as idle: its client had no reply."""
            if self.read_any or self.waiting_since is None:
                return 0.0
            return max(0.0, self.waiting_since + FIRST_READ - trio.current_time())

        def slow_sender(self, now: float) -> tuple[float | None, float]:
            """The rate (bytes a second) at which its client has sent the body of its
            request since the daemon was first seen (this wait: :func:`_longest_waited_on`)
            waiting on that body, once that is :data:`SEND_GRACE` seconds ago, the time the
            read loop spent on what it read left out (the app and its worker behind, not
            the client: an honest upload the daemon is slow to take is never counted slow);
            else None.  And the seconds until the measure could be due.  The stretch ends
            when the connection is seen waiting on its client for anything but a body (idle,
            a head, its reply); one at :data:`MIN_SEND_RATE` or more ends, and the next
            begins, so a burst does not cover a trickle after it.  A unix socket's client is
            the user's own (its file is 0600): None, as for :meth:`slow_reader`."""
            sock = getattr(self.stream, "socket", None)
            if self.given_up or sock is None or sock.family not in (socket.AF_INET,
                                                                    socket.AF_INET6):
                self.body_stretch = None
                return None, math.inf
            if self.waiting_since is None:  # the daemon's turn: the measure waits
                return None, math.inf
            key = self._waited_on_client()
            if key is None or key[0] != 1:
                self.body_stretch = None
                return None, math.inf
            sent = getattr(self._task_group_or_none(), "body_bytes", 0)
            self.body_stretch, rate = stretch_rate(self.body_stretch, now, sent, self.busy)
            since, _, busy_then = self.body_stretch or (now, sent, self.busy)
            return rate, since + SEND_GRACE + (self.busy - busy_then) - now

        def give_up_place(self) -> None:
            """Shut the connection down, as if its client had hung up: the read loop sees
            its end, a request under way is cancelled, and the place is freed."""
            self.given_up = True
            try:
                self.stream.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
            except OSError:
                pass
            # and its requests cancelled now: one waiting on others (an upload waiting for
            # a place) would see the shutdown only once done waiting, perhaps never
            for cancel in getattr(self._task_group_or_none(), "apps", {}):
                cancel.cancel()

    _SERVER_CLASS.append(Server)
    return Server


# The key, in a request's ASGI scope, of since when its app waits on other requests
# (held_for_others): [trio time] or [None].
_HELD = "ww.held_for_others"


@contextmanager
def held_for_others(scope: dict[str, Any]) -> Iterator[None]:
    """In an app, around a wait on other requests rather than on the daemon's own work (an
    upload waiting for a place other uploads hold): with every connection place taken and
    a client waiting to be accepted, a connection held so for :data:`EVICT_AFTER` seconds
    may give its place up (:func:`_serve_site`), its request cancelled.  Without it, the
    few connections that hold those others (uploads that keep sending) and silent ones
    waiting behind them held every place for as long as they liked."""
    held = scope.get(_HELD)
    if held is None:
        yield
        return
    held[0] = trio.current_time()
    try:
        yield
    finally:
        held[0] = None


def _in_place_of_unread(put_end: Any, take_end: Any, message: Any, most: int) -> None:
    """``message`` (an ``http.disconnect``) put in the app's queue in place of everything
    still unread in it, without waiting: the request is over (its reply is done, or its
    client left).  All of it: dropping only what made room for the message, the oldest
    reads, left the app the reads after them, so that it read a body with a hole in it
    (and a client that sent a whole `add` and shut its side down had its file added
    without the middle, or a 400 about a malformed body)."""
    for _ in range(most + 1):  # bounded: the queue holds at most ``most``
        try:
            take_end.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    try:
        put_end.send_nowait(message)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the app has returned: nobody reads it


def _drop_what_apps_leave_unread() -> None:
    """Have hypercorn drop what is left of a request its app did not read once the request
    is over, rather than wait for the app to take it.

    hypercorn hands a request's body to the app through a queue of :data:`APP_QUEUE` reads
    and, once the reply is sent (or the client left), puts ``http.disconnect`` in it too,
    waiting for room.  An app that answers without reading the body (an unknown command, a
    refused request, with a body of a few MiB) left the queue full: its last send waited for
    that room (hypercorn puts the ``http.disconnect`` from inside it), the connection's
    read loop to put the next read, for ever, so the connection and its reads were held
    after the client had gone, until the daemon stopped (and, with :data:`CONNECTIONS`,
    its place).  Now ``http.disconnect`` takes the place of what is left unread, the queue's
    app end is closed when the app returns, and what is put after is dropped: hypercorn
    then closes the connection, as it does when a reply is done before its request."""
    from hypercorn.trio import task_group, tcp_server

    base = task_group.TaskGroup
    if tcp_server.TaskGroup is not base:  # done already
        return
    handle = task_group._handle  # read first: should hypercorn rename it, this raises

    class TaskGroup(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            # the apps running on the connection: their cancel scopes, and since when each
            # waits on other requests (held_for_others), for Server.give_up_place/waited_on
            self.apps: dict[trio.CancelScope, list[float | None]] = {}
            # the apps spawned and not yet returned (counted from the spawn: ``apps`` holds
            # one only once its task runs), for _bound_http2_apps
            self.running = 0
            # the bytes of request bodies read for the apps so far, for Server.slow_sender
            self.body_bytes = 0

        async def spawn_app(self, app: Any, config: Any, scope: Any, send: Any) -> Any:
            put_end, take_end = trio.open_memory_channel[Any](config.max_app_queue_size)
            held: list[float | None] = [None]
            scope[_HELD] = held

            async def run_app(*args: Any) -> None:
                try:
                    with trio.CancelScope() as cancel:
                        self.apps[cancel] = held
                        try:
                            await app(*args)
                        finally:
                            del self.apps[cancel]
                finally:
                    self.running -= 1
                    take_end.close()  # what is queued is dropped, and so what is put after

            async def put(message: Any) -> None:
                self.body_bytes += len(message.get("body", b""))
                if message.get("type") == "http.disconnect":
                    _in_place_of_unread(put_end, take_end, message, config.max_app_queue_size)
                    return
                try:
                    await put_end.send(message)
                except trio.BrokenResourceError:
                    pass  # the app has returned

            self._nursery.start_soon(handle, run_app, config, scope, take_end.receive, send,
                                     trio.to_thread.run_sync, trio.from_thread.run)
            self.running += 1
            return put

    tcp_server.TaskGroup = TaskGroup


def _bound_http2_apps() -> None:
    """Have an HTTP/2 connection run at most :data:`H2_STREAMS` apps at once, counting a
    stream until its app has returned, not until h2 sees it closed.

    h2 bounds the streams *open* (``SETTINGS_MAX_CONCURRENT_STREAMS``), and a stream its
    client resets is closed at once; hypercorn only tells its app (``http.disconnect``, which
    an app waiting on something else reads only later), and lets the client open the next.
    So a client that opened a stream and reset it at once, again and again (HTTP/2's "rapid
    reset", CVE-2023-44487), had up to 1,000 apps of a connection under way (hypercorn's
    ``keep_alive_max_requests``), not 8: with the upload places taken, 1,000 `add`s waiting
    for one, each holding a 62 KiB head HPACK sent for a few bytes, 86 MiB of the daemon's a
    connection (docs/security.md).  Now a stream that comes while its connection's apps are
    at the bound is refused (``RST_STREAM`` ``REFUSED_STREAM``, which tells the client it
    was not processed, so it may try again), and what the client sends on it is only
    acknowledged (its flow-control window given back).

    And h2 decodes one request head at a time: given a read, h2 decodes every frame in it
    before hypercorn sees any, each head (up to 64 KiB decoded, for a byte an indexed field)
    held in the list of events.  A read of 12,000 streams opened and reset (42 bytes each:
    HEADERS naming a 3.8 KiB cookie 16 times, RST_STREAM), 500 KB sent, took the daemon to
    585 MiB (99 at rest), whatever the bound above.  Now h2's frame buffer stops after each
    request head (:class:`_OneHeadAtATime`), and the rest of the read is decoded once that
    head has been taken up (its app spawned, or its stream refused).  The same buffer
    refuses a head sent in more than :data:`HEAD_SIZE` bytes and drops settings h2 does not
    know (:class:`_OneHeadAtATime`).

    And an HTTP/2 connection with no stream open is idle, ended after :data:`KEEP_ALIVE`
    seconds as an idle HTTP/1.1 one is (and at once on a stop), whatever else its client
    sends (PINGs, SETTINGS, WINDOW_UPDATEs: no request), as Go's HTTP/2 server does (its
    ``IdleTimeout``: the timer runs from the preface, stops as a stream opens, and starts
    again as the last one closes, a client's RST_STREAM included; a PING leaves it be).
    (found by attack) hypercorn stopped the connection's idle timer on its preface (which
    its HTTP/1.1 side takes for a request) and started it again only as a stream's app ended:
    a connection that sent its preface and nothing more, or whose every stream its client
    reset, was never ended (open after 40 s with a 5 s keep-alive, PINGs answered), and a
    stop waited for it until the grace was over (10 s).  Now the timer follows whether the
    connection has a stream open, seen after the preface, after each read's frames and as a
    stream's app ends (:func:`_mind_idle`), in place of hypercorn's own starts and stops."""
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    from h2.frame_buffer import FrameBuffer
    from h2.settings import SettingCodes
    from hypercorn.events import RawData, Updated
    from hypercorn.protocol.h2 import H2Protocol
    from hyperframe.frame import HeadersFrame, SettingsFrame

    if getattr(H2Protocol, "_ww_bounded", False):  # done already
        return
    create_stream = H2Protocol._create_stream  # read first: should hypercorn rename them,
    handle_events = H2Protocol._handle_events  # this raises
    handle = H2Protocol.handle
    H2Protocol._priority_updated  # noqa: B018 -- what is replaced below, read first too
    init = H2Protocol.__init__
    initiate = H2Protocol.initiate
    H2Protocol.idle  # noqa: B018 -- what idleness is taken from, read first too
    FrameBuffer()._data, FrameBuffer._update_header_buffer  # noqa: B018 -- read first: should
    # h2 rename them, this raises

    _KNOWN_SETTINGS = frozenset(int(code) for code in SettingCodes)

    class _OneHeadAtATime(FrameBuffer):
        """h2's frame buffer, ending its frames after each request head (``stopped``: the
        rest is still to be read, by another ``receive_data``), and refusing a head whose
        frames (HEADERS and CONTINUATIONs) hold more than :data:`HEAD_SIZE` bytes: h2
        buffers up to 64 frames of 16 KiB before it decodes any, so a connection that sent
        a head of 63 and nothing more held 1.3 MiB until it ended (120: 98 -> 254 MiB), where
        HPACK never needs more bytes for a head than its decoded size, 64 KiB at most.
        And dropping the settings of a client's SETTINGS frame that h2 does not know."""

        stopped = False
        _head = False

        def _update_header_buffer(self, f: Any) -> Any:
            frame = super()._update_header_buffer(f)
            if sum(len(part.data) for part in self._headers_buffer) > HEAD_SIZE:
                raise h2.exceptions.ProtocolError(f"a request head of more than {HEAD_SIZE} "
                                                  "bytes")
            return frame

        def __next__(self) -> Any:
            if self._head:
                self._head = False
                self.stopped = len(self._data) > 0
                raise StopIteration
            frame = super().__next__()
            self._head = isinstance(frame, HeadersFrame)
            if isinstance(frame, SettingsFrame):
                # what HTTP/2 has a client's unknown settings be: ignored (RFC 9113, 6.5.2).
                # h2 kept each, a deque apiece, and looked every one over at each SETTINGS
                # frame after: a client that sent all 65,520 (393 KB) had 57 MiB of the
                # daemon's held for its connection, and each empty SETTINGS it sent after
                # cost 1 ms of CPU (116 s a MiB of them)
                frame.settings = {code: value for code, value in frame.settings.items()
                                  if code in _KNOWN_SETTINGS}
            return frame

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.connection.incoming_buffer.__class__ = _OneHeadAtATime
        self._ww_idle = None  # whether the idle timer was last told idle (None: not yet)
        self._ww_send = send = self.send

        async def send_minding_idle(event: Any) -> None:
            if isinstance(event, Updated):  # hypercorn's own start or stop of the timer
                await _mind_idle(self)
                return
            await send(event)

        self.send = send_minding_idle

    async def _mind_idle(self: Any) -> None:
        """Start the connection's idle timer as it comes to have no stream open, stop it as
        one opens; nothing else (a PING, a refused stream) starts it again.  Not once the
        connection is closed: its read loop has stopped the timer for good."""
        if self.closed:
            return
        idle = bool(self.idle)
        if idle is not self._ww_idle:
            self._ww_idle = idle
            await self._ww_send(Updated(idle=idle))

    async def _initiate(self: Any, *args: Any, **kwargs: Any) -> None:
        await initiate(self, *args, **kwargs)
        await _mind_idle(self)  # after the preface: idle, no stream yet

    async def handle_one_head_at_a_time(self: Any, event: Any) -> None:
        await handle(self, event)
        if not isinstance(event, RawData):
            return
        buffer = self.connection.incoming_buffer
        # each round takes at least one head off the buffer: bounded by its frames
        while buffer.stopped and not self.closed \
                and self.connection.state_machine.state is not h2.connection.ConnectionState.CLOSED:
            buffer.stopped = False
            await handle(self, RawData(data=b""))
        # streams its client reset are closed without a word to the timer (hypercorn told it
        # only as a stream's app ended, and one reset ends without telling)
        await _mind_idle(self)

    async def _create_stream(self: Any, request: Any) -> None:
        if getattr(self.task_group, "running", 0) >= H2_STREAMS:
            try:
                self.connection.reset_stream(request.stream_id,
                                             h2.errors.ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.ProtocolError:
                pass  # its client reset it already
            return
        await create_stream(self, request)

    async def _handle_events(self: Any, events: list[Any]) -> None:
        def kept(batch: list[Any]) -> Iterator[Any]:
            # read one at a time as hypercorn handles them, so a stream refused above (or
            # whose app has answered and gone) is seen as such by the events after it:
            # hypercorn looks a data event's stream up unguarded, and raised
            for event in batch:
                if isinstance(event, h2.events.DataReceived) \
                        and event.stream_id not in self.streams:
                    self.connection.acknowledge_received_data(event.flow_controlled_length,
                                                              event.stream_id)
                    continue
                yield event

        batch: list[Any] = []
        for event in events:
            batch.append(event)
            if isinstance(event, h2.events.StreamReset):
                await handle_events(self, kept(batch))
                batch = []
                # its reply's buffer closed, so that the send task drops it and its place in
                # the priority tree: hypercorn dropped them only once a reply was done, and
                # an app that never ends one (a request cancelled as its client left) left
                # them for as long as the connection lasted; at 999 (the tree's bound) the
                # next stream raised out of the connection and ended the daemon
                buffer = self.stream_buffers.get(event.stream_id)
                if buffer is not None:
                    await buffer.close()
                    await self._window_updated(event.stream_id)  # the send task to see it
        if batch:
            await handle_events(self, kept(batch))

    async def _priority_updated(self: Any, event: Any) -> None:
        """PRIORITY signals ignored, as RFC 9113 (5.3.2) lets a server: hypercorn put every
        stream one named in its priority tree, opened or not, never to be taken out, and
        the tree's 1,000th raised out of the connection and ended the daemon (1,001 PRIORITY
        frames, 14 KB).  Its streams are served in the order the tree has them by default."""

    H2Protocol.__init__ = __init__  # type: ignore[method-assign]
    H2Protocol.initiate = _initiate  # type: ignore[method-assign]
    H2Protocol.handle = handle_one_head_at_a_time  # type: ignore[method-assign]
    H2Protocol._create_stream = _create_stream  # type: ignore[method-assign]
    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
    H2Protocol._priority_updated = _priority_updated  # type: ignore[method-assign]
    H2Protocol._ww_bounded = True  # type: ignore[attr-defined]


def _shut_down_connections(local: set[tuple[str, int] | str]) -> None:
    """Shut down this process's accepted TCP connections to the ``local`` (address, port)s
    and unix ones to the ``local`` paths (the sites' own: not their listening sockets, not
    the libp2p host's connections), which wakes whatever waits on them."""
    import os

    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    import stat

    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue  # a file, a pipe
            dup = os.dup(fd)
        except OSError:
            continue  # closed meanwhile
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)  # not kept by a socket object: closed here, not leaked
            continue
        try:
            if sock.type == socket.SOCK_STREAM \
                    and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) \
                    and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) \
                    and _served(sock.getsockname(), local):
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


def _served(address: tuple[Any, ...] | str, local: set[tuple[str, int] | str]) -> bool:
    if isinstance(address, str):  # a unix socket's path ("" for an unnamed one)
        return bool(address) and address in local
    host, port = address[:2]
    return any(not isinstance(served, str) and port == served[1]
               and served[0] in (host, "0.0.0.0", "::") for served in local)


async def lifespan(receive: Any, send: Any) -> None:
    """An app's side of the ASGI lifespan protocol, with nothing to start or stop (the node
    is the caller's): the RPC API's and the gateway's."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _read_in_larger_pieces() -> None:
    """Make hypercorn read up to :data:`READ_SIZE` bytes from a socket at once.

    hypercorn reads 64 KiB at a time (``MAX_RECV``, a module constant that no Config field
    sets), and each read makes a round on the event loop: h11 parses it, hypercorn queues it
    for the app, the app's worker thread takes it over.  For a 300 MiB upload that is 4,800
    rounds, and profiled they were most of what an RPC ``add`` cost beyond ``ww export``:
    reading 256 KiB at a time cut the daemon's CPU time for a 200 MiB ``add`` from 1.1 s to
    0.6 s at load 2-3 (``ww export``: 0.6 s), its user time by a quarter at load 5-7.  1 MiB
    was slower again until the allocator kept freed buffers (:func:`_keep_freed_buffers`):
    with both, a 300 MiB ``add`` took 0.45 s against 0.53 s (docs/benchmarks.md).  The buffer
    lives only during a read, so an idle connection holds none of it; a request body waiting
    for its app is at most :data:`APP_QUEUE` reads (hypercorn's ``max_app_queue_size``) and
    the one hypercorn waits to put, 3 MiB.
    """
    from hypercorn.trio import tcp_server

    # Read first: should hypercorn rename it, this raises rather than silently doing nothing.
    if tcp_server.MAX_RECV < READ_SIZE:
        tcp_server.MAX_RECV = READ_SIZE


# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
KEEP_FREED = 8 << 20  # bytes of freed heap glibc may keep per arena rather than give back
ARENAS = 4  # glibc's arenas at most (its own: 8 per core)


def _keep_freed_buffers() -> None:
    """Have glibc's allocator reuse the MiB-sized buffers a request body passes through.

    Each read of :data:`READ_SIZE` is a fresh ``bytes``; glibc serves a request that large
    with ``mmap`` (its threshold starts at 128 KiB and only creeps up) and gives it back with
    ``munmap`` once freed, so every read of an upload faulted 256 fresh pages in, on the
    event loop, under the interpreter lock.  Served from the heap and kept there when freed
    (up to :data:`KEEP_FREED`), the same few buffers are reused: a 300 MiB ``add`` faulted
    27,000 pages instead of 32,700 and took 0.45 s against 0.53 s (median of 10, alternating;
    docs/benchmarks.md).  The cost: freed memory kept for reuse, up to :data:`KEEP_FREED`
    in each of glibc's arenas (the threshold is per arena, and glibc makes up to 8 per core
    for the threads that allocate: the worker threads' are arenas of their own; 8 threads
    each freeing 28 MiB of 1 MiB buffers left 237 MiB resident with 32 MiB, 18 MiB untuned).
    So it is 8 MiB (no ``mmap`` below 4 MiB), and the ``add`` is as fast as with 32 MiB
    (0.651 against 0.649 s, 12 alternating rounds).  And glibc makes at most :data:`ARENAS`
    arenas (``M_ARENA_MAX``; its own bound is 16 on 2 cores), which keep at most 32 MiB
    between them: the free heap at the top of a thread's arena goes back only past the
    threshold, never through ``malloc_trim`` (:func:`give_back_freed`), so with 16 arenas,
    40 stalled uploads that had ended left 50-60 MiB there, with 4 about 14 MiB.  One
    ``add`` runs on 4 threads (the event loop, its worker, two block writers) and is as fast
    with 4 arenas; with 2 it took 8 % longer (docs/benchmarks.md).  Not glibc (or no
    ``mallopt``): nothing is changed.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, KEEP_FREED // 2)
    mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)
    mallopt(_M_ARENA_MAX, ARENAS)


class _Trim:
    """The state of :func:`give_back_freed`'s thread, under ``lock``."""

    lock = threading.Lock()
    running = False  # a thread is under way
    wanted = False  # and it is to trim (once more) before it ends


def give_back_freed() -> None:
    """Have glibc give the system back the freed memory it keeps (``malloc_trim(0)``: the
    free pages inside every arena's heaps, and the main heap's free top; not a thread
    arena's top, see :data:`ARENAS`), in a thread of its own; returns at once.  Asked again
    while it runs, it trims once more when done.  A no-op where there is no ``malloc_trim``
    (not glibc).

    :func:`_keep_freed_buffers` lets each arena keep up to :data:`KEEP_FREED` of freed
    memory, and the main arena's heap shrinks only from its top: after 40 uploads that
    stalled with their bodies half read had ended, the daemon stayed at about 350 MiB (95 at
    rest), freed but kept (docs/benchmarks.md).  The RPC API calls this as its uploads end
    (:class:`ww.serve.rpc.RpcApi`).  A trim that gave 200 MiB back took 21 ms, off the
    event loop and without the interpreter lock (``ctypes`` releases it); what it costs
    after is the next upload's first buffers faulted in again."""
    trim = heap.trimmer()
    if trim is None:
        return
    with _Trim.lock:
        _Trim.wanted = True
        if _Trim.running:
            return
        _Trim.running = True

    def trim_until_done() -> None:
        while True:
            with _Trim.lock:
                if not _Trim.wanted:
                    _Trim.running = False
                    return
                _Trim.wanted = False
            trim()

    try:
        trio.lowlevel.start_thread_soon(trim_until_done, lambda _: None, name="ww-malloc-trim")
    except BaseException:
        with _Trim.lock:  # no thread: the next call tries again
            _Trim.running = False
        raise


def _copy_bodies_once() -> None:
    """Make h11 hand a request body's bytes over with one copy out of its receive buffer.

    h11's ``ReceiveBuffer.maybe_extract_at_most`` (each piece of a body it parses) slices the
    buffer once to see whether it is empty, drops that slice, and slices it again, a
    ``bytearray`` which hypercorn then copies into ``bytes`` (``bytes(event.data)``): three
    copies of each byte on the event loop, under the interpreter lock.  This one copies the
    buffer's first ``count`` bytes once, into ``bytes`` (which hypercorn's ``bytes()`` then
    returns as they are), and otherwise does what h11's does (docs/benchmarks.md).
    """
    from h11._receivebuffer import ReceiveBuffer

    ReceiveBuffer()._data  # noqa: B018 -- read first: should h11 rename it, this raises

    def maybe_extract_at_most(self: ReceiveBuffer, count: int) -> bytes | None:
        data = self._data
        if not data:
            return None
        with memoryview(data) as view, view[:count] as head:
            out = bytes(head)
        del data[:len(out)]
        self._next_line_search = 0
        self._multiple_lines_search = 0
        return out

    ReceiveBuffer.maybe_extract_at_most = maybe_extract_at_most  # type: ignore[method-assign]
