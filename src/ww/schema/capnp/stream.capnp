@0x86c366a91393f3f8;
# Cap'n Proto's standard "/capnp/stream.capnp" (same IDs), which `-> stream` methods in
# ipfs.capnp implicitly import.  It ships here so that `ww schema`'s directory alone is a
# complete import path (pycapnp's `capnp.load(..., imports=[dir])` needs nothing else); a
# Cap'n Proto installation's own copy is equivalent.

annotation namespace @0xb9c6f99ebf805f2c (file) :Text;
# The ID of C++'s `$Cxx.namespace` (c++.capnp), declared here so that this file imports
# nothing: C++ code generated from it names the type `::capnp::StreamResult`, as the
# standard file does.
$namespace("capnp");

struct StreamResult @0x995f9a3377c0b16e {
  # The empty result of a stream method: on the wire `write @0 (...) -> stream` is exactly
  # `write @0 (...) -> ()`.  Implementations that know streaming deliver a capability's
  # stream calls to the server one at a time, in order, and give clients flow control.
}
