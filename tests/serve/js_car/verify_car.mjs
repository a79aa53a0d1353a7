// Read a CAR with @ipld/car (a stream, as it comes), recompute each block's hash and compare
// it with its CID; print {"version", "roots", "blocks": [CID, ...]} as JSON. Exit 1 on the
// first block that does not match, or a CAR @ipld/car refuses.
import fs from 'node:fs'
import { CarBlockIterator } from '@ipld/car/iterator'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'

const blocks = await CarBlockIterator.fromIterable(fs.createReadStream(process.argv[2]))
const roots = await blocks.getRoots()
const seen = []
for await (const { cid, bytes } of blocks) {
  if (cid.multihash.code !== sha256.code) {
    console.error(`block ${cid}: hash function 0x${cid.multihash.code.toString(16)} is not sha2-256`)
    process.exit(1)
  }
  const digest = await sha256.digest(bytes)
  if (!equals(digest.digest, cid.multihash.digest)) {
    console.error(`block ${cid} does not hash to its CID`)
    process.exit(1)
  }
  seen.push(cid.toString())
}
console.log(JSON.stringify({ version: blocks.version, roots: roots.map(String), blocks: seen }))
