// Browser check of the dashboard pages (overview, connectivity, transfers, settings) against the
// stack, driven by playwright-core on Debian's chromium.
//
//   node tests/browser/dashboard.mjs <base-url> <second-base-url> <host-alias> <repo> <out-dir>
//
// Overview: the hour replayed at start is an SVG line; two Probes from the tile add samples
// (the tile redrawn over the overview's SSE stream). Connectivity: prints "READY outage" on stderr
// and waits for the driving test to take the host's sshd down and up again; the page must show
// the outage and its transitions without a reload, and an open overview its tile down, then up. Transfers: downloads <repo> from the form
// (confirmed), its progress (rate, then 100 %) in place and in the list. Settings: saves
// health_poll_s = 9 and sees the second web front's open page show it applied. Then every page at phone width
// (no horizontal overflow). One JSON summary on stdout; exit 1 on any failed check, console or
// HTTP error; 2 on bad usage.

import { PHONE, session } from './harness.mjs';

const WAIT_MS = 30_000;
const PAGES = ['/', '/connectivity', '/transfers', '/settings'];

const [base, base2, alias, repo, outDir] = process.argv.slice(2);
if (!base || !base2 || !alias || !repo || !outDir) {
  process.stderr.write('usage: node dashboard.mjs <base-url> <second-base-url> <host-alias> <repo> <out-dir>\n');
  process.exit(2);
}

const h = session('dashboard.mjs', base, outDir, { alias, download_job: null });
const { summary, log, check, url, cssId, watch, shot, checkNoOverflow } = h;

async function waitOr(page, selector, what, timeout = WAIT_MS, state = 'visible') {
  try {
    await page.waitForSelector(selector, { timeout, state });
  } catch {
    check(what, false, `${selector} not seen within ${timeout / 1000} s`);
  }
  check(what, true);
}

