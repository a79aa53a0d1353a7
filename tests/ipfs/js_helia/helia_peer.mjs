// A Helia node (helia's light core, js-libp2p, @helia/bitswap): TCP + Noise + Yamux on
// 127.0.0.1 only, no bootstrap list, no discovery, no routing but Bitswap.  JSON lines on
// stdin/stdout: {"op":"id"}, {"op":"add","path":P}, {"op":"dial","addr":A},
// {"op":"cat","cid":C,"dest":P,"seconds":S}.
import { createInterface } from "node:readline";
import { readFileSync, writeFileSync } from "node:fs";
import { createHeliaLight } from "helia";
import { withLibp2pLight } from "@helia/libp2p";
import { withBitswap } from "@helia/bitswap";
import { unixfs } from "@helia/unixfs";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";

const helia = withBitswap(withLibp2pLight(createHeliaLight(), {
  addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() },
}));
await helia.start();
const fs = unixfs(helia);

async function handle(req) {
  if (req.op === "id") {
    return { id: helia.libp2p.peerId.toString(),
             addrs: helia.libp2p.getMultiaddrs().map(String) };
  }
  if (req.op === "add") {
    const cid = await fs.addBytes(readFileSync(req.path), { rawLeaves: false, cidVersion: 0 });
    return { cid: cid.toString() };
  }
  if (req.op === "dial") {
    await helia.libp2p.dial(multiaddr(req.addr));
    return { ok: true };
  }
  if (req.op === "cat") {
    const parts = [];
    for await (const chunk of fs.cat(CID.parse(req.cid),
                                     { signal: AbortSignal.timeout(req.seconds * 1000) })) {
      parts.push(chunk);
    }
    writeFileSync(req.dest, Buffer.concat(parts));
    return { ok: true };
  }
  return { error: `unknown op ${req.op}` };
}

console.log(JSON.stringify({ ready: true }));
for await (const line of createInterface({ input: process.stdin })) {
  const req = JSON.parse(line);
  handle(req).then((r) => console.log(JSON.stringify({ tag: req.tag, ...r })),
                   (e) => console.log(JSON.stringify({ tag: req.tag, error: String(e) })));
}
await helia.stop();
process.exit(0);
