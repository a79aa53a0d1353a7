"""Choosing the IPFS backend: the embedded node, or a kubo node's RPC API (``--ipfs``)."""

from __future__ import annotations

from ww.ipfs.api import CoreAPI


def open_backend(api: str | None = None, *, check: bool = False) -> CoreAPI:
    """The embedded node in ``$WW_HOME`` when ``api`` is empty, else a kubo RPC client.

    With ``check``, a kubo node is asked for its identity first, so that an unreachable
    address fails now with one BackendUnavailableError line instead of on first use.
    """
    if not api:
        from ww.ipfs.node import EmbeddedNode

        return EmbeddedNode()
    from ww.ipfs.kubo import KuboClient

    client = KuboClient(api)
    if check:
        client.id()
    return client
