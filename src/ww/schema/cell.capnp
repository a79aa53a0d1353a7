@0xc324ade3d29e5715;
# The protocol between `ww run` (the host) and a cell, spoken over fd 3.
#
# fd 3 in every cell is one end of an AF_UNIX/SOCK_STREAM socket pair carrying Cap'n Proto
# two-party RPC (rpc-twoparty.capnp, side "client" for the cell).  The host serves exactly
# one bootstrap capability on it: `Host`.  A cell has no other way to reach anything outside
# its jail; everything it may do is a capability it obtained through `Host.login`.
#
# Compatibility: ordinals are never renumbered; new capabilities are new fields of `Session`
# and new methods are appended, so old cells keep working against newer hosts.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ww::cell");

using Ipfs = import "ipfs.capnp";

interface Host {
  # The bootstrap capability on fd 3.

  login @0 (account :Signer) -> (session :Session);
  # Authenticate and obtain the capabilities the operator granted to this cell.
  #
  # Without an identity, pass a null `account`: when the operator configured no identity
  # (no `--identity`, `--allow` or `--policy`), the host answers with a session holding
  # exactly what `ww run --with-*` granted.  With an identity, pass a `Signer`: the host calls
  # `account.sign` once with a fresh 32-byte random nonce, checks the signature, derives the
  # cell's peer id from the public key, and answers with the capabilities its policy gives
  # that peer id (see docs/auth.md).  A failed login (no identity where one is required, a
  # bad signature, a key the policy does not know, no answer in time) is an exception whose
  # description starts with "authentication failed: "; the host then stops the cell and
  # `ww run` exits 64.

  identity @1 () -> (key :Data);
  # The private key the operator handed this cell with `ww run --identity`, in libp2p's
  # protobuf encoding (what `ww idgen --raw` writes), or empty data when there is none.
  # It is handed out once, and only before the first login: a second call, or a call after
  # login, fails.  The key never appears in the cell's environment or file system.
}
interface Signer {
  # Implemented by a cell that has an identity.  The host calls it during `Host.login`,
  # exactly once per login, with a nonce it never uses again.

  sign @0 (challenge :Data) -> (publicKey :Data, signature :Data);
  # `challenge` is a fresh random nonce.  The cell must sign the domain-separated message
  # "ww-login-v1\x00" ++ challenge with its Ed25519 key and return its public key (libp2p
  # protobuf encoding) together with the 64-byte signature.  Signing the bare nonce, or
  # answering with another challenge's signature, fails the login.
}

struct Session {
  # What the operator granted.  A capability that was not granted is a null pointer: test
  # for it before use (calling a null capability fails with a "null capability" error).
  # `granted` names the non-null fields, for cells and for logs.

  granted @0 :List(Text);
  # Names of the capabilities present, e.g. ["console", "ipfs"].

  console @1 :Console;
  # `--with-console` (or `--with-all`): write lines on the operator's terminal.

  ipfs @2 :Ipfs.IPFS;
  # `--with-ipfs` (or `--with-all`): the IPFS Core API, see ipfs.capnp.

  p2p @3 :P2P;
  # `--with-p2p` (or `--with-all`): serve this cell to remote peers, call theirs (docs/p2p.md).

  exec @4 :Executor;
  # `--with-exec` (or `--with-all`): start sub-cells in jails of their own (docs/auth.md).
}

interface Console {
  # The smallest useful capability: the cell speaks to the operator.

  println @0 (line :Text) -> ();
  # Write `line` and a newline on the host's standard error, prefixed with "[cell] ".

  ping @1 (payload :Data) -> (payload :Data);
  # Echo `payload` back unchanged: a liveness check and a measure of the RPC round trip.
}

interface Executor {
  # `--with-exec`: start sub-cells.  Each child is a `ww run` of its own, in its own jail,
  # with the parent's resource limits and no more authority than the parent hands it.  When
  # the parent cell exits or hangs up fd 3, its children are killed.

  spawn @0 (executable :Text, args :List(Text), env :List(Text), grant :Grant)
        -> (process :Process);
  # `executable` is an "/ipfs/<cid>[/path]" path, or an absolute local path the operator
  # allowed (`ww run --exec-allow PATH`); `args` follow it unchanged.  `env` entries are
  # "NAME=VALUE" (the child sees only these).  `grant` names the subset of the caller's own
  # capabilities the child gets; asking for more than the caller holds fails with
  # "capability denied: ...".  The child's stdin, stdout and stderr are pipes, reached through
  # the returned `Process`.
}

