// The status page's "BLE sensors" section in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core). Run by tests/ble/test_ble_status_page.py against an in-process gateway whose BLE
// component is fed advertisements by the test. Config (argv[2]): baseUrl, chromium, admin ({user, password}),
// sensor, series, screenshot (PNG path), growTimeoutMs, timeoutMs.
//
// 1. The admin signs in: the sensor's card under "BLE sensors" with its health, last reading, facts and a plot
//    with at least one point; the scanner's facts above the cards.
// 2. The plot gains a point when the sensor sends again (the live event stream), without a reload.
// 3. The plot is one tab stop whose arrow keys read the points; a screenshot.

import { readFileSync, readdirSync } from "node:fs";

import { chromium } from "playwright-core";

import { config, run, step, until } from "./report.mjs";

const cfg = config();

// The browser's processes, reported so that pytest ends them if this script is killed (as status_page_drive.mjs).
function childPids() {
  const pids = [];
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    const text = readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8").trim();
    if (text) pids.push(...text.split(/\s+/).map(Number));
  }
  return pids;
}

async function drive(page, pageErrors) {
  const result = {};
  await page.goto(`${cfg.baseUrl}/_lowband/status/`);
  await page.waitForSelector("#login-user", { timeout: 20000 });
  await page.fill("#login-user", cfg.admin.user);
  await page.fill("#login-password", cfg.admin.password);
  await page.click("#login-submit");

  const card = `#ble-sensors li.device[data-sensor="${cfg.sensor}"]`;
  await page.waitForSelector(card, { timeout: 20000 });
  const plot = `${card} svg.plot[data-series="${cfg.series}"]`;
  await page.waitForSelector(plot, { timeout: 20000 });
  const points = () => page.getAttribute(plot, "data-points").then(Number);
  await until(async () => (await points()) >= 1, "a first point on the sensor's plot", 20000);
  result.heading = await page.textContent("#ble-title");
  result.card_labelled_by = await page.textContent(`#${await page.getAttribute(card, "aria-labelledby")}`);
  result.health = await page.textContent(`${card} .health`);
  result.last_reading = await page.textContent(`${card} .last-reading`);
  result.facts = Object.fromEntries(await page.$$eval(`${card} .facts dt`,
    (dts) => dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
  result.scanner = Object.fromEntries(await page.$$eval("#ble-scanner dt",
    (dts) => dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
  result.ble_off_hidden = await page.isHidden("#ble-off");
  result.points_before = await points();
  step("signed in", { points: result.points_before });

  const navigations = [];
  page.on("framenavigated", (frame) => navigations.push(frame.url()));
  result.points_after = await until(async () => {
    const n = await points();
    return n > result.points_before ? n : 0;
  }, "a new point on the sensor's plot", cfg.growTimeoutMs ?? 30000);
  result.navigations = navigations;
  result.last_reading_after = await page.textContent(`${card} .last-reading`);
  step("plot grew", { points: result.points_after });

  await page.focus(plot);
  await page.keyboard.press("End");
  result.tooltip = await page.textContent(`${card} .tip`);
  result.plot_name = await page.getAttribute(plot, "aria-label");
  await page.screenshot({ path: cfg.screenshot, fullPage: true });
  result.page_errors = pageErrors;
  return result;
}

async function main() {
  let browser = null;
  try {
    browser = await chromium.launch({ executablePath: cfg.chromium, headless: true, args: ["--no-sandbox"], timeout: 30000 });
    step("browser", { pgids: childPids() });
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    const page = await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(String(err.message)));
    page.on("console", (msg) => console.error(`browser ${msg.type()}: ${msg.text()}`));
    const httpErrors = [];
    page.on("response", (r) => {
      if (r.status() >= 400) httpErrors.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
    });
    const result = await drive(page, pageErrors);
    result.http_errors = httpErrors;
    return result;
  } finally {
    if (browser) await browser.close();
  }
}

run(main, cfg.timeoutMs ?? 90000);
