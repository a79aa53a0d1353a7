// Drives kubo's own JavaScript RPC client (npm kubo-rpc-client) against an RPC API:
//   node client.mjs <api url> <file> <directory> <car file>
// adds the file, the directory (as kubo's `ipfs add -r` names it) and the CAR, cats the
// file back, lists the directory, unpins and pins the file, lists the peers, measures the
// repository and collects its garbage; prints one JSON object.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { basename, dirname } from 'node:path'
import { create, globSource } from 'kubo-rpc-client'

const [api, file, dir, car] = process.argv.slice(2)
const client = create({ url: api })
const out = {}

const added = await client.add(readFileSync(file), { pin: true })
out.file = added.cid.toString()

const name = basename(dir)
const all = []
for await (const entry of client.addAll(globSource(dirname(dir), `${name}/**/*`))) {
  all.push({ path: entry.path, cid: entry.cid.toString() })
}
out.dir = all.find(e => e.path === name).cid
out.dirEntries = all

const roots = []
for await (const result of client.dag.import([readFileSync(car)])) {
  roots.push(result.root.cid.toString())
}
out.carRoots = roots

const chunks = []
for await (const chunk of client.cat(out.file)) chunks.push(chunk)
out.catSha256 = createHash('sha256').update(Buffer.concat(chunks)).digest('hex')
const part = []
for await (const chunk of client.cat(out.file, { offset: 10, length: 5 })) part.push(chunk)
out.catPart = Buffer.concat(part).toString('hex')

out.ls = []
for await (const entry of client.ls(out.dir)) {
  out.ls.push({ name: entry.name, cid: entry.cid.toString(), type: entry.type, size: entry.size })
}

const pinned = async (cid) => {
  for await (const pin of client.pin.ls({ type: 'recursive' })) {
    if (pin.cid.toString() === cid) return true
  }
  return false
}
out.pinnedAfterAdd = await pinned(out.file)
await client.pin.rm(out.file)
out.pinnedAfterRm = await pinned(out.file)
await client.pin.add(out.file)
out.pinnedAfterAdd2 = await pinned(out.file)
out.id = (await client.id()).id.toString()
out.version = (await client.version()).version
out.peers = (await client.swarm.peers()).length
const sizes = await client.repo.stat({ sizeOnly: true })
out.repoSize = Number(sizes.repoSize)
out.numObjects = Number((await client.repo.stat()).numObjects)
await client.pin.rm(out.file)
out.gc = []
for await (const result of client.repo.gc()) {
  out.gc.push(result.err ? `error: ${result.err.message}` : result.cid.toString())
}

console.log(JSON.stringify(out))