struct Grant {
  # Capabilities handed down to a sub-cell: each must be held by the caller, and a narrowed
  # capability stays at least as narrow.

  console @0 :Bool;
  ipfs @1 :Bool;
  ipfsReadOnly @2 :Bool;
  # The child's IPFS refuses everything but cat, ls, stat and resolve.  Forced on when the
  # caller's own IPFS is read-only.
  ipfsRoots @3 :List(Text);
  # Limit the child's IPFS to the DAGs under these CIDs or paths, each of which must lie
  # within the caller's own roots.  Empty: the caller's own roots (if any).
  exec @4 :Bool;
  # The child may spawn sub-cells of its own, from the same allowed executables.
}

interface Process {
  # A running sub-cell.

  stdin @0 () -> (stream :ByteWriter);
  stdout @1 () -> (stream :ByteReader);
  stderr @2 () -> (stream :ByteReader);
  # The child's standard streams.  The child blocks when its output pipe is full and
  # nobody reads: read what you do not need, or the child may never finish.

  wait @3 () -> (status :Int32);
  # The child's exit status, as `ww run` reports it: its own status, 128+n if killed by
  # signal n, 64/65 for authentication or capability failures, and so on.

  kill @4 (signum :Int32) -> ();
  # Send SIGINT (2), SIGHUP (1), SIGTERM (15) or SIGKILL (9) to the child; others are refused.
}

interface ByteReader {
  read @0 (count :UInt32) -> (data :Data);
  # Up to `count` bytes (at most 1 MiB per call), waiting for at least one; empty data
  # means end of stream.
}

interface ByteWriter {
  write @0 (data :Data) -> ();
  # Append bytes; returns when the pipe has taken them.
  close @1 () -> ();
  # End of stream: the child reads end-of-file.
}

interface P2P {
  # `--with-p2p`: this cell as a service on the libp2p network.  The host speaks TCP + Noise
  # + Yamux under its node key ($WW_HOME), and serves protocol "/ww/0.1.0": Cap'n Proto
  # two-party RPC on the stream, whose bootstrap capability is a `Gateway` (see docs/p2p.md).

  export @0 (service :Capability) -> ();
  # Serve `service` to remote peers: each one that opens "/ww/0.1.0" to this host gets
  # exactly this capability (through `Gateway.service`), nothing of the host's own.  Replaces
  # any earlier export; a null `service` withdraws it.  The export ends, and remote
  # connections to it are closed, when the cell hangs up fd 3 or exits.  A cell that wants to
  # be callable from the shell (`ww call`) exports a `Service`.

  dial @1 (addr :Text) -> (service :Capability);
  # Reach the cell of the peer at `addr` and return the capability it exports.  `addr` is
  # "/ip4/<address>/tcp/<port>/p2p/<peer id>" (or "/ip6/..."), or just the peer id of a peer
  # this host is already connected to (`ww run --join`).  Cast the result to the interface
  # the remote cell documents.  Fails with a one-line "p2p: ..." reason: unreachable, no
  # answer within 10 s, or nothing exported there.

  id @2 () -> (peerId :Text, addrs :List(Text));
  # This host's peer id and the addresses it listens on, each ending in "/p2p/<peer id>":
  # what a remote peer dials to reach this cell's export.
}

interface Gateway {
  # The bootstrap capability of every "/ww/0.1.0" stream: the one door to the one
  # capability the host's cell exports.  (pycapnp can only bootstrap an object the host
  # implements itself, so the export is one call away rather than the bootstrap itself.)

  service @0 () -> (service :Capability);
  # The capability the cell exported with `P2P.export`.  Fails with "p2p: ... exports
  # nothing" when the cell has not exported one (or has withdrawn it).
}

interface Service {
  # A small generic interface for cells that want to be called from the shell: `ww call
  # ADDR METHOD [ARGS...]` calls `call(METHOD, ARGS)` on the remote cell's export and prints
  # `result`.  Its methods and their arguments are the exporting cell's own convention.

  call @0 (method :Text, args :List(Text)) -> (result :Text);
  # Run `method` with `args`; an unknown method or bad arguments should fail with a one-line
  # reason, which `ww call` shows the operator.
}