await h.run(async (browser, track) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  track(page);
  watch(page, 'desktop');
  page.on('dialog', (d) => d.accept());

  // --- overview: the tile, two probes, a sparkline drawn live ------------------------------
  const resp = await page.goto(url('/'), { waitUntil: 'load' });
  check('/ answers 200 (the overview, not a redirect)', resp.status() === 200 && new URL(page.url()).pathname === '/', page.url());
  const tile = `#ov-${cssId(alias)}`;
  check('overview shows the host tile', await page.locator(tile).isVisible());
  check('overview shows the services and the swap lock', await page.locator('.lock-banner').isVisible());
  // the history the front replayed from SPARK_EVT at start (four probes 20 min ago)
  await waitOr(page, `${tile} svg.spark polyline`, 'replayed hour drawn as an SVG line', WAIT_MS, 'attached');
  const points = await page.locator(`${tile} svg.spark polyline`).first().getAttribute('points');
  check('the line has several points', points.trim().split(/\s+/).length >= 3, points);
  const count = async () => Number(((await page.locator(`${tile} .samples`).innerText()).match(/\d+/) || ['0'])[0]);
  const before = await count();
  check('the tile counts the replayed samples', before >= 4, String(before));
  for (let i = 1; i <= 2; i += 1) {
    await page.locator(`${tile} button`, { hasText: 'Probe' }).click();
    await waitOr(page, `#ov-panel-${cssId(alias)} .log .ev-done`, `probe ${i} reaches done`);
  }
  // the tile is redrawn over the overview's SSE stream: two more samples, the newest a dot
  await page.waitForFunction(
    ([sel, n]) => { const m = document.querySelector(sel)?.innerText.match(/\d+/); return m && Number(m[0]) >= n; },
    [`${tile} .samples`, before + 2], { timeout: WAIT_MS },
  ).catch(() => {});
  const after = await count();
  check('two probes later the tile shows two more samples (live)', after >= before + 2, `${before} → ${after}`);
  check('the new samples are drawn', await page.locator(`${tile} svg.spark circle`).count() >= 1);
  const badge = (await page.locator(`${tile} .tile-head .badge`).innerText()).trim();
  check('tile says up', badge === 'up', badge);
  await shot(page, 'overview.png');

  // --- connectivity: an outage appears without a reload -------------------------------------
  await page.goto(url('/connectivity'), { waitUntil: 'load' });
  const subj = `#subj-host-${cssId(alias)}`;
  check('connectivity lists the host', await page.locator(subj).isVisible());
  check('no outage yet', (await page.locator(subj).getAttribute('data-outages')) === '0');
  const ov = await context.newPage(); // the overview, open through the outage
  watch(ov, 'overview during the outage');
  await ov.goto(url('/'), { waitUntil: 'load' });
  const turnsDown = ov.waitForSelector(`${tile} .ov-body.is-down`, { state: 'attached', timeout: 60_000 })
    .then(() => true, () => false);
  await page.waitForTimeout(300); // let the SSE connections open before the outage
  log('READY outage');
  process.stderr.write('READY outage\n');
  await waitOr(page, `${subj}[data-outages="1"][data-state="up"]`, 'the outage, over, shows on the timeline (live)', 60_000);
  check('the overview tile turned down during the outage (live)', await turnsDown);
  await waitOr(ov, `${tile} .ov-body:not(.is-down) .badge.up`, 'and up again after it');
  await ov.close();
  check('the outage is drawn as a bar', await page.locator(`${subj} svg.outages rect.down`).count() === 1);
  const rows = await page.locator('table.transitions tbody tr').allInnerTexts();
  check('transitions list down then up', rows.length >= 2 && /\bup\b/.test(rows[0]) && /\bdown\b/.test(rows[1]), JSON.stringify(rows.slice(0, 3)));
  await shot(page, 'connectivity.png');

  // --- transfers: a download's progress in place and in the list ----------------------------
  await page.goto(url('/transfers'), { waitUntil: 'load' });
  await page.locator('.download-form select[name=host]').selectOption(alias);
  await page.locator('.download-form input[name=repo]').fill(repo);
  await page.locator('.download-form button[type=submit]').click();
  await waitOr(page, '#download-out .transfer', 'the download shows in place');
  summary.download_job = await page.locator('#download-out .transfer').getAttribute('data-job');
  await waitOr(page, '#download-out .transfer .rate', 'progress shows a rate while running');
  await waitOr(page, '#download-out .transfer[data-state="succeeded"]', 'the download succeeds in place', 60_000);
  const pct = (await page.locator('#download-out .transfer .pct').innerText()).trim();
  check('in place: 100 %', pct === '100 %', pct);
  const listed = `#transfers .transfer[data-job="${summary.download_job}"][data-state="succeeded"]`;
  await waitOr(page, listed, 'the list shows it succeeded (live)');
  await shot(page, 'transfers.png');

  // --- settings: saved here, applied on the second web front (its open page follows) -------
  const other = await context.newPage();
  watch(other, 'second front');
  await other.goto(new URL('/settings', base2).toString(), { waitUntil: 'load' });
  const otherState = '#setting-state-health_poll_s';
  check('second front starts at the file value', (await other.locator(`${otherState} .applied`).innerText()).trim() === '15.0');
  await page.goto(url('/settings'), { waitUntil: 'load' });
  await page.waitForTimeout(300); // the second page's stream is open by now
  await page.locator('#value-health_poll_s').fill('9');
  await page.locator('#setting-health_poll_s button[type=submit]').click();
  await waitOr(page, '#setting-out-health_poll_s .saved', 'saved note');
  const here = (await page.locator('#setting-state-health_poll_s .applied').innerText()).trim();
  check('applied on this web front', here === '9.0', here);
  await shot(page, 'settings.png');
  await other.waitForFunction(
    (sel) => document.querySelector(sel)?.innerText.trim() === '9.0', `${otherState} .applied`, { timeout: WAIT_MS },
  ).catch(() => {});
  const there = (await other.locator(`${otherState} .applied`).innerText()).trim();
  const stored = (await other.locator(`${otherState} .stored`).innerText()).trim();
  check('applied on the second web front, its open page updated live', there === '9.0', there);
  check('the second front reads it from the bucket', stored.startsWith('9.0'), stored);
  await other.close();
  await page.close();

  // --- phone width ---------------------------------------------------------------------------
  const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
  phone.setDefaultTimeout(WAIT_MS);
  const mobile = await phone.newPage();
  track(mobile);
  watch(mobile, 'phone');
  for (const p of PAGES) {
    await mobile.goto(url(p), { waitUntil: 'load' });
    await checkNoOverflow(mobile, `phone ${p}`);
  }
  await mobile.goto(url('/'), { waitUntil: 'load' });
  check('phone: sparklines in the tile', await mobile.locator(`${tile} svg.spark polyline`).count() >= 1);
  await shot(mobile, 'overview-phone.png');
  await mobile.close();
  await phone.close();
}, 'dashboard-failure.png');
