"""What one narrowed IPFS capability may do: read-only, and/or only the DAGs under some roots.

A path is within the roots when its first component (the CID it starts from) is a root or a
file, directory or symlink reachable from one through directory entries.  Reachability is
worked out lazily, by listing directories under the roots breadth-first as far as a question
needs, an entry at a time, and remembered; a walk stops after :data:`MAX_WALK` entries, in
the middle of a directory if need be, after which a CID not yet seen is refused (a path
starting at the root itself always works, however large the DAG).
CIDs are compared in their CIDv1 form, so ``Qm...`` and ``bafy...`` of one node match.
The walk runs in the capability's worker threads (never on the RPC event loop), one at a
time per scope, and stops between two ``ls`` calls when the call it serves is cancelled.

Pins under roots: pinning only adds, but unpinning lets ``gc`` delete content, and the pin
set is shared with the operator and every other cell.  So a roots-limited capability may
``unpin`` only the pins it made itself (``own_pins``: CIDs that its ``pin``, or its ``add``
with ``pin``, newly pinned in this session, shared with the capabilities narrowed from it);
anything pinned before, by the operator or anyone else, it cannot unpin.
"""

from __future__ import annotations

import collections
import itertools
import threading
import weakref
from collections.abc import Iterable, Iterator

from ww.core.cid import CID
from ww.ipfs.api import CallCancelled, CoreAPI, Entry, EntryType, IpfsError, current_token
from ww.ipfs.path import parse_path

READ_METHODS = frozenset({"cat", "ls", "stat", "resolve", "attenuate"})
MAX_WALK = 100_000
CELL_WALKS = 4
"""The entries the walks of one cell's scopes take together, at most, in units of
:data:`MAX_WALK`: what a scope learns stays as long as it lives (some 120 bytes a CID), and
a cell narrows its capability as often as it likes.  (Found by attack) 12 scopes, each
walked over 100,000 distinct CIDs, held the host at 181 MB; some 24 reached its guard.  A
scope gives its share back when it is gone, and an idle scope's is taken from it (what its
walk found forgotten, to be walked again if asked) when another needs it."""
WALK_SHARE = 1024
"""The entries a walk takes of the cell's bound at a time: a scope that needs a few makes
no other forget all it found."""


class WalkBudget:
    """What the walks of one cell's scopes may still take (entries), shared by them all.

    What a walk found is a cache of what is reachable: a scope that needs more than is left
    makes the least recently walked idle scopes forget theirs and takes their shares.
    (Found by attack) first come, first served, a scope kept its share as long as it lived:
    a peer holding a capability the cell exported over a large DAG narrowed it
    :data:`CELL_WALKS` times, walked each and kept them, and every other scope of the cell,
    its own granted one included, refused whatever within its roots it had not yet seen,
    for as long as the peer liked."""

    __slots__ = ("left", "_lock", "_walkers", "_gone")

    def __init__(self, left: int | None = None) -> None:
        self.left = CELL_WALKS * MAX_WALK if left is None else left
        self._lock = threading.Lock()
        # the scopes that took a share, the least recently walked first
        self._walkers: collections.OrderedDict[int, weakref.ref[IpfsScope]] = \
            collections.OrderedDict()
        self._gone: list[tuple[list[int], int]] = []  # shares of scopes gone, to take back

    def take(self, want: int, scope: IpfsScope | None = None) -> int:
        with self._lock:
            self._take_back()
            walking = []  # met on the way, kept (at most one a worker, and this one)
            while scope is not None and self.left < want and self._walkers:
                key, other = self._walkers.popitem(last=False)
                idle = other()
                forgot = 0 if idle is None else None if idle is scope else idle.forget()
                if forgot is None:
                    walking.append((key, other))
                else:  # forgotten (or gone): let go, it holds nothing
                    self.left += forgot
            self._walkers.update(walking)
            got = max(0, min(want, self.left))
            self.left -= got
            if scope is not None and got:
                self._walkers[id(scope)] = weakref.ref(scope)
                self._walkers.move_to_end(id(scope))
            return got

    def give(self, count: int) -> None:
        with self._lock:
            self.left += count
            self._take_back()

    def gone(self, taken: list[int], scope: int) -> None:
        """A scope is gone, what it had ``taken`` with it.  Its finalizer calls this, in
        whatever thread the collector runs, maybe within :meth:`take` holding the lock: so
        it takes none, and the share is taken back at the next :meth:`take` or :meth:`give`."""
        self._gone.append((taken, scope))

    def _take_back(self) -> None:
        while self._gone:
            taken, scope = self._gone.pop()
            self.left += taken[0]
            self._walkers.pop(scope, None)


def canonical(cid: str | CID) -> str:
    """The CIDv1 text of a CID, the form scopes compare."""
    return str((cid if isinstance(cid, CID) else CID.parse(cid)).to_v1())


