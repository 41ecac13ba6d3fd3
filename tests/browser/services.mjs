// Browser check of the spark-control services page and the swap-lock banner, driven by
// playwright-core on Debian's chromium.
//
//   node tests/browser/services.mjs <base-url> <service-name> <out-dir>
//
// Opens /services, presses Start on the service (accepting any confirm dialog), waits for the job
// panel's SSE log to reach `done` and the status cell to say running (an out-of-band swap of the
// final event), presses Status and waits for `done` again; screenshot services.png. Then takes
// the swap lock through the API as "browser-test", opens /models, presses Force release (the
// confirm dialog's text is recorded) and waits for the banner to say free. Then /services at
// phone width (390x844): services-phone.png. Prints one JSON summary on stdout ({ok,
// console_errors, dialogs, screenshots, ...}); progress goes to stderr. Exits 1 on any failed
// check, console error, page error or HTTP error response; 2 on bad usage.

import { PHONE, session } from './harness.mjs';

const STEP_TIMEOUT_MS = 20_000;
const JOB_TIMEOUT_MS = 60_000;
const HOLDER = 'browser-test';

const [base, service, outDir] = process.argv.slice(2);
if (!base || !service || !outDir) {
  process.stderr.write('usage: node services.mjs <base-url> <service-name> <out-dir>\n');
  process.exit(2);
}

const h = session('services.mjs', base, outDir, { service, dialogs: [] });
const { summary, log, check, url, cssId, shot, checkNoOverflow } = h;

/** The harness's error watching, plus every confirm dialog recorded and accepted. */
function watch(page, label) {
  h.watch(page, label);
  page.on('dialog', async (d) => {
    summary.dialogs.push(d.message());
    log(`dialog ${d.type()}: ${d.message()}`);
    await d.accept();
  });
}


/** Press the row's button and wait for a new job panel whose log ends with done. */
async function runOp(page, row, out, label) {
  const before = await page.locator(`${out} .job-panel`).getAttribute('id').catch(() => null);
  await row.getByRole('button', { name: label, exact: true }).click();
  await page.waitForFunction(
    ([sel, prev]) => {
      const p = document.querySelector(`${sel} .job-panel`);
      return p && p.id !== prev;
    },
    [out, before],
  );
  try {
    await page.waitForSelector(`${out} .log .ev-done, ${out} .log .ev-error`, { timeout: JOB_TIMEOUT_MS });
  } catch {
    const text = await page.locator(`${out} .log`).innerText().catch(() => '<no log element>');
    check(`${label}: log reaches done within ${JOB_TIMEOUT_MS / 1000} s`, false, `log: ${JSON.stringify(text)}`);
  }
  const kinds = await page.locator(`${out} .log .ev .badge`).allInnerTexts();
  check(`${label}: log ends with done`, kinds.at(-1) === 'done', `kinds ${kinds.join(',')}`);
  check(`${label}: log starts with accepted`, kinds[0] === 'accepted', `kinds ${kinds.join(',')}`);
  const head = (await page.locator(`${out} .job-head .badge`).innerText()).trim();
  check(`${label}: job header shows succeeded`, head === 'succeeded', `state ${JSON.stringify(head)}`);
}

await h.run(async (browser, track) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  track(page);
  watch(page, 'desktop');

  const resp = await page.goto(url('/services'), { waitUntil: 'load' });
  check('/services answers 200', resp.status() === 200, `status ${resp.status()}`);
  check('htmx is loaded', await page.evaluate(() => typeof window.htmx === 'object' && window.htmx !== null));
  const row = page.locator(`#service-row-${cssId(service)}`);
  check('service row is shown', await row.isVisible());
  const out = `#svc-out-${cssId(service)}`;
  const cell = page.locator(`#svc-status-${cssId(service)}`);
  check('banner says the lock is free', (await page.locator('#lock-banner').innerText()).includes('free'));

  await runOp(page, row, out, 'Start');
  const started = (await cell.innerText()).trim();
  check('status cell says running after Start', started.includes('running') && started.includes('start'), JSON.stringify(started));
  await runOp(page, row, out, 'Status');
  const statused = (await cell.innerText()).trim();
  check('status cell refreshed by Status', statused.includes('running') && statused.includes('status'), JSON.stringify(statused));
  const greyed = page.locator('tr.service-row.unconfigured');
  check('services on unconfigured hosts are greyed', (await greyed.count()) > 0);
  check('their buttons are disabled', await greyed.first().getByRole('button', { name: 'Start', exact: true }).isDisabled());
  await page.locator(`${out} .log`).evaluate((el) => { el.scrollTop = 0; });
  await shot(page, 'services.png');

  // The lock: taken through the API, force-released from the /models banner.
  const took = await fetch(url('/api/swap/lock'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ holder: HOLDER, note: 'browser run', ttl_seconds: 600 }),
  });
  check('lock acquired through the API', took.status === 200, `status ${took.status}`);
  await page.goto(url('/models'), { waitUntil: 'load' });
  const banner = page.locator('#lock-banner');
  const held = await banner.innerText();
  check('models banner names the holder', held.includes('held') && held.includes(HOLDER), JSON.stringify(held));
  await banner.getByRole('button', { name: 'Force release' }).click();
  await page.waitForFunction(() => {
    const b = document.querySelector('#lock-banner');
    return b && b.textContent.includes('free') && !b.textContent.includes('held');
  });
  check('confirm named the holder', summary.dialogs.at(-1) === `Release the lock held by ${HOLDER}? Their swaps will no longer be protected.`, JSON.stringify(summary.dialogs));
  check('one banner after the swap', (await page.locator('#lock-banner').count()) === 1);
  const lock = await (await fetch(url('/api/swap/lock'))).json();
  check('the lock is free on the server', lock.held === false, JSON.stringify(lock));
  await page.close();

  // Phone width: the page fits 390 px (the table scrolls in its box).
  const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
  phone.setDefaultTimeout(STEP_TIMEOUT_MS);
  const mobile = await phone.newPage();
  track(mobile);
  watch(mobile, 'phone');
  await mobile.goto(url('/services'), { waitUntil: 'load' });
  check('phone: service row is shown', (await mobile.locator(`#service-row-${cssId(service)}`).count()) === 1);
  await checkNoOverflow(mobile, 'phone /services');
  await shot(mobile, 'services-phone.png');
  await mobile.close();
  await phone.close();
}, 'services-failure.png');
