// matrix-js-sdk and the server's push rules, run by tests/e2e_clients/test_js_sdk_push.py.
// Config (argv[2]): baseUrl, roomId, alice and bob ({userId, accessToken}).
//
// 1. alice's client starts: it fetches /pushrules/ and merges the rules with the defaults it expects, warning
//    ("Adding default global ... push rule" / "Missing default global ...") for each one the server lacks.
// 2. bob (raw HTTP) sends a message that mentions alice through m.mentions.
// 3. alice's client sees it: its own evaluation of the server's rules highlights it, and the room's
//    highlight count the server sent in /sync (unread_notifications) is 1.
// Every warning about push rules, SDK error line and unhandled rejection is reported.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step, until } from "./report.mjs";

const cfg = config();
const problems = { rejections: [], errors: [], push_warnings: [] };
process.on("unhandledRejection", (reason) => problems.rejections.push(String((reason && reason.stack) || reason)));
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
// loglevel binds console methods when the level is set: replace them first
console.warn = (...args) => {
  const line = args.map(String).join(" ");
  if (/push rule/i.test(line)) problems.push_warnings.push(line.slice(0, 300));
  toStderr(...args);
};
console.error = (...args) => {
  problems.errors.push(args.map(String).join(" ").slice(0, 500));
  toStderr(...args);
};
logger.setLevel("warn");

async function main() {
  const client = sdk.createClient({ baseUrl: cfg.baseUrl, userId: cfg.alice.userId, accessToken: cfg.alice.accessToken });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
      if (state === "ERROR") reject(new Error("sync error"));
    });
  });
  await client.startClient({ initialSyncLimit: 5 });
  await prepared;
  step("started", { rules: Object.keys(client.pushRules?.global || {}) });
  const room = await until(() => client.getRoom(cfg.roomId), "the room");

  const sent = await fetch(`${cfg.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(cfg.roomId)}/send/m.room.message/push1`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${cfg.bob.accessToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ msgtype: "m.text", body: "ping", "m.mentions": { user_ids: [cfg.alice.userId] } }),
  });
  const { event_id: eventId } = await sent.json();
  const event = await until(() => room.findEventById(eventId), "the mention");
  const actions = client.getPushActionsForEvent(event, true);
  const serverHighlights = await until(
    () => room.getUnreadNotificationCount(sdk.NotificationCountType.Highlight) || null,
    "the server's highlight count",
  );
  client.stopClient();
  return {
    ...problems,
    override: client.pushRules.global.override.map((r) => r.rule_id),
    highlight_local: Boolean(actions && actions.tweaks && actions.tweaks.highlight),
    highlight_server: serverHighlights,
  };
}

run(main, 60000);
