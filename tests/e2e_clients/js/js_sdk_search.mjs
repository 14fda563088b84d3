// matrix-js-sdk against search, the user directory, room tags and peeking, run by
// tests/e2e_clients/test_js_sdk_search.py. Config (argv[2]): baseUrl, roomId (alice and bob joined, with
// messages), worldRoomId (world_readable, only alice in it), alice, bob and visitor ({userId, accessToken}).
//
// 1. alice searches the room's messages (searchRoomEvents, then backPaginateRoomEventsSearch for page two).
// 2. alice finds bob in the user directory (searchUserDirectory).
// 3. alice tags the room (setRoomTag); her synced Room object gets the tag (m.tag room account data).
// 4. visitor peeks into the world_readable room (peekInRoom: /rooms/{id}/initialSync, then /events?room_id=)
//    and sees a message alice sends afterwards.
// Every unhandled rejection, SDK error line and failed request to these endpoints is reported.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step, until } from "./report.mjs";

logger.setLevel("warn");
const cfg = config();
const problems = { rejections: [], errors: [], failed_requests: [] };
const requested = new Set();
const ENDPOINTS = ["/search", "/user_directory/search", "/tags/", "/initialSync", "/events?"];

process.on("unhandledRejection", (reason) => problems.rejections.push(String(reason && reason.stack || reason)));
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.error = (...args) => {
  problems.errors.push(args.map(String).join(" ").slice(0, 500));
  toStderr(...args);
};
console.warn = toStderr;

async function watchedFetch(input, init) {
  const url = String(input instanceof Request ? input.url : input);
  const response = await fetch(input, init);
  for (const endpoint of ENDPOINTS) {
    if (!url.includes(endpoint)) continue;
    requested.add(endpoint);
    if (!response.ok) problems.failed_requests.push(`${response.status} ${url.replace(cfg.baseUrl, "")}`);
  }
  return response;
}

function client(account) {
  return sdk.createClient({
    baseUrl: cfg.baseUrl, userId: account.userId, accessToken: account.accessToken, fetchFn: watchedFetch,
  });
}

async function started(account) {
  const c = client(account);
  const prepared = new Promise((resolve, reject) => {
    c.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
      if (state === "ERROR") reject(new Error(`${account.userId} sync error`));
    });
  });
  await c.startClient({ initialSyncLimit: 5 });
  await prepared;
  return c;
}

async function main() {
  const alice = await started(cfg.alice);
  await until(() => alice.getRoom(cfg.roomId), "alice to see the room");
  step("alice started");

  // 1. search, two pages
  const search = await alice.searchRoomEvents({ term: "valve" });
  const firstPage = search.results.map((r) => r.context.getEvent().getContent().body);
  const more = search.next_batch ? await alice.backPaginateRoomEventsSearch(search) : search;
  const allBodies = more.results.map((r) => r.context.getEvent().getContent().body);
  step("searched", { firstPage: firstPage.length, all: allBodies.length });

  // 2. user directory
  const directory = await alice.searchUserDirectory({ term: cfg.bob.userId.slice(1, 8) });
  const found = directory.results.map((u) => u.user_id);

  // 3. tags, back through /sync
  await alice.setRoomTag(cfg.roomId, "m.favourite", { order: 0.5 });
  const room = alice.getRoom(cfg.roomId);
  const tags = await until(() => room.tags["m.favourite"] && room.tags, "the tag to come back in /sync");

  // 4. peeking
  const visitor = client(cfg.visitor);
  const peeked = await visitor.peekInRoom(cfg.worldRoomId);
  const before = peeked.getLiveTimeline().getEvents().map((e) => e.getContent().body).filter(Boolean);
  await new Promise((resolve) => setTimeout(resolve, 300)); // the peek poll is waiting on /events
  await alice.sendMessage(cfg.worldRoomId, { msgtype: "m.text", body: "while you peek" });
  const after = await until(() => {
    const bodies = peeked.getLiveTimeline().getEvents().map((e) => e.getContent().body);
    return bodies.includes("while you peek") && bodies;
  }, "the peeked room to get the new message");
  visitor.stopPeeking();

  await new Promise((resolve) => setTimeout(resolve, 500));
  alice.stopClient();
  visitor.stopClient();
  return {
    first_page: firstPage, all_bodies: allBodies, count: search.count, highlights: search.highlights,
    found, tags, before, after, requested: [...requested].sort(), ...problems,
  };
}

run(main, cfg.timeoutMs ?? 60000);
