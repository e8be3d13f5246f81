// Drives the real @actions/artifact client (the one upload-artifact and
// download-artifact use) against a Satchel server. Run by the Rust
// end-to-end test `gha_protocol` with ACTIONS_RESULTS_URL and
// ACTIONS_RUNTIME_TOKEN from `satchel admin gha-token`.
//
//   node conformance.mjs v2|v6 WORKDIR
//
// Exits non-zero, with the reason on stderr, on the first failed check.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import assert from 'node:assert/strict';

const [which, workdir] = process.argv.slice(2);
const mod = which === 'v2' ? await import('artifact-v2') : await import('artifact-v6');
const Client = mod.DefaultArtifactClient ?? mod.default.DefaultArtifactClient;
const client = Client ? new Client() : mod.default;
const name = `bundle-${which}`;

function log(...a) { console.log(`[${which}]`, ...a); }

// A directory with a small file, a nested one, and one over 24 MiB so the
// upload takes several blocks, which arrive concurrently and out of order.
const src = path.join(workdir, `src-${which}`);
fs.mkdirSync(path.join(src, 'nested/deeper'), { recursive: true });
fs.writeFileSync(path.join(src, 'hello.txt'), `hello from ${which}\n`);
fs.writeFileSync(path.join(src, 'nested/deeper/data.json'), JSON.stringify({ which, n: 42 }));
const big = crypto.randomBytes(25 * 1024 * 1024 + 12345);
fs.writeFileSync(path.join(src, 'nested/big.bin'), big);
const files = ['hello.txt', 'nested/deeper/data.json', 'nested/big.bin'].map(f => path.join(src, f));

const up = await client.uploadArtifact(name, files, src, { retentionDays: 1 });
log('uploaded', JSON.stringify(up));
assert.ok(up.id > 0, 'upload returns a positive id');
assert.ok(up.size > big.length / 2, 'upload reports the size');

// Listing, and getting by name.
const listed = await client.listArtifacts();
log('listed', JSON.stringify(listed.artifacts.map(a => a.name)));
const mine = listed.artifacts.find(a => a.name === name);
assert.ok(mine, 'the artifact is listed');
assert.equal(mine.id, up.id, 'listed id equals uploaded id');
assert.equal(mine.size, up.size);
assert.ok(mine.createdAt instanceof Date && !isNaN(mine.createdAt), 'createdAt parses');
const got = await client.getArtifact(name);
assert.equal(got.artifact.id, up.id);
if (up.digest) {
  assert.equal(got.artifact.digest, `sha256:${up.digest}`, 'digest is the sha256 of the upload');
}

// Download with the expected hash; files must be identical.
const out = path.join(workdir, `out-${which}`);
const dl = await client.downloadArtifact(up.id, { path: out, expectedHash: got.artifact.digest });
log('downloaded', JSON.stringify(dl));
assert.equal(dl.digestMismatch ?? false, false, 'no digest mismatch');
assert.equal(fs.readFileSync(path.join(out, 'hello.txt'), 'utf8'), `hello from ${which}\n`);
assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'nested/deeper/data.json'))), { which, n: 42 });
assert.ok(fs.readFileSync(path.join(out, 'nested/big.bin')).equals(big), 'big file identical');

// A second upload with the same name in the run is refused (409).
await assert.rejects(
  client.uploadArtifact(name, [files[0]], src),
  e => { log('duplicate refused:', e.message.split('\n')[0]); return e.message.includes('(409)'); },
  'duplicate name is refused'
);

// Raw upload (6.x skipArchive): one file, named after it, stored as is.
if (which === 'v6') {
  const raw = path.join(workdir, 'report.txt');
  fs.writeFileSync(raw, 'raw report\n');
  const r = await client.uploadArtifact('ignored', [raw], workdir, { skipArchive: true });
  const g = await client.getArtifact('report.txt');
  assert.equal(g.artifact.id, r.id);
  const rawOut = path.join(workdir, 'raw-out');
  await client.downloadArtifact(r.id, { path: rawOut, expectedHash: g.artifact.digest });
  assert.equal(fs.readFileSync(path.join(rawOut, 'report.txt'), 'utf8'), 'raw report\n');
  log('raw upload ok');
}

// Keep one artifact for the CLI to download; delete a scratch one.
const tmpName = `scratch-${which}`;
await client.uploadArtifact(tmpName, [files[0]], src);
const del = await client.deleteArtifact(tmpName);
log('deleted', JSON.stringify(del));
const after = await client.listArtifacts();
assert.ok(!after.artifacts.some(a => a.name === tmpName), 'deleted artifact is gone');
await assert.rejects(client.getArtifact(tmpName), 'deleted artifact cannot be fetched');
log('all checks passed');
