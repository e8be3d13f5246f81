// Drives Debian's headless Chromium through Satchel's web UI with
// playwright-core: log in, browse pipeline → run → artifact → file, view a
// text file by lines and an HTML report in its sandbox, download a zip,
// follow a permalink, compare two runs, log out. Saves screenshots of the
// main pages. Started by crates/cli/tests/browser.rs, which uploads the
// artifacts first and checks the downloaded zip after.
//
// Environment: SATCHEL_URL, SATCHEL_TOKEN, SHOTS (a directory for the
// screenshots), DOWNLOADS (a directory for the zip).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.SATCHEL_URL;
const token = process.env.SATCHEL_TOKEN;
const shots = process.env.SHOTS;
const downloads = process.env.DOWNLOADS;
assert.ok(base && token && shots && downloads, 'SATCHEL_URL, SATCHEL_TOKEN, SHOTS and DOWNLOADS are needed');

const step = (what) => console.log(`== ${what}`);
const profile = mkdtempSync(join(tmpdir(), 'satchel-chromium-'));
// playwright passes the profile as --user-data-dir itself (a fresh one).
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  acceptDownloads: true,
  viewport: { width: 1200, height: 800 },
});
const page = ctx.pages()[0] ?? (await ctx.newPage());
page.setDefaultTimeout(20000);
// Whole pages, but long ones (a page of 1000 lines) as the screen shows them.
const shot = (name, fullPage = true) => page.screenshot({ path: join(shots, `${name}.png`), fullPage });
const h1 = () => page.locator('h1').first().innerText();
const link = (name) => page.getByRole('link', { name, exact: true });

