// What the browser scripts share: Debian's chromium through playwright-core, a JSON summary on
// stdout, checks that stop the run, console / page / HTTP error watching, screenshots, and the
// launch → run → failure screenshot → exit skeleton.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync',
];
export const PHONE = { width: 390, height: 844 };

/** A run of one script: `name` labels its log lines, `fields` start its summary. */
export function session(name, base, outDir, fields) {
  fs.mkdirSync(outDir, { recursive: true });
  const summary = {
    ok: false, base, ...fields,
    console_errors: [], http_errors: [], checks: [], screenshots: [], error: null,
  };
  const log = (msg) => process.stderr.write(`[${name}] ${msg}\n`);
  const check = (what, ok, detail = '') => {
    summary.checks.push({ name: what, ok, ...(detail ? { detail } : {}) });
    log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` (${detail})` : ''}`);
    if (!ok) throw new Error(`check failed: ${what}${detail ? ` (${detail})` : ''}`);
  };
  const url = (p) => new URL(p, base).toString();
  const cssId = (s) => s.replace(/[^a-zA-Z0-9_-]/g, (ch) => `\\${ch}`);

  /** Watch a page for console errors, uncaught exceptions and HTTP error responses. */
  function watch(page, label) {
    page.on('console', (msg) => {
      if (msg.type() === 'error') {
        const loc = msg.location();
        summary.console_errors.push(
          `${label}: ${msg.text()}${loc && loc.url ? ` @ ${loc.url}:${loc.lineNumber}` : ''}`,
        );
      }
    });
    page.on('pageerror', (err) => {
      summary.console_errors.push(`${label}: uncaught ${err.name}: ${err.message}`);
    });
    page.on('response', (resp) => {
      if (resp.status() >= 400) {
        summary.http_errors.push(`${label}: ${resp.status()} ${resp.request().method()} ${resp.url()}`);
      }
    });
  }

  async function shot(page, file) {
    const target = path.join(outDir, file);
    await page.screenshot({ path: target, fullPage: true });
    summary.screenshots.push(target);
    log(`screenshot ${target}`);
  }

  /** No horizontal scrolling of the whole page (wide tables scroll inside their own box). */
  async function checkNoOverflow(page, what) {
    const { scroll, client } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      client: document.documentElement.clientWidth,
    }));
    check(`${what}: no horizontal page overflow`, scroll <= client, `scrollWidth ${scroll}, clientWidth ${client}`);
  }

  /** Launch chromium, run `body(browser, track)` (track(page) marks the page to screenshot on
   * failure), require no console or HTTP errors, print the summary and exit 0 / 1. */
  async function run(body, failureFile) {
    let browser;
    let current;
    let exitCode = 1;
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
      await body(browser, (page) => { current = page; });
      check('no console errors or page errors', summary.console_errors.length === 0, summary.console_errors.join(' | '));
      check('no HTTP error responses', summary.http_errors.length === 0, summary.http_errors.join(' | '));
      summary.ok = true;
      exitCode = 0;
    } catch (err) {
      summary.error = String(err && err.stack ? err.stack : err);
      log(summary.error);
      if (current && !current.isClosed()) {
        const file = path.join(outDir, failureFile);
        try {
          await current.screenshot({ path: file, fullPage: true });
          summary.failure_screenshot = file;
        } catch {
          // the page may be gone with the browser
        }
      }
    } finally {
      if (browser) await browser.close().catch(() => {});
    }
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    process.exit(exitCode);
  }

  return { summary, log, check, url, cssId, watch, shot, checkNoOverflow, run };
}
