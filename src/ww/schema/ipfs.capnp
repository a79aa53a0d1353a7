@0xdc09f4384ba48ea3;
# The IPFS capability: kubo's Core API as a Cap'n Proto interface.
#
# Paths are text: "/ipfs/<cid>[/sub/path]" or "<cid>[/sub/path]".  CIDs are returned in their
# canonical string form (CIDv0 "Qm...", CIDv1 base32 "b...").  Errors are Cap'n Proto
# exceptions whose description is one line fit for a user.
#
# Large data moves in bounded pieces in both directions: `add` returns a `Writer` the cell
# pushes chunks into, `cat` returns a `Reader` the cell pulls chunks from.  A cell may keep
# several calls in flight (pipelining) for throughput; the host never buffers a whole file.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ww::ipfs");

interface IPFS {
  add @0 (options :AddOptions) -> (writer :Writer);
  # Start adding one file.  Write its bytes with `writer.write`, then `writer.done` gives
  # the CID.  The result is identical to kubo's `ipfs add` with the same options.

  cat @1 (path :Text, offset :UInt64, length :Int64) -> (reader :Reader);
  # Read a file from byte `offset`; `length` < 0 means to the end.

  ls @2 (path :Text) -> (entries :List(Entry));
  # The entries of a directory, in the order the directory stores them.

  stat @3 (path :Text) -> (info :NodeInfo);

  resolve @4 (path :Text) -> (cid :Text);
  # "/ipfs/<cid>/a/b" -> the CID of b.

  pin @5 (path :Text, recursive :Bool = true) -> ();
  unpin @6 (path :Text) -> ();
  pins @7 () -> (cids :List(Text));

  id @8 () -> (info :PeerInfo);
  connect @9 (addr :Text) -> ();
  # Dial a peer by multiaddr.  The embedded node is offline and refuses.
  peers @10 () -> (peers :List(PeerInfo));

  attenuate @11 (readOnly :Bool, roots :List(Text)) -> (ipfs :IPFS);
  # A narrower IPFS capability over the same node; this one is unchanged.  `readOnly`
  # leaves only cat, ls, stat and resolve.  `roots` (CIDs or paths) limits every path to the
  # DAGs under them; each root must itself be within this capability's roots.  Empty
  # `roots` keeps this capability's own.  Nothing can be widened: a read-only capability
  # stays read-only.
  #
  # A call outside a capability's grant fails with a description that starts with
  # "capability denied: " (the SDK raises it as `ww.cell.CapabilityDenied`).
}

struct AddOptions {
  cidVersion @0 :UInt8 = 0;       # 1 implies raw leaves, as in kubo
  rawLeaves @1 :RawLeaves = default;
  pin @2 :Bool = true;
  onlyHash @3 :Bool = false;      # compute the CID, store nothing

  enum RawLeaves {
    default @0;                   # kubo's rule: raw leaves iff cidVersion = 1
    yes @1;
    no @2;
  }
}

interface Writer {
  write @0 (data :Data) -> stream;
  # Append bytes.  Calls are applied in the order they were sent, one at a time: a stream
  # method, so a caller with many writes in flight waits (flow control) and is never refused.
  # (On the wire a stream method is one returning an empty struct: a client compiled with
  # `-> ()` works unchanged.)
  done @1 () -> (cid :Text);
  # Finish the file and return its CID.  Dropping the writer without `done` discards it.
}

interface Reader {
  read @0 (count :UInt32) -> (data :Data);
  # Up to `count` bytes (at most 4 MiB per call); empty data means end of file.
}

enum EntryType {
  file @0;
  directory @1;
  symlink @2;
}

struct Entry {
  name @0 :Text;
  type @1 :EntryType;
  size @2 :UInt64;
  cid @3 :Text;
}

struct Link {
  name @0 :Text;
  size @1 :UInt64;
  cid @2 :Text;
}

struct NodeInfo {
  cid @0 :Text;
  type @1 :EntryType;
  size @2 :UInt64;            # file bytes; 0 for a directory; target length for a symlink
  cumulativeSize @3 :UInt64;  # the whole DAG's encoded size
  links @4 :List(Link);       # a directory's entries
  target @5 :Text;            # a symlink's target
}

struct PeerInfo {
  id @0 :Text;
  addresses @1 :List(Text);
  protocols @2 :List(Text);
}
