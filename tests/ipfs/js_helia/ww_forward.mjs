// A js-libp2p peer (libp2p 3 with TCP, Noise, Yamux and identify; nobody here wrote it) that
// carries each TCP connection made to a port of its own on 127.0.0.1 to a ww cell, on a
// `/ww/0.1.0` stream to the ww host, as kubo's `ipfs p2p forward` does.
//   node --import ./node20.mjs ww_forward.mjs KEYTYPE ADDR
// KEYTYPE: Ed25519, RSA or secp256k1 (the peer's identity); ADDR: the ww host's full
// address.  It listens nowhere for libp2p, has no bootstrap list and no discovery: it dials
// ADDR only.  It prints {"ready": true, "port": P, "id": ID}, then answers JSON lines on
// stdin: {"op": "protocols"} -> what identify learnt the host serves ([] if it learnt
// nothing); {"op": "dial"} -> "" or why a /ww/0.1.0 stream could not be opened;
// {"op": "connections"} -> its open connections to the host.  Stdin's end stops it.
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import { createLibp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { multiaddr } from "@multiformats/multiaddr";
import { peerIdFromString } from "@libp2p/peer-id";

const [type, addr] = process.argv.slice(2);
const privateKey = await generateKeyPair(type, type === "RSA" ? 2048 : undefined);
const node = await createLibp2p({
  privateKey,
  addresses: { listen: [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() },
});
await node.start();
const target = multiaddr(addr);
const peer = peerIdFromString(addr.split("/p2p/")[1]);

function carry(sock, stream) {
  sock.on("data", (data) => {
    if (!stream.send(data)) {
      sock.pause();
      stream.onDrain().then(() => sock.resume(), () => sock.destroy());
    }
  });
  sock.on("end", () => { stream.close().catch(() => {}); });
  sock.on("error", () => { stream.abort(new Error("the local connection failed")); });
  sock.resume();
  (async () => {
    for await (const chunk of stream) {
      if (!sock.write(chunk.subarray())) {
        await new Promise((resolve) => sock.once("drain", resolve));
      }
    }
    sock.end();
  })().catch(() => sock.destroy());
}

const server = createServer((sock) => {
  sock.pause();
  node.dialProtocol(target, "/ww/0.1.0").then((stream) => carry(sock, stream), (e) => {
    process.stderr.write(`ww_forward: dial: ${e}\n`);
    sock.destroy();
  });
});

async function handle(req) {
  if (req.op === "protocols") {
    try {
      const known = await node.peerStore.get(peer);
      return { protocols: known.protocols };
    } catch {
      return { protocols: [] };
    }
  }
  if (req.op === "dial") {  // a /ww/0.1.0 stream opened and closed: "" or why it failed
    try {
      const stream = await node.dialProtocol(target, "/ww/0.1.0");
      await stream.close();
      return { failure: "" };
    } catch (e) {
      return { failure: String(e) };
    }
  }
  if (req.op === "connections") {
    return { connections: node.getConnections().filter((c) => c.remotePeer.equals(peer))
      .length };
  }
  return { error: `unknown op ${req.op}` };
}

server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ ready: true, port: server.address().port,
                               id: node.peerId.toString() }));
});
for await (const line of createInterface({ input: process.stdin })) {
  const req = JSON.parse(line);
  handle(req).then((r) => console.log(JSON.stringify({ tag: req.tag, ...r })),
                   (e) => console.log(JSON.stringify({ tag: req.tag, error: String(e) })));
}
server.close();
await node.stop();
process.exit(0);
