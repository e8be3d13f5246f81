// Drives the real @actions/artifact client (the one upload-artifact and
// download-artifact use) against a Satchel server. Run by the Rust
// end-to-end test `gha_protocol` with ACTIONS_RESULTS_URL and
// ACTIONS_RUNTIME_TOKEN from `satchel admin gha-token`.
//
//   node conformance.mjs v2|v6 WORKDIR [round-trip|retries|overwrite-writer|overwrite-reader]
//
// round-trip (the default): upload, list, get, download, raw upload, delete.
// retries: a FinalizeArtifact whose answer is lost, and one that fails, each
//   followed by the client's own retry (through a proxy that breaks them).
// overwrite-writer / overwrite-reader: two jobs of one run (each with its
//   own token); the writer replaces an artifact again and again as
//   upload-artifact's `overwrite: true` does (delete, then upload) while
//   the reader downloads it in a loop, checking every download is one
//   version whole, with its digest.
//
// Exits non-zero, with the reason on stderr, on the first failed check.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import crypto from 'node:crypto';
import assert from 'node:assert/strict';

const [which, workdir, mode = 'round-trip'] = process.argv.slice(2);
const mod = which === 'v2' ? await import('artifact-v2') : await import('artifact-v6');
const Client = mod.DefaultArtifactClient ?? mod.default.DefaultArtifactClient;
const client = Client ? new Client() : mod.default;
const name = `bundle-${which}`;

function log(...a) { console.log(`[${which} ${mode}]`, ...a); }

