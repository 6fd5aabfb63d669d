#!/usr/bin/env node
// Reference CIDs for ofnode's tests: imports each FILE with the official
// js UnixFS importer, configured like `ipfs add --cid-version 1` in kubo
// (256 KiB fixed chunks, raw leaves, balanced DAG with 174 links per node,
// a single-chunk file reduced to its raw leaf), and prints one root CID per
// line, in argument order.
//
// Options (before the files):
//   --json              print one JSON object per file instead:
//                         {"root": "<cid>", "blocks": {"<cid>": <encoded size>, ...}}
//                       so a test can compare every block, not only the root
//   --chunk-size=N      chunk size in bytes (default 262144)
//   --max-children=N    links per node (default 174)
// The last two exist so tests can build deep trees from small files; with
// anything but the defaults the CIDs are not the ones kubo gives.
import { createReadStream } from 'node:fs'
import { BlackHoleBlockstore } from 'blockstore-core'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

function parseArgs (argv) {
  const opts = { json: false, chunkSize: 262144, maxChildren: 174, files: [] }
  for (const arg of argv) {
    const [flag, value] = arg.split('=', 2)
    if (opts.files.length > 0 || !arg.startsWith('--')) opts.files.push(arg)
    else if (flag === '--json') opts.json = true
    else if (flag === '--chunk-size') opts.chunkSize = positiveInt(flag, value)
    else if (flag === '--max-children') opts.maxChildren = positiveInt(flag, value)
    else usage(`unknown option ${arg}`)
  }
  if (opts.files.length === 0) usage('no FILE given')
  return opts
}

function positiveInt (flag, value) {
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 1) usage(`${flag} needs a positive integer`)
  return n
}

function usage (message) {
  process.stderr.write(`cid.mjs: ${message}\nusage: node cid.mjs [--json] [--chunk-size=N] [--max-children=N] FILE...\n`)
  process.exit(2)
}

class RecordingBlockstore extends BlackHoleBlockstore {
  constructor () {
    super()
    this.blocks = {}
  }

  put (key, value, options) {
    this.blocks[key.toString()] = value.length
    return super.put(key, value, options)
  }
}

async function cidOf (path, blockstore, opts) {
  const options = {
    cidVersion: 1,
    rawLeaves: true,
    chunker: fixedSize({ chunkSize: opts.chunkSize }),
    layout: balanced({ maxChildrenPerNode: opts.maxChildren }),
    reduceSingleLeafToSelf: true,
    wrapWithDirectory: false
  }
  let root
  for await (const entry of importer([{ content: createReadStream(path) }], blockstore, options)) {
    root = entry.cid
  }
  if (root == null) throw new Error(`nothing imported from ${path}`)
  return root.toString()
}

const opts = parseArgs(process.argv.slice(2))
for (const path of opts.files) {
  const blockstore = new RecordingBlockstore()
  const root = await cidOf(path, blockstore, opts)
  process.stdout.write(opts.json ? JSON.stringify({ root, blocks: blockstore.blocks }) + '\n' : root + '\n')
}