class IpfsScope:
    """The limits of one IPFS capability; ``roots`` empty means any DAG."""

    def __init__(self, api: CoreAPI, read_only: bool = False, roots: Iterable[str] = (),
                 own_pins: set[str] | None = None, walks: WalkBudget | None = None) -> None:
        self._api = api
        self.read_only = read_only
        self.roots: tuple[str, ...] = tuple(dict.fromkeys(canonical(r) for r in roots))
        # CIDv1 texts this session newly pinned: the only pins a roots-limited scope unpins.
        self.own_pins: set[str] = own_pins if own_pins is not None else set()
        self._known: set[str] = set(self.roots)
        # directories to walk, each with the entries of it already taken (a walk stopped
        # within it by the cell's bound takes it up there once the cell has room again)
        self._todo: collections.deque[tuple[str, int]] = collections.deque(
            (root, 0) for root in self.roots)
        self._walked = 0
        self._walking = threading.Lock()
        # the cell's walks, shared with the scopes narrowed from this one; what this one took
        # goes back when it is gone
        self._walks = walks if walks is not None else WalkBudget()
        self._taken = [0]
        weakref.finalize(self, self._walks.gone, self._taken, id(self))

    def denied(self, method: str, path: str | None = None) -> str | None:
        """Why ``method`` on ``path`` is outside this scope, or None if it is allowed."""
        if self.read_only and method not in READ_METHODS:
            return "this IPFS capability is read-only (cat, ls, stat and resolve only)"
        if path is not None:
            return self.path_denied(path)
        return None

    def path_denied(self, path: str) -> str | None:
        if not self.roots:
            return None
        try:
            root = parse_path(path).root
        except IpfsError as e:
            return f"{path!r}: {e}"
        if self.contains(root):
            return None
        return f"{path} is outside the DAGs this capability is limited to"

    def contains(self, cid: str | CID) -> bool:
        """Is ``cid`` a root or reachable from one?"""
        if not self.roots:
            return True
        key = canonical(cid)
        if key in self._known:
            return True
        token = current_token()
        with self._walking:
            while key not in self._known and self._todo and self._walked < MAX_WALK:
                token.check()
                if not self._expand(*self._todo.popleft()):
                    break  # the cell's bound, held by scopes walking now
            return key in self._known

    def forget(self) -> int | None:
        """Forget what the walk found unless it is walking now (None) (to be walked again
        if asked); the entries it had taken, given up (:class:`WalkBudget`)."""
        if not self._walking.acquire(blocking=False):
            return None
        try:
            taken, self._taken[0] = self._taken[0], 0
            if taken:
                self._known = set(self.roots)
                self._todo = collections.deque((root, 0) for root in self.roots)
                self._walked = 0
            return taken
        finally:
            self._walking.release()

    def _expand(self, directory: str, skip: int = 0) -> bool:
        """Take ``directory``'s entries, read one at a time and no further than
        :data:`MAX_WALK` in all, keeping the CIDs not seen yet until the listing ends.
        (Found by attack) the whole listing was held before the bound was looked at: a
        cell's HAMT of a million entries (18 MB of blocks), its capability narrowed to it
        four times, and a `cat` outside on each: the host grew past its guard, which hung
        up fd 3 (one walk: 13 s and 197 MiB).  The first ``skip`` entries were taken before.
        False if no entry could be taken (the cell's bound is reached).

        (Found by attack) a walk stopped within a directory by the cell's bound
        (:data:`CELL_WALKS`), or finding none of it left, let that directory go: once
        another scope gave its share back, the rest of it was refused for good, though
        within the roots and this scope's own bound."""
        bound = MAX_WALK - self._walked
        room = self._walks.take(min(WALK_SHARE, bound), self)  # more as it goes
        if room == 0:
            self._todo.appendleft((directory, skip))
            return False
        taken = 0
        more = False
        found: dict[str, bool] = {}  # new CIDs (v1 text): is each a directory; kept if it ends
        listing: Iterator[Entry] = iter(())
        try:
            listing = self._api.iter_ls(directory)
            for entry in itertools.islice(listing, skip, None):
                if taken == room and taken < bound:
                    room += self._walks.take(min(WALK_SHARE, bound - taken), self)
                if taken == room:
                    more = True
                    break  # the bound: what is past it stays unseen (till there is room)
                taken += 1
                key = canonical(entry.cid)
                if key not in self._known:
                    found[key] = found.get(key, False) or entry.type is EntryType.DIRECTORY
        except CallCancelled:
            self._walks.give(room)
            self._todo.appendleft((directory, skip))  # not walked: the next question walks it
            raise
        except IpfsError:
            self._walks.give(room)
            return True  # not available locally: nothing under it can be shown to be reachable
        finally:
            close = getattr(listing, "close", None)
            if close is not None:
                close()  # stopped at the bound: a kubo reply let go
        self._walks.give(room - taken)
        self._taken[0] += taken
        self._walked += taken
        self._known.update(found)
        self._todo.extend((key, 0) for key, is_directory in found.items() if is_directory)
        if more:
            self._todo.appendleft((directory, skip + taken))
        return True

    def own_pin(self, path: str) -> str | None:
        """The CIDv1 text of ``path`` if it is one of this session's own pins, else None."""
        parsed = parse_path(path)
        if not parsed.segments:
            key = canonical(parsed.root)
        elif self.path_denied(path) is None:  # resolve only paths it may read
            key = canonical(self._api.resolve(path))
        else:
            return None
        return key if key in self.own_pins else None

    def pinned(self, cid: str, before: set[str]) -> None:
        """Record ``cid`` as this session's own pin unless it was in ``before``."""
        key = canonical(cid)
        if key not in before:
            self.own_pins.add(key)

    def pinned_now(self) -> set[str]:
        """The CIDv1 texts of every pin right now (to tell which pins a call adds)."""
        return {canonical(cid) for cid in self._api.pins()}

    def narrowed(self, read_only: bool, roots: Iterable[str]) -> IpfsScope:
        """A scope at most as wide as this one.  ``roots`` must already be checked to be
        within this scope (:meth:`path_denied`) and resolved to CIDs; empty keeps ours.
        It shares this scope's own pins (one session's)."""
        roots = list(roots)
        return IpfsScope(self._api, self.read_only or read_only, roots or self.roots,
                         self.own_pins, self._walks)
