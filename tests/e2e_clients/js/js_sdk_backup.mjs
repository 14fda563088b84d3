// Server-side key backup with matrix-js-sdk's Rust crypto (in memory), run by
// tests/e2e_clients/test_js_sdk_backup.py. Config (argv[2]): baseUrl, roomId,
// alice and bob ({userId, password}), timeoutMs.
//
// 1. alice's device A1 and bob's B1 talk in the encrypted room: A1 sends, discards
//    its Megolm session, sends again (a second session); B1 answers (a session A1
//    only received). Three sessions, each decrypted by the other side.
// 2. A1 sets up recovery the way Element does: cross-signing, secret storage under a
//    new random recovery key, a new key backup whose decryption key is stored in
//    secret storage. A1 then uploads its room keys; the script waits until
//    GET /room_keys/version counts all three.
// 3. A1 and B1 stop: no device that holds the keys is online, so nothing can reach a
//    new device by key sharing.
// 4. alice logs in on a new device A2 with a one-event initial sync (A1 set the room's
//    topic last) and loads the old messages from /messages (scrollback). Every one fails to decrypt: A2 has
//    no keys yet. A2 is given only the recovery key; it opens secret storage, loads
//    the backup decryption key, restores the backup, and every message decrypts.
//
// The recovery key stays inside this script: no line it prints carries it.

import * as sdk from "matrix-js-sdk";
import { decodeRecoveryKey } from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step, until } from "./report.mjs";

logger.setLevel("warn");
const cfg = config();

async function login(account, { cryptoCallbacks = {}, initialSyncLimit = 20 } = {}) {
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
    cryptoCallbacks,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
      if (state === "ERROR") reject(new Error(`${session.user_id} sync error`));
    });
  });
  await client.startClient({ initialSyncLimit });
  await prepared;
  await until(() => client.getRoom(cfg.roomId), `${session.user_id} to see the room`);
  step("logged in", { user: session.user_id, device: session.device_id });
  return client;
}

async function knowsDevice(client, userId, deviceId) {
  await until(async () => {
    const devices = await client.getCrypto().getUserDeviceInfo([userId]);
    return devices.get(userId)?.has(deviceId);
  }, `${client.getDeviceId()} to know ${userId}'s device ${deviceId}`);
}

async function send(client, body) {
  const answer = await client.sendEvent(cfg.roomId, "m.room.message", { msgtype: "m.text", body });
  step("sent", { device: client.getDeviceId(), body, event_id: answer.event_id });
  return answer.event_id;
}

/** The event `eventId` once `client` has finished trying to decrypt it (decrypted or failed). */
async function settled(client, eventId, what) {
  return until(() => {
    const event = client.getRoom(cfg.roomId).findEventById(eventId);
    if (!event || event.isBeingDecrypted()) return null;
    return (event.isDecryptionFailure() || event.getType() === "m.room.message") && event;
  }, `${client.getDeviceId()} to ${what} ${eventId}`);
}

/** Wait until `client` has decrypted `eventId`; that event's facts. */
async function decrypted(client, eventId) {
  const event = await until(() => {
    const found = client.getRoom(cfg.roomId).findEventById(eventId);
    return found?.getType() === "m.room.message" && found;
  }, `${client.getDeviceId()} to decrypt ${eventId}`);
  return {
    device: client.getDeviceId(),
    event_id: eventId,
    body: event.getContent().body,
    wire_type: event.getWireType(),
    session_id: event.getWireContent().session_id,
    sender: event.getSender(),
    sender_key: event.getSenderKey(),
  };
}

/** GET /room_keys/version over plain HTTP with `client`'s token: what the server says it holds. */
async function serverBackup(client) {
  const response = await fetch(`${cfg.baseUrl}/_matrix/client/v3/room_keys/version`, {
    headers: { Authorization: `Bearer ${client.getAccessToken()}` },
    signal: AbortSignal.timeout(10000),
  });
  if (!response.ok) throw new Error(`GET /room_keys/version: ${response.status} ${await response.text()}`);
  const info = await response.json();
  return { version: info.version, count: info.count, etag: info.etag, algorithm: info.algorithm };
}

/** Cross-signing keys upload: without auth first (MSC3967, a first upload), else the account's password. */
function uploadAuth(account, used) {
  return async (makeRequest) => {
    try {
      await makeRequest(null);
    } catch (err) {
      if (err?.httpStatus !== 401 || !err.data?.flows) throw err;
      used.password = true;
      await makeRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: account.userId },
        password: account.password,
        session: err.data.session,
      });
    }
  };
}

