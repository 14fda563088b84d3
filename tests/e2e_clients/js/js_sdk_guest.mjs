// matrix-js-sdk as a guest, run by tests/e2e_clients/test_js_sdk_guest.py. Config (argv[2]): baseUrl,
// worldRoomId (history_visibility world_readable), eventId (a message in it), privateRoomId (not readable),
// openRoomId (m.room.guest_access can_join), timeoutMs.
//
// 1. registerGuest (POST /register?kind=guest); whoami says is_guest.
// 2. the guest reads the world_readable room without joining: /messages, /event, /state.
// 3. the guest is refused what guests may not do (createRoom: M_GUEST_ACCESS_FORBIDDEN) and a room that is
//    not world_readable (/messages: M_FORBIDDEN).
// 4. the guest joins the can_join room and sends a message there.
// Every unhandled rejection and SDK error line is reported.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { config, run, step } from "./report.mjs";

logger.setLevel("warn");
const cfg = config();
const problems = { rejections: [], errors: [] };

process.on("unhandledRejection", (reason) => problems.rejections.push(String(reason && reason.stack || reason)));
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.error = (...args) => {
  problems.errors.push(args.map(String).join(" ").slice(0, 500));
  toStderr(...args);
};
console.warn = toStderr;

async function refusal(call) {
  try {
    await call();
  } catch (err) {
    return err.errcode || String(err);
  }
  return null;
}

run(async () => {
  const anonymous = sdk.createClient({ baseUrl: cfg.baseUrl });
  const registered = await anonymous.registerGuest({ body: {} });
  step("registered", { userId: registered.user_id });
  const guest = sdk.createClient({
    baseUrl: cfg.baseUrl, userId: registered.user_id, accessToken: registered.access_token,
    deviceId: registered.device_id,
  });
  guest.setGuest(true);
  const whoami = await guest.whoami();
  const page = await guest.createMessagesRequest(cfg.worldRoomId, null, 10, sdk.Direction.Backward);
  const event = await guest.fetchRoomEvent(cfg.worldRoomId, cfg.eventId);
  const state = await guest.roomState(cfg.worldRoomId);
  step("read the world_readable room", { events: page.chunk.length });
  const createRefused = await refusal(() => guest.createRoom({}));
  const privateRefused = await refusal(
    () => guest.createMessagesRequest(cfg.privateRoomId, null, 10, sdk.Direction.Backward));
  await guest.joinRoom(cfg.openRoomId);
  const sent = await guest.sendMessage(cfg.openRoomId, { msgtype: "m.text", body: "hello from a guest" });
  step("joined and sent", { eventId: sent.event_id });
  return {
    ...problems,
    userId: registered.user_id,
    isGuest: whoami.is_guest,
    bodies: page.chunk.filter((e) => e.type === "m.room.message").map((e) => e.content.body),
    eventBody: event.content && event.content.body,
    stateTypes: [...new Set(state.map((e) => e.type))].sort(),
    createRefused,
    privateRefused,
    sentEventId: sent.event_id,
  };
}, cfg.timeoutMs);
