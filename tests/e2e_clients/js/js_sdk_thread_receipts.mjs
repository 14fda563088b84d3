// matrix-js-sdk's threaded read receipts and per-thread unread counts against the server, run by
// tests/e2e_clients/test_js_sdk_thread_receipts.py. Config (argv[2]): baseUrl, roomId, alice and bob.
//
// 1. Both clients start with threadSupport; the SDK builds its own sync filter, which asks for per-thread
//    counts (unread_thread_notifications) when /versions says v1.4.
// 2. bob sends a root, two replies in a thread on it and a message in the main timeline.
// 3. alice's counts as the SDK keeps them from /sync: main 2, the thread 2.
// 4. alice reads the first reply (sendReadReceipt: the SDK adds thread_id = the root), then the main message
//    (thread_id "main"), then sends an unthreaded receipt on the second reply; after each, her counts as the
//    SDK shows them, and bob's client's view of where alice has read in the thread and in the room.
// Every receipt request body, unhandled rejection, SDK error line and failed receipt request is reported.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step, until } from "./report.mjs";

logger.setLevel("warn");
const cfg = config();
const problems = { rejections: [], errors: [], failed_requests: [] };
const receiptBodies = [];
const filters = [];

process.on("unhandledRejection", (reason) => problems.rejections.push(String(reason && reason.stack || reason)));
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.error = (...args) => {
  problems.errors.push(args.map(String).join(" ").slice(0, 500));
  toStderr(...args);
};
console.warn = toStderr;

/** fetch, noting receipt request bodies, the sync filters uploaded, and failed receipt requests. */
async function watchedFetch(input, init) {
  const url = String(input instanceof Request ? input.url : input);
  const response = await fetch(input, init);
  if (url.includes("/receipt/")) {
    receiptBodies.push({ path: url.replace(cfg.baseUrl, ""), body: JSON.parse(init?.body || "{}") });
    if (!response.ok) problems.failed_requests.push(`${response.status} ${url.replace(cfg.baseUrl, "")}`);
  }
  if (url.endsWith("/filter") && init?.method === "POST") filters.push(JSON.parse(init.body));
  return response;
}

async function start(account) {
  const client = sdk.createClient({
    baseUrl: cfg.baseUrl,
    userId: account.userId,
    accessToken: account.accessToken,
    fetchFn: watchedFetch,
    threadSupport: true,
  });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
      if (state === "ERROR") reject(new Error(`${account.userId} sync error`));
    });
  });
  await client.startClient({ initialSyncLimit: 20, threadSupport: true });
  await prepared;
  await until(() => client.getRoom(cfg.roomId), `${account.userId} to see the room`);
  return client;
}

const text = (body) => ({ msgtype: "m.text", body });
const Total = sdk.NotificationCountType.Total;

async function main() {
  const alice = await start(cfg.alice);
  const bob = await start(cfg.bob);
  step("clients started");
  const root = (await bob.sendMessage(cfg.roomId, null, text("root"))).event_id;
  const bobRoom = bob.getRoom(cfg.roomId);
  const rootEvent = await until(() => bobRoom.findEventById(root), "bob's root to come back");
  if (!bobRoom.getThread(root)) bobRoom.createThread(root, rootEvent, [], true);
  const first = (await bob.sendMessage(cfg.roomId, root, text("first reply"))).event_id;
  const second = (await bob.sendMessage(cfg.roomId, root, text("second reply"))).event_id;
  const later = (await bob.sendMessage(cfg.roomId, null, text("main again"))).event_id;
  step("bob sent", { root, first, second, later });

  const room = alice.getRoom(cfg.roomId);
  const counts = () => ({ main: room.getRoomUnreadNotificationCount(Total),
                          thread: room.getThreadUnreadNotificationCount(root, Total) });
  const waitCounts = async (main, thread, what) => {
    try {
      // 8 s each: four waits stay inside the script's deadline, so a wrong count is reported as such
      return await until(() => { const c = counts(); return c.main === main && c.thread === thread && c; }, what,
                         8000);
    } catch (err) {
      return { ...counts(), timedOut: what };
    }
  };
  const event = (id) => until(() => room.findEventById(id), `alice to have ${id}`);
  const seen = {};
  seen.before = await waitCounts(2, 2, "counts main 2, thread 2");

  await alice.sendReadReceipt(await event(first)); // in the thread: the SDK adds thread_id = root
  seen.afterThread = await waitCounts(2, 1, "counts main 2, thread 1");
  await alice.sendReadReceipt(await event(later)); // main timeline: thread_id "main"
  seen.afterMain = await waitCounts(0, 1, "counts main 0, thread 1");
  await alice.sendReadReceipt(await event(second), sdk.ReceiptType.Read, true); // unthreaded
  seen.afterUnthreaded = await waitCounts(0, 0, "counts main 0, thread 0");

  // bob's client: where alice has read, in the thread and in the room.
  const bobThread = bobRoom.getThread(root);
  const readInThread = await until(() => bobThread?.getEventReadUpTo(cfg.alice.userId) === second && second,
                                   "bob to see alice's receipt in the thread", 8000)
    .catch(() => bobThread?.getEventReadUpTo(cfg.alice.userId) ?? null);
  const readInRoom = bobRoom.getEventReadUpTo(cfg.alice.userId);

  await new Promise((resolve) => setTimeout(resolve, 500));
  for (const client of [alice, bob]) client.stopClient();
  return { root, first, second, later, counts: seen, receipts: receiptBodies, filters, readInThread, readInRoom,
           ...problems };
}

run(main, cfg.timeoutMs ?? 60000);