// Version k of the overwritten artifact: a tag file and 6 MiB whose bytes
// all say k, so a download mixing versions, or cut short, shows.
const OVERWRITTEN = 'overwritten';
const VERSIONS = 4;
function versionFiles(k) {
  const dir = path.join(workdir, `version-${k}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'version.txt'), `${k}\n`);
  fs.writeFileSync(path.join(dir, 'payload.bin'), Buffer.alloc(6 << 20, k));
  return { dir, files: ['version.txt', 'payload.bin'].map(f => path.join(dir, f)) };
}
const progressFile = () => path.join(workdir, 'reader-progress.json');
const readProgress = () => {
  try { return JSON.parse(fs.readFileSync(progressFile(), 'utf8')); } catch { return { seen: {} }; }
};
const waitFor = async (what, ok) => {
  for (let i = 0; i < 1200; i++) {
    if (ok()) return;
    if (fs.existsSync(path.join(workdir, 'reader-failed'))) throw new Error(`the reader failed while waiting for ${what}`);
    await new Promise(r => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
};

if (mode === 'retries') {
  await retries();
  log('all checks passed');
  process.exit(0);
}
if (mode === 'overwrite-writer' || mode === 'overwrite-reader') {
  await (mode === 'overwrite-writer' ? overwriteWriter() : overwriteReader());
  log('all checks passed');
  process.exit(0);
}

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

// A proxy in front of the server that breaks the FinalizeArtifact calls
// `plan` names, in order: 'lose' forwards the call and answers 502 (the
// server finalized; the client never hears), 'refuse' answers 400 without
// forwarding (the client gives up, as on a failed step).
async function retries() {
  const upstream = new URL(process.env.ACTIONS_RESULTS_URL);
  const plan = [];
  const proxy = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const action = req.url.endsWith('/FinalizeArtifact') ? plan.shift() : undefined;
    if (action === 'refuse') {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ code: 'invalid_argument', msg: 'injected failure' }));
      return;
    }
    const headers = { ...req.headers };
    for (const h of ['host', 'connection', 'content-length', 'transfer-encoding']) delete headers[h];
    const r = await fetch(new URL(req.url, upstream), {
      method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined,
    });
    const body = Buffer.from(await r.arrayBuffer());
    if (action === 'lose') {
      log('finalize answered', r.status, 'by the server; the client gets 502');
      res.writeHead(502);
      res.end('injected: the answer was lost');
      return;
    }
    res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
    res.end(body);
  });
  await new Promise(ok => proxy.listen(0, '127.0.0.1', ok));
  process.env.ACTIONS_RESULTS_URL = `http://127.0.0.1:${proxy.address().port}/`;
  const src = path.join(workdir, `retries-${which}`);
  fs.mkdirSync(src, { recursive: true });
  const file = path.join(src, 'data.txt');
  fs.writeFileSync(file, `retried by ${which}\n`);

  // The server finalized, the answer was lost: the retry gets the same id.
  plan.push('lose');
  const lost = await client.uploadArtifact(`lost-${which}`, [file], src);
  assert.equal(plan.length, 0, 'the finalize went through the proxy');
  const got = await client.getArtifact(`lost-${which}`);
  assert.equal(got.artifact.id, lost.id, 'the retried finalize answers the same artifact');

  // A finalize that failed holds no name: the step's retry takes it over.
  plan.push('refuse');
  await assert.rejects(client.uploadArtifact(`refused-${which}`, [file], src), /injected failure/);
  const again = await client.uploadArtifact(`refused-${which}`, [file], src);
  const listed = (await client.listArtifacts()).artifacts.filter(a => a.name === `refused-${which}`);
  assert.deepEqual(listed.map(a => a.id), [again.id], 'one artifact, the retry');
  const out = path.join(workdir, `retries-out-${which}`);
  const dl = await client.downloadArtifact(again.id, { path: out, expectedHash: listed[0].digest });
  assert.equal(dl.digestMismatch ?? false, false);
  assert.equal(fs.readFileSync(path.join(out, 'data.txt'), 'utf8'), `retried by ${which}\n`);
  proxy.close();
}

// upload-artifact's `overwrite: true`: delete if it exists, then upload.
async function overwrite(files, dir) {
  try {
    await client.deleteArtifact(OVERWRITTEN);
  } catch (e) {
    if (e.name !== 'ArtifactNotFoundError') throw e;
  }
  await client.uploadArtifact(OVERWRITTEN, files, dir);
}

async function overwriteWriter() {
  // (Another job's earlier version may be there: this replaces it too.)
  const v0 = versionFiles(0);
  await overwrite(v0.files, v0.dir);
  fs.writeFileSync(path.join(workdir, 'ready'), '');
  await waitFor('the reader\'s first download', () => readProgress().seen['0'] > 0);
  for (let k = 1; k <= VERSIONS; k++) {
    const v = versionFiles(k);
    const before = readProgress().downloads ?? 0;
    await overwrite(v.files, v.dir);
    log('overwrote with version', k, 'while the reader had done', before, 'downloads');
    await waitFor(`the reader to see version ${k}`, () => readProgress().seen[String(k)] > 0);
  }
  fs.writeFileSync(path.join(workdir, 'stop'), '');
}

async function overwriteReader() {
  try {
    await readInLoop();
  } catch (e) {
    fs.writeFileSync(path.join(workdir, 'reader-failed'), String(e));
    throw e;
  }
}

async function readInLoop() {
  await waitFor('the first version', () => fs.existsSync(path.join(workdir, 'ready')));
  const progress = { downloads: 0, seen: {} };
  for (let i = 0; !fs.existsSync(path.join(workdir, 'stop')); i++) {
    const { artifact } = await client.getArtifact(OVERWRITTEN);
    const out = path.join(workdir, `read-${i}`);
    const dl = await client.downloadArtifact(artifact.id, { path: out, expectedHash: artifact.digest });
    assert.equal(dl.digestMismatch ?? false, false, `download ${i}: digest mismatch`);
    const k = Number(fs.readFileSync(path.join(out, 'version.txt'), 'utf8'));
    const payload = fs.readFileSync(path.join(out, 'payload.bin'));
    assert.equal(payload.length, 6 << 20, `download ${i}: payload cut short`);
    assert.ok(payload.every(b => b === k), `download ${i}: payload mixes versions (tag ${k})`);
    fs.rmSync(out, { recursive: true });
    progress.downloads += 1;
    progress.seen[k] = (progress.seen[k] ?? 0) + 1;
    fs.writeFileSync(progressFile() + '.tmp', JSON.stringify(progress));
    fs.renameSync(progressFile() + '.tmp', progressFile());
  }
  log('downloads per version', JSON.stringify(progress.seen));
  for (let k = 0; k <= VERSIONS; k++) assert.ok(progress.seen[k] > 0, `version ${k} was seen`);
}
