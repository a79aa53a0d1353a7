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

using Ipfs = import "ipfs.capnp";

interface Host {
  # The bootstrap capability on fd 3.

  login @0 (account :Signer) -> (session :Session);
  # Authenticate and obtain the capabilities the operator granted to this cell.
  #
  # Today no credentials are needed: pass a null `account` (the cell has no identity) and the
  # host answers with a session holding exactly what `ww run --with-*` granted.  When the host
  # is configured with an identity policy, it calls `account.sign` with a fresh random nonce
  # and verifies the signature before answering; a failed login is an exception and the host
  # then drops the connection.
}

interface Signer {
  # Implemented by a cell that has an identity.  The host calls it during `Host.login`.

  sign @0 (challenge :Data) -> (publicKey :Data, signature :Data);
  # `challenge` is a fresh random nonce.  The cell must sign the domain-separated message
  # "ww-login-v1\x00" ++ challenge with its Ed25519 key and return its public key (libp2p
  # protobuf encoding) together with the 64-byte signature.
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
}

interface Console {
  # The smallest useful capability: the cell speaks to the operator.

  println @0 (line :Text) -> ();
  # Write `line` and a newline on the host's standard error, prefixed with "[cell] ".

  ping @1 (payload :Data) -> (payload :Data);
  # Echo `payload` back unchanged: a liveness check and a measure of the RPC round trip.
}
