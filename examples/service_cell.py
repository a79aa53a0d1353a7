#!/usr/bin/env python3
"""A cell that exports a `Service` on /ww/0.1.0, for `ww call` or other cells to call.

    ww run --with-p2p --listen /ip4/127.0.0.1/tcp/0 examples/service_cell.py
    ww call <the address it prints> echo hello world

Methods: echo ARGS... (joins them), upper ARGS... (the same, upper-cased), peers (the
addresses to dial this cell).  It serves until its stdin ends (Ctrl-D) or it is stopped.
"""

import asyncio
import os

import ww.cell


class Echo(ww.cell.Service.Server):
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def call(self, method, args, **kwargs):
        if method == "echo":
            return " ".join(args)
        if method == "upper":
            return " ".join(args).upper()
        if method == "peers":
            return "\n".join(self.addrs)
        raise ValueError(f"unknown method {method!r} (try echo, upper, peers)")


async def main() -> None:
    async with ww.cell.connect() as session:
        peer_id, addrs = await session.p2p.id()
        await session.p2p.export(Echo(addrs))
        for addr in addrs:
            print(addr, flush=True)
        # In a thread: stdin may be a file or /dev/null, which epoll (add_reader) refuses.
        await asyncio.to_thread(_until_eof)


def _until_eof() -> None:
    while os.read(0, 4096):
        pass


ww.cell.run(main())  # asyncio.run, on uvloop
