// Browser check of the spark-control pages, driven by playwright-core on Debian's chromium.
//
//   node tests/browser/pages.mjs <base-url> <host-alias> <out-dir>
//
// Opens /hosts, presses Probe on the host's tile, waits for the job panel's SSE log to show the
// "done" event, screenshots /hosts, /jobs and /jobs/<id> (whose replayed log must reach "done"
// too), then /hosts again at phone width (390x844). Prints one JSON summary on stdout
// ({ok, console_errors, job_id, screenshots, ...}); progress goes to stderr. Exits 1 on any
// failed check, console error, page error or HTTP error response; 2 on bad usage.

import { PHONE, session } from './harness.mjs';

const DONE_TIMEOUT_MS = 20_000;

const [base, alias, outDir] = process.argv.slice(2);
if (!base || !alias || !outDir) {
  process.stderr.write('usage: node pages.mjs <base-url> <host-alias> <out-dir>\n');
  process.exit(2);
}

const h = session('pages.mjs', base, outDir, { alias, job_id: null });
const { summary, log, check, url, cssId, watch, shot, checkNoOverflow } = h;


/** Wait until the log under `scope` holds a "done" event; fail early on failed/cancelled. */
async function waitForDone(page, scope, what) {
  const done = `${scope} .log .ev-done`;
  const bad = `${scope} .log .ev-error`;
  try {
    await page.waitForSelector(`${done}, ${bad}`, { timeout: DONE_TIMEOUT_MS });
  } catch {
    const text = await page.locator(`${scope} .log`).innerText().catch(() => '<no log element>');
    check(`${what}: log reaches done within ${DONE_TIMEOUT_MS / 1000} s`, false, `log: ${JSON.stringify(text)}`);
  }
  if (await page.locator(bad).count()) {
    const text = await page.locator(`${scope} .log`).innerText();
    check(`${what}: log reaches done`, false, `error event instead: ${JSON.stringify(text)}`);
  }
  const kinds = await page.locator(`${scope} .log .ev .badge`).allInnerTexts();
  check(`${what}: log reaches done`, kinds.at(-1) === 'done', `kinds ${kinds.join(',')}`);
  return kinds;
}

await h.run(async (browser, track) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(DONE_TIMEOUT_MS);
  const page = await context.newPage();
  track(page);
  watch(page, 'desktop');

  // /hosts: the tile, its Probe button, the live job panel.
  const resp = await page.goto(url('/hosts'), { waitUntil: 'load' });
  check('/hosts answers 200', resp.status() === 200, `status ${resp.status()}`);
  const tile = page.locator(`#host-${cssId(alias)}`);
  check('host tile is shown', await tile.isVisible());
  const heading = (await tile.locator('h2').innerText()).trim();
  check('host tile names the alias', heading === alias, `h2 ${JSON.stringify(heading)}`);
  const htmxLoaded = await page.evaluate(() => typeof window.htmx === 'object' && window.htmx !== null);
  check('htmx is loaded', htmxLoaded);

  await tile.getByRole('button', { name: 'Probe' }).click();
  const panel = `#panel-${cssId(alias)}`;
  await page.waitForSelector(`${panel} .job-panel`);
  const kinds = await waitForDone(page, panel, 'panel on /hosts');
  check('panel log shows accepted, started, done', kinds.join(',') === 'accepted,started,done', kinds.join(','));

  const href = await page.locator(`${panel} .job-head a[href^="/jobs/"]`).getAttribute('href');
  summary.job_id = decodeURIComponent(href.slice('/jobs/'.length));
  check('panel links to its job', Boolean(summary.job_id), href);
  const summaryText = await page.locator(`${panel} .log .ev-done .summary`).innerText().catch(() => '');
  check('done event shows the probe summary', summaryText.startsWith('probe ok:'), JSON.stringify(summaryText));
  // The final event refreshes the tile and the job header in place (out-of-band swaps).
  const badge = await tile.locator('.tile-head .badge').innerText();
  check('tile turns up after the probe', badge.trim() === 'up', `badge ${JSON.stringify(badge)}`);
  const tileText = await tile.innerText();
  check('tile shows the probed GPU', tileText.includes('NVIDIA GB10'), 'GPU name missing from tile');
  const headState = await page.locator(`${panel} .job-head .badge`).innerText();
  check('job header shows succeeded', headState.trim() === 'succeeded', `state ${JSON.stringify(headState)}`);
  await shot(page, 'hosts.png');

  // /jobs: the job is listed.
  await page.goto(url('/jobs'), { waitUntil: 'load' });
  const row = page.locator(`#jobrow-${cssId(summary.job_id)}`);
  check('/jobs lists the job', await row.isVisible());
  const state = (await row.locator('.badge').innerText()).trim();
  check('/jobs shows the job succeeded', state === 'succeeded', `state ${state}`);
  await shot(page, 'jobs.png');

  // /jobs/<id>: the log is replayed from the bus up to done.
  const jobResp = await page.goto(url(href), { waitUntil: 'load' });
  check('/jobs/<id> answers 200', jobResp.status() === 200, `status ${jobResp.status()}`);
  const replayed = await waitForDone(page, `#job-${cssId(summary.job_id)}`, 'job page replay');
  check('job page replays accepted, started, done', replayed.join(',') === 'accepted,started,done', replayed.join(','));
  await shot(page, 'job.png');
  await page.close();

  // Phone width: /hosts (now with the probe result) must fit 390 px.
  const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
  phone.setDefaultTimeout(DONE_TIMEOUT_MS);
  const mobile = await phone.newPage();
  track(mobile);
  watch(mobile, 'phone');
  await mobile.goto(url('/hosts'), { waitUntil: 'load' });
  check('phone: host tile is shown', await mobile.locator(`#host-${cssId(alias)}`).isVisible());
  await checkNoOverflow(mobile, 'phone /hosts');
  await shot(mobile, 'hosts-phone.png');
  await mobile.close();
  await phone.close();
}, 'failure.png');
