"""HTTP faces of the node for ww daemon: the kubo RPC API and the trustless gateway."""
