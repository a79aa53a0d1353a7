"""The HTTP faces of the embedded node, which `ww daemon` serves (issue 13).

* :mod:`ww.serve.rpc` -- kubo's RPC API (``/api/v0``) as an ASGI app;
* :mod:`ww.serve.gateway` -- the trustless (and path) gateway, ``/ipfs/<cid>[/path]``;
* :mod:`ww.serve.server` -- hypercorn on trio, serving ASGI apps each on its own addresses
  until told to stop.

The layer sits beside :mod:`ww.caps` (``cli > app > caps | serve > host | p2p > ipfs >
core``): it serves the node to HTTP clients as the capability servers serve it to cells.
"""
