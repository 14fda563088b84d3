// matrix-js-sdk with threadSupport on, in one plain room, run by tests/e2e_clients/test_js_sdk_threads.py.
// Config (argv[2]): baseUrl, roomId, alice and bob ({userId, accessToken, deviceId}).
//
// 1. alice's client sends a root, opens a thread on it once it came back (as Element does) and sends two
//    replies in it (sendMessage with a thread ID) and a reaction to the first reply.
// 2. bob's client starts afterwards: it lists the room's threads (/v1/rooms/{id}/threads), sees the thread
//    with its summary (m.relations in unsigned) and loads it (/relations?dir=b&recurse=...).
// 3. bob opens a link to the root event (/context) through getEventTimeline.
// Every unhandled rejection, SDK error line and failed relations/threads/context request is reported.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step, until } from "./report.mjs";

logger.setLevel("warn");
const cfg = config();
const problems = { rejections: [], errors: [], failed_requests: [] };
const requested = new Set();

process.on("unhandledRejection", (reason) => problems.rejections.push(String(reason && reason.stack || reason)));
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.error = (...args) => {
  problems.errors.push(args.map(String).join(" ").slice(0, 500));
  toStderr(...args);
};
console.warn = toStderr;

/** fetch, noting every call to the endpoints under test and each that failed. */
async function watchedFetch(input, init) {
  const url = String(input instanceof Request ? input.url : input);
  const response = await fetch(input, init);
  for (const endpoint of ["/relations/", "/threads", "/context/"]) {
    if (!url.includes(endpoint)) continue;
    requested.add(endpoint);
    if (!response.ok) problems.failed_requests.push(`${response.status} ${url.replace(cfg.baseUrl, "")}`);
  }
  return response;
}

async function start(account, initialSyncLimit) {
  const client = sdk.createClient({
    baseUrl: cfg.baseUrl,
    userId: account.userId,
    accessToken: account.accessToken,
    deviceId: account.deviceId,
    fetchFn: watchedFetch,
    threadSupport: true,
    timelineSupport: true, // as Element: getEventTimeline (links to events) needs it
  });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
      if (state === "ERROR") reject(new Error(`${account.userId} sync error`));
    });
  });
  await client.startClient({ initialSyncLimit, threadSupport: true });
  await prepared;
  await until(() => client.getRoom(cfg.roomId), `${account.userId} to see the room`);
  return client;
}

const text = (body) => ({ msgtype: "m.text", body });

async function main() {
  const alice = await start(cfg.alice, 20);
  step("alice started");
  const root = (await alice.sendMessage(cfg.roomId, null, text("thread root"))).event_id;
  // As Element does when a thread is opened on an event: the root's remote echo, then the thread object.
  const aliceRoom = alice.getRoom(cfg.roomId);
  const rootEvent = await until(() => aliceRoom.findEventById(root), "alice's root event to come back in /sync");
  if (!aliceRoom.getThread(root)) aliceRoom.createThread(root, rootEvent, [], true);
  const first = (await alice.sendMessage(cfg.roomId, root, text("first reply"))).event_id;
  const second = (await alice.sendMessage(cfg.roomId, root, text("second reply"))).event_id;
  await alice.sendEvent(cfg.roomId, "m.reaction", {
    "m.relates_to": { rel_type: "m.annotation", event_id: first, key: "👍" },
  });
  step("thread sent", { root, first, second });

  // bob's first /sync carries only the last event (the reaction): the thread reaches him through /threads.
  const bob = await start(cfg.bob, 1);
  const room = bob.getRoom(cfg.roomId);
  // What Element does when a room opens: the two thread lists (all, mine), then one page of each.
  await room.createThreadsTimelineSets();
  await room.fetchRoomThreads();
  if (!room.threadsReady) throw new Error("the thread list is not ready after fetchRoomThreads");
  const thread = await until(() => room.getThread(root), "bob to know the thread");
  step("bob sees the thread", { length: thread.length });
  await until(() => thread.initialEventsFetched, "bob's client to load the thread");
  const bodies = await until(() => {
    const found = thread.liveTimeline.getEvents().map((e) => e.getContent().body).filter(Boolean);
    return found.includes("second reply") && found.includes("first reply") && found;
  }, "the replies in bob's thread timeline");
  const listed = room.getThreads().map((t) => t.id);

  // Opening a link to the root, which is not in bob's live timeline: the SDK asks /context for it.
  const timeline = await bob.getEventTimeline(room.getUnfilteredTimelineSet(), root);
  const around = timeline ? timeline.getEvents().map((e) => e.getId()) : [];

  // Anything the SDK does after the thread loaded (read receipts, further fetches) gets a moment to fail.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  for (const client of [alice, bob]) client.stopClient();
  return {
    root, first, second, listed, bodies,
    reply_count: thread.length,
    bundled: thread.rootEvent?.getServerAggregatedRelation("m.thread") ?? null,
    root_in_context: around.includes(root),
    requested: [...requested].sort(),
    ...problems,
  };
}

run(main, cfg.timeoutMs ?? 60000);
