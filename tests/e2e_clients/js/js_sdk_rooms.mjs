// matrix-js-sdk with its Rust crypto (in memory) in one encrypted room, run by
// tests/e2e_clients/test_js_sdk.py. Config (argv[2]): baseUrl, roomId, alice, bob
// ({userId, password}) and observer ({userId, accessToken}: a plain HTTP client
// that shares the room and watches /sync's device_lists).
//
// 1. alice's device A1 sends; bob's device B1 decrypts. Then B1 sends; A1 decrypts.
// 2. bob logs in on a third device, B2. The observer's incremental /sync lists bob
//    in device_lists.changed, and A1 learns B2's keys.
// 3. A1 sends again: B2 (and B1) decrypt it. B2 cannot decrypt the first message,
//    sent before it existed (no key backup here): it got only the keys from after it joined.
// Each decrypted event is checked to have been m.room.encrypted on the wire.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step, until } from "./report.mjs";

logger.setLevel("warn");
const cfg = config();

async function login(account) {
  const bare = sdk.createClient({ baseUrl: cfg.baseUrl });
  const session = await bare.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: account.userId },
    password: account.password,
  });
  const client = sdk.createClient({
    baseUrl: cfg.baseUrl,
    userId: session.user_id,
    accessToken: session.access_token,
    deviceId: session.device_id,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
      if (state === "ERROR") reject(new Error(`${session.user_id} sync error`));
    });
  });
  await client.startClient({ initialSyncLimit: 20 });
  await prepared;
  await until(() => client.getRoom(cfg.roomId), `${session.user_id} to see the room`);
  step("logged in", { user: session.user_id, device: session.device_id });
  return client;
}

/** Wait until `client`'s crypto knows `deviceId` of `userId` (from /sync device_lists, then keys/query). */
async function knowsDevice(client, userId, deviceId) {
  await until(async () => {
    const devices = await client.getCrypto().getUserDeviceInfo([userId]);
    return devices.get(userId)?.has(deviceId);
  }, `${client.getDeviceId()} to know ${userId}'s device ${deviceId}`);
  const devices = await client.getCrypto().getUserDeviceInfo([userId]);
  return [...devices.get(userId).keys()];
}

/** Wait until `client` has decrypted the message `body` in the room; that event's facts. */
async function decrypted(client, body, timeoutMs = 20000) {
  const t0 = Date.now();
  const event = await until(() => {
    const room = client.getRoom(cfg.roomId);
    return room
      .getLiveTimeline()
      .getEvents()
      .find((ev) => ev.getType() === "m.room.message" && ev.getContent().body === body);
  }, `${client.getUserId()}/${client.getDeviceId()} to decrypt "${body}"`, timeoutMs);
  const facts = {
    device: client.getDeviceId(),
    body,
    wire_type: event.getWireType(),
    sender: event.getSender(),
    // The sender's device key that Megolm says this came from: proves it was really decrypted.
    sender_key: event.getSenderKey(),
    waited_ms: Date.now() - t0,
  };
  step("decrypted", facts);
  return facts;
}

async function send(client, body) {
  const answer = await client.sendEvent(cfg.roomId, "m.room.message", { msgtype: "m.text", body });
  step("sent", { device: client.getDeviceId(), body, event_id: answer.event_id });
  return answer.event_id;
}

async function observerSync(since) {
  const query = new URLSearchParams({ timeout: "0" });
  if (since) query.set("since", since);
  const response = await fetch(`${cfg.baseUrl}/_matrix/client/v3/sync?${query}`, {
    headers: { Authorization: `Bearer ${cfg.observer.accessToken}` },
    signal: AbortSignal.timeout(10000),
  });
  if (!response.ok) throw new Error(`observer /sync: ${response.status} ${await response.text()}`);
  return response.json();
}

async function main() {
  const result = { decrypted: [] };
  const a1 = await login(cfg.alice);
  const b1 = await login(cfg.bob);
  result.alice_device = a1.getDeviceId();
  result.bob_devices = [b1.getDeviceId()];
  // A device that logs in after the other's key query is learnt through device_lists:
  // each side waits for that before sending, as a room key goes only to devices known then.
  await knowsDevice(a1, cfg.bob.userId, b1.getDeviceId());
  await knowsDevice(b1, cfg.alice.userId, a1.getDeviceId());

  const firstEventId = await send(a1, "js: alice to bob");
  result.decrypted.push(await decrypted(b1, "js: alice to bob"));
  await send(b1, "js: bob to alice");
  result.decrypted.push(await decrypted(a1, "js: bob to alice"));

  // The observer's position before the third device exists.
  let since = (await observerSync(null)).next_batch;
  const b2 = await login(cfg.bob);
  result.bob_devices.push(b2.getDeviceId());

  // The server announces bob's new device to everyone sharing a room with him.
  const changed = new Set();
  await until(async () => {
    const answer = await observerSync(since);
    since = answer.next_batch;
    for (const user of answer.device_lists?.changed ?? []) changed.add(user);
    return changed.has(cfg.bob.userId);
  }, "bob in the observer's device_lists.changed");
  result.observer_device_lists_changed = [...changed];
  step("announced", { changed: [...changed] });

  // A1's crypto learns B2's keys from the device list change (keys/query).
  result.alice_knows_bob_devices = await knowsDevice(a1, cfg.bob.userId, b2.getDeviceId());

  // B2 was given the room key from after it logged in, never the one before: it cannot read the first message.
  const before = await until(() => {
    const ev = b2.getRoom(cfg.roomId).getLiveTimeline().getEvents()
      .find((e) => e.getId() === firstEventId);
    return ev && (ev.isDecryptionFailure() || ev.getType() === "m.room.message") && ev;
  }, "the third device to try the message sent before it existed");
  result.third_device_reads_earlier_message = !before.isDecryptionFailure();

  await send(a1, "js: after the third device");
  result.decrypted.push(await decrypted(b2, "js: after the third device"));
  result.decrypted.push(await decrypted(b1, "js: after the third device"));
  for (const client of [a1, b1, b2]) client.stopClient();
  return result;
}

run(main, cfg.timeoutMs ?? 100000);
