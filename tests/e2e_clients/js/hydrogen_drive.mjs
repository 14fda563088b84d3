// Hydrogen (hydrogen-view-sdk's whole app, see hydrogen/app.mjs) served on 127.0.0.1 and
// driven in headless Chromium (Debian's /usr/bin/chromium, through playwright-core),
// the way a person uses it. Run by tests/e2e_clients/test_hydrogen.py, which sends
// from a nio client in between. Config (argv[2]): baseUrl, roomId, user
// ({userId, password}), expect (the nio client's message), send (what to type),
// screenshot (a PNG path), chromium (the browser binary), timeoutMs.
//
// 1. The login form: homeserver, username, password, "Log In".
// 2. The room in the room list; its composer must offer an *encrypted* message.
//    -> {"step": "ready", "device": <Hydrogen's device ID>}
// 3. The nio client's message appears in the timeline, decrypted.
// 4. Type a message and press Enter: it is sent (the server's event ID on it).
// 5. A screenshot of the room.

import { readFileSync, readdirSync } from "node:fs";

import { chromium } from "playwright-core";

import { serveHydrogen } from "./hydrogen_serve.mjs";
import { config, run, step } from "./report.mjs";

const cfg = config();

/** The PIDs of this process's children: the browser Playwright launched, a process group leader. */
function childPids() {
  const pids = [];
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    const text = readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8").trim();
    if (text) pids.push(...text.split(/\s+/).map(Number));
  }
  return pids;
}

async function drive(page, site, pageErrors) {
  const result = {};
  await page.goto(`${site.url}/?homeserver=${encodeURIComponent(cfg.baseUrl)}`);
  await page.waitForSelector("#username", { timeout: 20000 });
  result.homeserver_field = await page.inputValue("#homeserver");
  await page.fill("#username", cfg.user.userId);
  await page.fill("#password", cfg.user.password);
  const login = page.waitForResponse(
    (r) => r.request().method() === "POST" && new URL(r.url()).pathname.endsWith("/login"),
    { timeout: 20000 },
  );
  await page.click("button[type=submit]");
  const answer = await login;
  if (answer.status() !== 200) throw new Error(`login answered ${answer.status()}: ${await answer.text()}`);
  result.device = (await answer.json()).device_id;
  step("logged in", { device: result.device });

  // The room list, then the room. Session setup (keys/upload, first /sync) happens in between;
  // a failure there shows as Hydrogen's status text instead of the list.
  // Hydrogen puts the room ID in the link URI-encoded (":" of "!id:server" as %3A).
  const link = `.RoomList a[href$="${encodeURIComponent(cfg.roomId)}"]`;
  try {
    await page.waitForSelector(link, { timeout: 30000 });
  } catch (err) {
    const text = await page.innerText("#app").catch(() => "");
    const links = await page.$$eval(".RoomList a", (as) => as.map((a) => a.getAttribute("href"))).catch(() => []);
    throw new Error(`no link to ${cfg.roomId} in the room list (${JSON.stringify(links)}); ` +
      `Hydrogen shows ${JSON.stringify(text.slice(0, 500))}; page errors ${JSON.stringify(pageErrors)}`);
  }
  await page.click(link);
  const composer = ".MessageComposer textarea";
  await page.waitForSelector(composer, { timeout: 20000 });
  result.composer_placeholder = await page.getAttribute(composer, "placeholder");
  step("ready", { device: result.device, placeholder: result.composer_placeholder });

  // The nio client's message, decrypted (an undecryptable one shows as a notice without its text).
  const theirs = page.locator(".Timeline_message:not(.own) .Timeline_messageBody", { hasText: cfg.expect });
  await theirs.waitFor({ timeout: cfg.expectTimeoutMs ?? 40000 });
  result.shown_sender = await page
    .locator(".Timeline_message:not(.own)", { hasText: cfg.expect })
    .locator(".Timeline_messageSender")
    .getAttribute("title");
  step("shown", { text: cfg.expect, sender: result.shown_sender });

  await page.fill(composer, cfg.send);
  await page.keyboard.press("Enter");
  // Sent once the server's event ID is on it (a local echo has none, or a transaction ID).
  const ours = page.locator(".Timeline_message.own", { hasText: cfg.send });
  await ours.waitFor({ timeout: 20000 });
  const deadline = Date.now() + 20000;
  for (;;) {
    result.sent_event_id = await ours.getAttribute("data-event-id");
    if (result.sent_event_id && result.sent_event_id.startsWith("$")) break;
    if (Date.now() > deadline) throw new Error(`"${cfg.send}" was never acknowledged (id ${result.sent_event_id})`);
    await page.waitForTimeout(50);
  }
  step("sent", { text: cfg.send, event_id: result.sent_event_id });

  await page.screenshot({ path: cfg.screenshot });
  result.screenshot = cfg.screenshot;
  result.page_errors = pageErrors;
  return result;
}

async function main() {
  const site = await serveHydrogen();
  let browser = null;
  try {
    browser = await chromium.launch({
      executablePath: cfg.chromium,
      headless: true,
      // Root in a container: Chromium's own sandbox needs user namespaces it may not get.
      args: ["--no-sandbox"],
      timeout: 30000,
    });
    // Playwright starts the browser in a process group of its own; pytest ends that group too
    // (NodeScript), so no browser process outlives the test however this script ends.
    step("browser", { pgids: childPids() });
    const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const page = await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(String(err.message)));
    page.on("console", (msg) => console.error(`browser ${msg.type()}: ${msg.text()}`));
    // Which homeserver requests failed: what a server still lacks shows here first.
    const httpErrors = [];
    page.on("response", (r) => {
      if (r.status() >= 400 && r.url().startsWith(cfg.baseUrl)) {
        httpErrors.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
      }
    });
    const result = await drive(page, site, pageErrors);
    result.http_errors = httpErrors;
    return result;
  } finally {
    if (browser) await browser.close();
    await site.close();
  }
}

run(main, cfg.timeoutMs ?? 100000);
