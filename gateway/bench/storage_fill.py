"""Filling a gateway's store with room events quickly, for ``lowband bench storage`` (run as a child process).

The events go through the gateway's own event path, in process and without
HTTP: :meth:`RoomService.send_batch` builds, authorises, signs and persists
them exactly as a client's sends would be, committed ``BATCH`` at a time,
and the push component judges each (notification rows, the judged position).
So a filled store holds what a store grown by real sends holds (events,
state groups, the room row, notifications), only faster (about 2,000 events/s on SQLite
here, against a few hundred through HTTP one at a time). The gateway must
not be running on the same data dir meanwhile.

Run as ``python -m lowband.gateway.bench.storage_fill --data-dir D
[--database URL] --room ROOM --sender USER --count N --first K --mark M``;
it prints one JSON line: ``{"events": N, "seconds": s, "marked_event_id": …}``
(the ID of the M-th event it made, from 0). Exit status 1 and one line on stderr
when the store cannot be opened or a send is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

BATCH = 1000
#: the push rules' judging, which follows the fill, may stand still this long before the fill fails (it only has
#: to keep moving: on PostgreSQL at 10,000,000 events it was 2,500,000 events behind when the sends ended, and 600 s
#: in all was not enough)
JUDGE_STALL_S = 120.0
#: Every kind of event the bench stores: one telemetry notice in ``TELEMETRY_EVERY``, the rest text.
TELEMETRY_EVERY = 2


def telemetry_content(n: int) -> dict[str, Any]:
    """A sensor reading as the MQTT bridge posts it (``bridges/mqtt/payload.py``): an ``m.notice`` with its SenML."""
    tenths, humidity = 150 + n % 120, 30 + n % 50
    return {
        "msgtype": "m.notice",
        "body": f"temperature {tenths // 10}.{tenths % 10} Cel, humidity {humidity} %RH",
        "org.lowband.senml": [
            {"n": "temperature", "bt": 1_700_000_000 + n * 60, "u": "Cel", "v": tenths, "scale_": -1},
            {"n": "humidity", "u": "%RH", "v": humidity},
        ],
        "org.lowband.mqtt": {"topic": "zigbee2mqtt/kitchen"},
    }


def text_content(n: int) -> dict[str, Any]:
    """A short chat message (about 60 characters of body)."""
    return {"msgtype": "m.text", "body": f"Message {n}: the greenhouse door is open again, closing it now."}


def content(n: int) -> dict[str, Any]:
    """The ``n``-th event's content in a filled store (telemetry and text mixed)."""
    return telemetry_content(n) if n % TELEMETRY_EVERY == 0 else text_content(n)


async def fill(data_dir: Path, database: str | None, room_id: str, sender: str, count: int,
               first: int, mark: int = 0) -> dict[str, Any]:  # fmt: skip
    """Send ``count`` events (numbered from ``first``) into ``room_id`` as ``sender``; what :func:`main` prints
    (``mark``: whose event ID it names).

    Raises RuntimeError when a send is refused (the sender not joined …).
    """
    from lowband.gateway.app import open_services
    from lowband.gateway.bench.synapse import SERVER_NAME
    from lowband.gateway.config import Config
    from lowband.gateway.homeserver.notifications import push_of, start_push
    from lowband.gateway.homeserver.rooms.sending import SendRequest, Sent

    services = open_services(Config(server_name=SERVER_NAME, data_dir=data_dir, database_url=database))
    marked_event_id = ""
    start = time.perf_counter()
    # Push rules judge every event as the gateway would (notification rows, the judged position): a store filled
    # without them would make the next gateway judge the whole fill first, holding /sync back meanwhile.
    stop_push = await start_push(services)
    try:
        done = 0
        while done < count:
            size = min(BATCH, count - done)
            requests = [SendRequest(sender, "m.room.message", content(first + done + i)) for i in range(size)]
            results = await services.rooms.send_batch(room_id, requests)
            sent = [result for result in results if isinstance(result, Sent)]
            if len(sent) != len(results):
                refused = next(result for result in results if not isinstance(result, Sent))
                raise RuntimeError(f"send refused: {refused}")
            if done <= mark < done + size:
                marked_event_id = sent[mark - done].event.event_id
            done += size
        evaluator = push_of(services).evaluator
        judged, deadline = -1, 0.0
        while evaluator is not None and evaluator.position < services.store.persisted:
            if evaluator.position != judged:
                judged, deadline = evaluator.position, time.monotonic() + JUDGE_STALL_S
            elif time.monotonic() > deadline:
                raise RuntimeError(f"push rules judged only up to {evaluator.position} of {services.store.persisted}"
                                   f" and stood still for {JUDGE_STALL_S:g} s")  # fmt: skip
            await asyncio.sleep(0.05)
    finally:
        await stop_push()
        services.store.close()
    return {"events": count, "seconds": round(time.perf_counter() - start, 3), "marked_event_id": marked_event_id}


def main(argv: list[str] | None = None) -> int:
    """The child process's entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="storage_fill")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--database")
    parser.add_argument("--room", required=True)
    parser.add_argument("--sender", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--mark", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        done = asyncio.run(
            fill(Path(args.data_dir), args.database, args.room, args.sender, args.count, args.first, args.mark)
        )
    except Exception as exc:  # noqa: BLE001 — any failure of the store or a send: one line for the parent's BenchError
        sys.stderr.write(
            f"filling the store failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        )
        return 1
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