try {
  step('a page without a session goes to the login form');
  await page.goto(`${base}/p/web`);
  assert.equal(new URL(page.url()).pathname, '/login');
  assert.equal(await h1(), 'Log in');
  await shot('login');

  step('a wrong token is refused');
  await page.fill('#token', 'not-a-token');
  await page.press('#token', 'Enter');
  await page.waitForLoadState();
  assert.match(await page.locator('main').innerText(), /not valid|wrong|refused|unknown/i);
  assert.equal((await ctx.cookies()).length, 0, 'no cookie for a wrong token');

  step('the right token logs in and returns to the page asked for');
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(`${base}/p/web`), page.press('#token', 'Enter')]);
  const cookie = (await ctx.cookies()).find((c) => c.name === 'satchel_session');
  assert.ok(cookie, 'a session cookie');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');

  step('the run page finds files by glob and scope');
  await page.goto(`${base}/p/web/runs/1`);
  await page.fill('input[name=query]', '**/*.css');
  await page.fill('input[name=name]', 'coverage');
  await Promise.all([page.waitForURL(/\/search\?/), page.getByRole('button', { name: 'Search' }).click()]);
  const found = await page.locator('main table tbody tr').allInnerTexts();
  assert.equal(found.length, 1, `one match: ${found}`);
  assert.match(found[0], /style\.css/);
  await shot('search');
  await page.fill('input[name=query]', 'nothing/**');
  await Promise.all([page.waitForURL(/nothing/), page.getByRole('button', { name: 'Search' }).click()]);
  assert.match(await page.locator('main').innerText(), /No files match/);

  step('an image artifact shows its reference with a copy button');
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await page.goto(`${base}/p/web/runs/1/artifacts/image`);
  const reference = await page.locator('#reference').innerText();
  assert.match(reference, /^registry\.example\/web:1\.0@sha256:/);
  await page.getByRole('button', { name: 'Copy' }).click();
  await page.getByRole('button', { name: 'Copied' }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), reference);

  step('packages by repository, with their versions');
  await Promise.all([page.waitForURL(`${base}/packages`), link('Packages').click()]);
  const repos = await page.locator('main table tbody tr').allInnerTexts();
  assert.deepEqual(repos.map((r) => r.split('\t')[0]), ['images', 'reports']);
  await Promise.all([page.waitForURL(`${base}/packages/reports`), link('reports').click()]);
  const versions = await page.locator('main').innerText();
  assert.match(versions, /coverage\s+1\.0\.0/);
  assert.match(versions, /web #1/);
  await shot('packages');

  step('pipelines → runs → run → artifact');
  await page.goto(`${base}/`);
  assert.equal(await h1(), 'Pipelines');
  await shot('pipelines');
  await Promise.all([page.waitForURL(`${base}/p/web`), link('web').click()]);
  assert.equal(await h1(), 'web');
  const runsText = await page.locator('main').innerText();
  assert.match(runsText, /passed/);
  assert.match(runsText, /failed/);
  await shot('runs');
  await Promise.all([page.waitForURL(`${base}/p/web/runs/1`), link('#1').click()]);
  assert.equal(await h1(), 'web #1');
  await shot('run');
  await Promise.all([page.waitForURL(/\/artifacts\/[0-9a-f]+$/), link('coverage').click()]);
  const coverageUrl = page.url();
  assert.equal(await h1(), 'coverage');
  await shot('artifact');

  step('the keyboard reaches the first file link');
  // Tab order: logo, log out, crumbs, downloads, then the files.
  let reached = false;
  for (let i = 0; i < 20 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement?.textContent === 'build.log');
  }
  assert.ok(reached, 'Tab reaches the link of build.log');
  await Promise.all([page.waitForURL(/\/lines\/build\.log$/), page.keyboard.press('Enter')]);

  step('a text file opens as numbered lines with anchors');
  assert.equal(await h1(), 'build.log');
  assert.equal(await page.locator('#L1 pre').innerText(), 'step 1 of 2500');
  assert.equal(await page.locator('table.lines tr').count(), 1000, 'one page of lines');
  await shot('text', false);
  await Promise.all([page.waitForURL(/start=1001$/), page.getByRole('link', { name: 'Next lines →' }).click()]);
  assert.equal(await page.locator('#L1001 pre').innerText(), 'step 1001 of 2500');
  // A line's own link: the page holding it, scrolled to it and marked.
  await page.locator('#L1042 td.ln a').click();
  await page.waitForURL(/#L1042$/);
  const marked = await page.evaluate(() => getComputedStyle(document.querySelector('#L1042')).backgroundColor);
  assert.notEqual(marked, 'rgba(0, 0, 0, 0)', 'the anchored line is highlighted');
  const lineLink = page.url();
  await page.goto('about:blank');
  await page.goto(lineLink);
  assert.equal(await page.locator(':target pre').innerText(), 'step 1042 of 2500');

  step('an HTML report opens in its sandbox, its relative CSS loaded');
  await page.goto(coverageUrl);
  await Promise.all([page.waitForURL(/\/view\/.*\/index\.html$/), link('index.html').click()]);
  await page.locator('#probe[data-done]').waitFor();
  const color = await page.evaluate(() => getComputedStyle(document.querySelector('h1')).color);
  assert.equal(color, 'rgb(204, 0, 0)', 'style.css, a relative link, applies');
  await shot('report');

  step('the report cannot read the session, the UI or the API');
  const probe = JSON.parse(await page.locator('#probe').innerText());
  console.log('probe:', JSON.stringify(probe));
  assert.equal(probe.origin, 'null', 'an opaque origin');
  assert.match(probe.cookie, /^blocked/, `document.cookie: ${probe.cookie}`);
  assert.match(probe.api, /^blocked/, `the API with the session: ${probe.api}`);
  assert.match(probe.ui, /^blocked/, `a UI page with the session: ${probe.ui}`);
  assert.match(probe.frame, /^blocked/, `the UI's DOM in a frame: ${probe.frame}`);
  assert.match(probe.storage, /^blocked/, `storage: ${probe.storage}`);
  // The same reads from the UI's own page succeed: the session is live, it
  // is the sandbox that stops them.
  await page.goto(`${base}/`);
  const own = await page.evaluate(async () => (await fetch('/', { credentials: 'include' })).status);
  assert.equal(own, 200, "the UI's own page reads itself with the session");

  step('the report links to its other pages');
  await page.goto(coverageUrl);
  await Promise.all([page.waitForURL(/\/view\/.*\/index\.html$/), link('index.html').click()]);
  await Promise.all([page.waitForURL(/\/sub\/page\.html$/), link('a deeper page').click()]);
  assert.equal(await page.locator('p').innerText(), 'deeper');

  step('the artifact downloads as a zip');
  await page.goto(coverageUrl);
  const [download] = await Promise.all([page.waitForEvent('download'), link('Download .zip').click()]);
  assert.equal(download.suggestedFilename(), 'coverage.zip');
  await download.saveAs(join(downloads, 'coverage.zip'));

  step('a permalink to the last successful build');
  await page.goto(`${base}/p/web/runs/lastSuccessfulBuild/artifacts/coverage`);
  assert.equal(page.url(), coverageUrl, 'run 1 passed, run 2 failed: run 1 is the last successful build');
  await page.goto(`${base}/p/web/runs/lastSuccessfulBuild`);
  assert.equal(await h1(), 'web #1');
  await page.goto(`${base}/p/web/runs/lastSuccessfulBuild/artifacts/coverage/files/notes.txt`);
  assert.equal(await page.locator('body').innerText(), 'run 1');

  step('two runs compared');
  await page.goto(`${base}/p/web/runs/2`);
  await page.fill('input[name=from]', 'web#1');
  await Promise.all([page.waitForURL(/\/diff\?/), page.getByRole('button', { name: 'Compare' }).click()]);
  assert.equal(await h1(), 'web#1 → web#2');
  const diffText = await page.locator('main').innerText();
  assert.match(diffText, /1 added, 1 removed, 2 changed/);
  await shot('diff');
  await Promise.all([page.waitForURL(/\/diff\/file\?/), link('diff').first().click()]);
  const unified = await page.locator('pre.diff').innerText();
  assert.match(unified, /^-run 1$/m);
  assert.match(unified, /^\+run 2$/m);
  await shot('file-diff');

  step('a narrow screen folds the secondary columns');
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(coverageUrl);
  assert.equal(await page.locator('th', { hasText: 'SHA-256' }).isVisible(), false);
  assert.equal(await page.locator('th', { hasText: 'Path' }).isVisible(), true);
  await shot('artifact-narrow');
  await page.setViewportSize({ width: 1200, height: 800 });

  step('logout ends the session');
  await Promise.all([page.waitForURL(`${base}/login`), page.getByRole('button', { name: 'Log out' }).click()]);
  assert.equal((await ctx.cookies()).length, 0, 'the cookie is gone');
  await page.goto(`${base}/`);
  assert.equal(new URL(page.url()).pathname, '/login');
  console.log('all browser checks passed');
} catch (e) {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(`failed at ${page.url()}:`);
  throw e;
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
