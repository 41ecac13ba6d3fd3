// Browser check of the spark-control models page, driven by playwright-core on Debian's chromium.
//
//   node tests/browser/models.mjs <base-url> <host-alias> <model-key> <out-dir>
//
// Opens /models, picks the host in the model's row (when the page has a selector), presses Check
// and waits for the pre-flight checks, presses Swap (accepting the confirm dialog, whose text is
// recorded), waits for the job panel's SSE log to stream `log` lines and then `done`, and checks
// that the host's current-model line now names the model (an out-of-band swap of the final
// event). Screenshots models.png, then /models at phone width (390x844) with a pre-flight open
// as models-phone.png. Prints one JSON summary on stdout ({ok, console_errors, dialog, job_id,
// screenshots, ...}); progress goes to stderr. Exits 1 on any failed check, console error, page
// error or HTTP error response; 2 on bad usage.

import { PHONE, session } from './harness.mjs';

const STEP_TIMEOUT_MS = 20_000;
const SWAP_TIMEOUT_MS = 90_000;
const CHECKS = ['command', 'flags', 'memory', 'disk'];

const [base, alias, model, outDir] = process.argv.slice(2);
if (!base || !alias || !model || !outDir) {
  process.stderr.write('usage: node models.mjs <base-url> <host-alias> <model-key> <out-dir>\n');
  process.exit(2);
}

const h = session('models.mjs', base, outDir, { alias, model, job_id: null, dialog: null, preflight: [] });
const { summary, log, check, url, cssId, watch, shot, checkNoOverflow } = h;


/** Pick the host in the row (if the page offers a choice) and press Check: the checks appear. */
async function runCheck(page, row, out) {
  const pick = row.locator('select[name="host"]');
  if (await pick.count()) await pick.selectOption(alias);
  await row.getByRole('button', { name: 'Check' }).click();
  await page.waitForSelector(`${out} .preflight`);
  const names = await page.locator(`${out} .check .name`).allInnerTexts();
  check('pre-flight lists every check', names.join(',') === CHECKS.join(','), names.join(','));
  const head = await page.locator(`${out} .preflight-head`).innerText();
  check('pre-flight names model and host', head.includes(model) && head.includes(alias), JSON.stringify(head));
  return names;
}

await h.run(async (browser, track) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  track(page);
  watch(page, 'desktop');
  page.on('dialog', async (d) => {
    summary.dialog = d.message();
    log(`dialog ${d.type()}: ${d.message()}`);
    await d.accept();
  });

  const resp = await page.goto(url('/models'), { waitUntil: 'load' });
  check('/models answers 200', resp.status() === 200, `status ${resp.status()}`);
  const htmxLoaded = await page.evaluate(() => typeof window.htmx === 'object' && window.htmx !== null);
  check('htmx is loaded', htmxLoaded);
  const row = page.locator(`#model-row-${cssId(model)}`);
  check('model row is shown', await row.isVisible());
  const out = `#out-${cssId(model)}`;
  const line = page.locator(`#model-${cssId(alias)}`);
  check('host has a current-model line', await line.isVisible());

  // Check: the pre-flight fragment under the row, with the command folded in a <details>.
  const ran = await runCheck(page, row, out);
  summary.preflight = await page.locator(`${out} .check`).allInnerTexts();
  log(`pre-flight: ${summary.preflight.join(' | ')}`);
  await page.locator(`${out} details.command summary`).click();
  const command = await page.locator(`${out} details.command pre`).innerText();
  check('pre-flight shows the launch command', command.startsWith('docker run '), command.slice(0, 60));
  check('pre-flight ran all checks', ran.length === CHECKS.length);

  // Swap: confirm, then the live job panel replaces the pre-flight.
  await row.getByRole('button', { name: 'Swap' }).click();
  await page.waitForSelector(`${out} .job-panel`);
  check('confirm dialog was shown', summary.dialog !== null);
  check(
    'confirm names host and model',
    summary.dialog === `Swap ${alias} to ${model}? The running model stops.`,
    JSON.stringify(summary.dialog),
  );
  try {
    await page.waitForSelector(`${out} .log .ev-done, ${out} .log .ev-error`, { timeout: SWAP_TIMEOUT_MS });
  } catch {
    const text = await page.locator(`${out} .log`).innerText().catch(() => '<no log element>');
    check(`swap log reaches done within ${SWAP_TIMEOUT_MS / 1000} s`, false, `log: ${JSON.stringify(text)}`);
  }
  const kinds = await page.locator(`${out} .log .ev .badge`).allInnerTexts();
  check('swap log ends with done', kinds.at(-1) === 'done', `kinds ${kinds.join(',')}`);
  check('swap log starts with accepted', kinds[0] === 'accepted', `kinds ${kinds.join(',')}`);
  const firstLog = kinds.indexOf('log');
  check('container log lines stream before done', firstLog > 0 && firstLog < kinds.length - 1, `kinds ${kinds.join(',')}`);
  const href = await page.locator(`${out} .job-head a[href^="/jobs/"]`).getAttribute('href');
  summary.job_id = decodeURIComponent(href.slice('/jobs/'.length));
  const headState = (await page.locator(`${out} .job-head .badge`).innerText()).trim();
  check('job header shows succeeded', headState === 'succeeded', `state ${JSON.stringify(headState)}`);
  const lineText = (await line.innerText()).trim();
  check('current-model line names the model', (await line.locator('code.current').innerText()) === model, JSON.stringify(lineText));
  check('current-model line says running', lineText.includes('running'), JSON.stringify(lineText));
  await page.locator(`${out} .log`).evaluate((el) => { el.scrollTop = 0; });
  await shot(page, 'models.png');
  await page.close();

  // Phone width: the page fits 390 px (the table scrolls in its box); a pre-flight opens in view.
  const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
  phone.setDefaultTimeout(STEP_TIMEOUT_MS);
  const mobile = await phone.newPage();
  track(mobile);
  watch(mobile, 'phone');
  await mobile.goto(url('/models'), { waitUntil: 'load' });
  const mline = mobile.locator(`#model-${cssId(alias)}`);
  check('phone: current-model line names the model', (await mline.locator('code.current').innerText()) === model);
  const mrow = mobile.locator(`#model-row-${cssId(model)}`);
  await runCheck(mobile, mrow, out);
  const box = await mobile.locator(`${out} .preflight`).boundingBox();
  check('phone: pre-flight fits the screen', box && box.x >= 0 && box.x + box.width <= PHONE.width, JSON.stringify(box));
  await checkNoOverflow(mobile, 'phone /models');
  await shot(mobile, 'models-phone.png');
  await mobile.close();
  await phone.close();
}, 'models-failure.png');