async function main() {
  const result = {};
  // The secret storage key A1 creates, kept in memory as an app would while its user
  // is shown the recovery key.
  const cachedKeys = new Map();
  const a1 = await login(cfg.alice, {
    cryptoCallbacks: {
      cacheSecretStorageKey: (keyId, _info, key) => cachedKeys.set(keyId, key),
      getSecretStorageKey: async ({ keys }) => {
        const keyId = Object.keys(keys).find((id) => cachedKeys.has(id));
        return keyId ? [keyId, cachedKeys.get(keyId)] : null;
      },
    },
  });
  const b1 = await login(cfg.bob);
  result.old_device = a1.getDeviceId();
  await knowsDevice(a1, cfg.bob.userId, b1.getDeviceId());
  await knowsDevice(b1, cfg.alice.userId, a1.getDeviceId());

  // 1. Three Megolm sessions: two of A1's own, one A1 received from B1.
  const sent = [];
  const talk = async (from, to, body) => {
    const eventId = await send(from, body);
    sent.push({ event_id: eventId, body, sender: from.getUserId() });
    const facts = await decrypted(to, eventId);
    if (facts.body !== body) throw new Error(`${to.getDeviceId()} read ${JSON.stringify(facts.body)} for ${body}`);
    return facts;
  };
  result.old_sessions = [];
  result.old_sessions.push((await talk(a1, b1, "backup: alice, first session")).session_id);
  await a1.getCrypto().forceDiscardSession(cfg.roomId);
  result.old_sessions.push((await talk(a1, b1, "backup: alice, second session")).session_id);
  result.old_sessions.push((await talk(b1, a1, "backup: bob's session")).session_id);
  result.sent = sent;

  // 2. Recovery: cross-signing, then secret storage with a new key backup in it.
  const auth = { password: false };
  await a1.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: uploadAuth(cfg.alice, auth) });
  const recovery = await a1.getCrypto().createRecoveryKeyFromPassphrase();
  await a1.getCrypto().bootstrapSecretStorage({
    createSecretStorageKey: async () => recovery,
    setupNewKeyBackup: true,
  });
  result.cross_signing_needed_password = auth.password;
  result.backup_version = await until(() => a1.getCrypto().getActiveSessionBackupVersion(), "A1's backup to be active");
  result.secret_storage_ready = await a1.getCrypto().isSecretStorageReady();
  step("backup created", { version: result.backup_version });

  // The client uploads after a random pause of up to 10 s (to spread clients' uploads), so this waits.
  const t0 = Date.now();
  const expected = new Set(result.old_sessions).size;
  result.backed_up = await until(async () => {
    const info = await serverBackup(a1);
    return info.count >= expected && info;
  }, `GET /room_keys/version to count ${expected} keys`, 20000);
  step("backed up", { ...result.backed_up, waited_ms: Date.now() - t0 });

  // The room's newest event, so that the new device's one-event initial sync holds none of the
  // old messages and all of them come from /messages.
  await a1.setRoomTopic(cfg.roomId, "after the backed-up messages");

  // 3. Nothing that holds a key stays online.
  a1.stopClient();
  b1.stopClient();
  step("old devices stopped");

  // 4. A new device with nothing but the recovery key.
  const recoveryKey = recovery.encodedPrivateKey;
  result.recovery_key_checked = false;
  // Read by the callback, which runs only later, when a secret is opened.
  let a2;
  a2 = await login(cfg.alice, {
    initialSyncLimit: 1,
    cryptoCallbacks: {
      getSecretStorageKey: async ({ keys }) => {
        const keyId = await a2.secretStorage.getDefaultKeyId();
        if (!keyId || !keys[keyId]) return null;
        const key = decodeRecoveryKey(recoveryKey);
        result.recovery_key_checked = await a2.secretStorage.checkKey(key, keys[keyId]);
        return [keyId, key];
      },
    },
  });
  result.new_device = a2.getDeviceId();
  const room = a2.getRoom(cfg.roomId);
  result.old_messages_in_initial_sync = sent.filter((m) => room.findEventById(m.event_id)).length;
  // Older events come from /messages, a page of two at a time, until every old message is in.
  let pages = 0;
  await until(async () => {
    if (sent.every((m) => room.findEventById(m.event_id))) return true;
    if (room.oldState.paginationToken === null) throw new Error("reached the room's start without every old message");
    await a2.scrollback(room, 2);
    pages += 1;
    return false;
  }, "the old messages from /messages");
  result.history_pages = pages;
  step("history loaded", { pages });
  result.before_restore = [];
  for (const m of sent) {
    const event = await settled(a2, m.event_id, "try to decrypt");
    result.before_restore.push({
      event_id: m.event_id,
      decrypted: !event.isDecryptionFailure(),
      reason: event.decryptionFailureReason,
    });
  }
  step("undecryptable before restore", { events: result.before_restore });

  const restoreStarted = Date.now();
  await a2.getCrypto().loadSessionBackupPrivateKeyFromSecretStorage();
  const restored = await a2.getCrypto().restoreKeyBackup();
  result.restored = { total: restored.total, imported: restored.imported };
  step("restored", { ...result.restored, ms_taken: Date.now() - restoreStarted });

  result.decrypted = [];
  for (const m of sent) result.decrypted.push(await decrypted(a2, m.event_id));
  step("decrypted after restore", { count: result.decrypted.length });
  result.after_restore = await serverBackup(a2);
  a2.stopClient();
  return result;
}

run(main, cfg.timeoutMs ?? 50000);
