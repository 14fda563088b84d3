// The gateway's status page (/_lowband/status/) in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core), used the way a person uses it. Run by tests/e2e_clients/test_status_page.py against
// `lowband demo`. Config (argv[2]): baseUrl, chromium, admin and other ({user, password}), device, series,
// screenshot and phoneScreenshot (PNG paths), growTimeoutMs, timeoutMs.
//
// 1. A user without the admin flag signs in: the page refuses with its message, the dashboard stays hidden.
// 2. The admin signs in: the device's card, its last reading, its plot with at least one point.
// 3. The plot gains a point when the board sends again (the live event stream), without a reload.
// 4. Keyboard: Tab from the top of the page reaches the range selector; its focus is visible.
// 5. Contrast of the page's text against its background, and a 320 px wide viewport without sideways scrolling.
// 6. Screenshots (desktop and phone width), then "Log out" shows the sign-in form again.

import { readFileSync, readdirSync } from "node:fs";

import { chromium } from "playwright-core";

import { config, run, step, until } from "./report.mjs";

const cfg = config();

function childPids() {
  const pids = [];
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    const text = readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8").trim();
    if (text) pids.push(...text.split(/\s+/).map(Number));
  }
  return pids;
}

async function signIn(page, account) {
  await page.fill("#login-user", account.user);
  await page.fill("#login-password", account.password);
  await page.click("#login-submit");
}

/** The lowest WCAG contrast ratio among the page's visible text elements, and the worst few. */
function contrastReport() {
  const channel = (c) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  const rgb = (text) => (text.match(/[\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const c = rgb(getComputedStyle(node).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const results = [];
  const selectors = "h1, h2, h3, p, dt, dd, th, td, caption, label, button, select, .health, figcaption, .tip";
  for (const el of document.querySelectorAll(selectors)) {
    if (!el.textContent.trim() || !el.offsetParent) continue;
    const fg = rgb(getComputedStyle(el).color).slice(0, 3);
    const [a, b] = [luminance(fg), luminance(background(el))].sort((x, y) => y - x);
    results.push({ what: `${el.tagName.toLowerCase()}.${el.className}`, ratio: (a + 0.05) / (b + 0.05) });
  }
  results.sort((x, y) => x.ratio - y.ratio);
  return { min: results.length ? results[0].ratio : 0, worst: results.slice(0, 3), checked: results.length };
}

async function drive(page, pageErrors) {
  const result = {};
  const base = `${cfg.baseUrl}/_lowband/status/`;
  await page.goto(base);
  await page.waitForSelector("#login-user", { timeout: 20000 });

  // 1. A user without the admin flag.
  await signIn(page, cfg.other);
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("not a server admin"),
    null, { timeout: 20000 });
  result.refused_text = await page.textContent("#login-error");
  result.refused_dashboard_hidden = await page.isHidden("#dashboard");
  result.refused_token_kept = await page.evaluate(() => sessionStorage.getItem("lowband-status-token"));
  step("non-admin refused", { text: result.refused_text });

  // 2. The admin.
  await signIn(page, cfg.admin);
  const card = `li.device[data-device="${cfg.device}"]`;
  await page.waitForSelector(card, { timeout: 20000 });
  const plot = `${card} svg.plot[data-series="${cfg.series}"]`;
  await page.waitForSelector(plot, { timeout: 20000 });
  const points = () => page.getAttribute(plot, "data-points").then(Number);
  await until(async () => (await points()) >= 1, "a first point on the plot", 20000);
  result.last_reading = await page.textContent(`${card} .last-reading`);
  // Right after the demo starts the first summary may predate the board's first frame ("Never heard").
  result.health = await until(async () => {
    const health = await page.textContent(`${card} .health`);
    return health === "OK" ? health : null;
  }, "the board's health OK", 20000);
  result.facts = await page.$$eval(`${card} .facts dt`, (dts) => dts.map((dt) => dt.textContent));
  result.points_before = await points();
  step("signed in", { last_reading: result.last_reading, points: result.points_before });

  // 3. The board sends again: the plot grows without a reload.
  const navigations = [];
  page.on("framenavigated", (frame) => navigations.push(frame.url()));
  const grown = await until(async () => {
    const n = await points();
    return n > result.points_before ? n : 0;
  }, "a new point on the plot", cfg.growTimeoutMs ?? 60000);
  result.points_after = grown;
  result.last_reading_after = await page.textContent(`${card} .last-reading`);
  result.navigations = [...navigations];
  result.connection = await page.textContent("#connection");
  step("plot grew", { points: grown });

  // The tooltip from the keyboard: focus the plot, arrow left shows the point before the last.
  await page.focus(plot);
  await page.keyboard.press("End");
  await page.keyboard.press("ArrowLeft");
  result.tooltip = await page.textContent(`${card} .tip`);

  // 4. Tab from the top of the page to the range selector, after a reload (the session is kept in sessionStorage).
  await page.reload();
  await page.waitForSelector(plot, { timeout: 20000 });
  result.tab_order = [];
  for (let i = 0; i < 15; i++) {
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => {
      const el = document.activeElement;
      return el ? (el.id || el.getAttribute("href") || el.tagName.toLowerCase()) : "";
    });
    result.tab_order.push(focused);
    if (focused === "range") break;
  }
  result.range_outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  await page.keyboard.press("ArrowDown"); // keyboard changes the range: the plots reload for 7 days
  result.range_after_key = await page.inputValue("#range");
  step("keyboard", { tab_order: result.tab_order });

  // 5. Contrast, then a phone's width.
  result.contrast = await page.evaluate(contrastReport);
  await page.screenshot({ path: cfg.screenshot, fullPage: true });
  await page.setViewportSize({ width: 320, height: 640 });
  await page.waitForTimeout(300);
  result.phone_overflow_px = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: cfg.phoneScreenshot, fullPage: true });
  await page.setViewportSize({ width: 1100, height: 800 });

  // 6. Log out.
  await page.click("#logout");
  await page.waitForSelector("#login-user", { state: "visible", timeout: 10000 });
  result.after_logout_token = await page.evaluate(() => sessionStorage.getItem("lowband-status-token"));
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
    // (A 403 answer shows as a console error too: console lines are logged, not counted as failures.)
    page.on("console", (msg) => console.error(`browser ${msg.type()}: ${msg.text()}`));
    // Everything the page loads must come from the gateway (no CDN).
    const elsewhere = [];
    page.on("request", (r) => { if (!r.url().startsWith(cfg.baseUrl)) elsewhere.push(r.url()); });
    const httpErrors = [];
    page.on("response", (r) => {
      if (r.status() >= 400) httpErrors.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
    });
    const result = await drive(page, pageErrors);
    result.requests_elsewhere = elsewhere;
    result.http_errors = httpErrors;
    return result;
  } finally {
    if (browser) await browser.close();
  }
}

run(main, cfg.timeoutMs ?? 120000);
