"""``lowband serve --workers N`` (docs/scaling.md): reader worker processes on the same address as the main one,
on one PostgreSQL store. Real processes, real sockets on 127.0.0.1; which process gets a new connection is the
kernel's choice (SO_REUSEPORT), so a check meant for a worker opens connections until a worker answers one
(``X-Lowband-Worker``), at most 80 times: with 3 processes, the chance that none does is 3**-80 per check."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import LOWBAND, free_port

POSTGRES_URL = os.environ.get("LOWBAND_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
V3 = "/_matrix/client/v3"
TRIES = 80


@pytest.fixture
def postgres_url() -> str:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - not installed, not running
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    os.environ["LOWBAND_TEST_POSTGRES_USED"] = POSTGRES_URL  # conftest drops the run's schemas at the end
    schema = os.environ.get("LOWBAND_TEST_SCHEMA_PREFIX", "t_") + "workers_" + secrets.token_hex(4)
    return f"{POSTGRES_URL}?schema={schema}"


class Gateway:
    """A ``lowband serve --workers N`` process tree, spoken to one new connection per request."""

    def __init__(self, tmp_path: Path, database: str, workers: int) -> None:
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        self.log = (tmp_path / "gateway.log").open("w+")
        self.process = subprocess.Popen(
            [LOWBAND, "serve", "--data-dir", str(self.data_dir), "--server-name", "w.test", "--http",
             f"127.0.0.1:{self.port}", "--database", database, "--enable-registration", "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        while "listening on http" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str | None, Any]:  # fmt: skip
        """(status, number of the worker that answered or None for the main process, JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent = dict(headers or {})
            if token:
                sent["Authorization"] = f"Bearer {token}"
            data = None if body is None else json.dumps(body).encode()
            if data is not None:
                sent["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=sent)
            answer = conn.getresponse()
            raw = answer.read()
            return answer.status, answer.getheader("X-Lowband-Worker"), json.loads(raw) if raw else None
        finally:
            conn.close()

    def on_worker(self, method: str, path: str, token: str | None = None) -> tuple[int, str, Any]:
        """The same request on new connections until a worker answers it."""
        for _ in range(TRIES):
            status, worker, body = self.request(method, path, token=token)
            if worker is not None:
                return status, worker, body
        raise AssertionError(f"no worker answered {path} in {TRIES} connections")

    def on_each_worker(self, method: str, path: str, token: str | None = None) -> dict[str, tuple[int, Any]]:
        """The same request on new connections until each of the two workers answered it: {worker: answer}."""
        answers: dict[str, tuple[int, Any]] = {}
        for _ in range(TRIES):
            status, worker, body = self.request(method, path, token=token)
            if worker is not None:
                answers[worker] = (status, body)
                if len(answers) == 2:
                    return answers
        raise AssertionError(f"workers {sorted(answers)} only answered {path} in {TRIES} connections")

    def worker_pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"--worker-of" in cmdline and str(self.data_dir).encode() in cmdline:
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self.worker_pids():  # a test that failed half-way leaves none behind
            os.kill(pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture
def gateway(tmp_path: Path, postgres_url: str) -> Iterator[Gateway]:
    running = Gateway(tmp_path, postgres_url, workers=2)
    try:
        yield running
    finally:
        running.stop()


def _register(gw: Gateway, name: str) -> str:
    status, _, body = gw.request("POST", V3 + "/register", {"username": name, "password": "pw-" + name * 3,
                                                            "auth": {"type": "m.login.dummy"}})  # fmt: skip
    assert status == 200, body
    return str(body["access_token"])


def _send(gw: Gateway, token: str, room: str, txn: str, text: str) -> str:
    status, _, body = gw.request("PUT", f"{V3}/rooms/{quote(room)}/send/m.room.message/{txn}",
                                 {"msgtype": "m.text", "body": text}, token)  # fmt: skip
    assert status == 200, body
    return str(body["event_id"])


def test_workers_serve_reads_at_once_after_the_main_process_writes(gateway: Gateway) -> None:
    gw = gateway
    assert len(gw.worker_pids()) == 2
    alice, bob = _register(gw, "alice"), _register(gw, "bob")
    status, _, body = gw.request("POST", V3 + "/createRoom", {"preset": "public_chat"}, alice)
    assert status == 200, body
    room = body["room_id"]
    r = quote(room)
    # writes that land on a worker's connection go to the main process: every one of these succeeds once
    sent = [_send(gw, alice, room, f"t{n}", f"reading {n}") for n in range(12)]
    assert len(set(sent)) == 12
    assert _send(gw, alice, room, "t3", "reading 3") == sent[3]  # a retried transaction: the same event

    # both workers have read the room's state; bob joins through the main process; they see him at once
    # (room heads are read per request there, not cached)
    for status, members in gw.on_each_worker("GET", f"{V3}/rooms/{r}/joined_members", alice).values():
        assert status == 200 and set(members["joined"]) == {"@alice:w.test"}
    status, _, body = gw.request("POST", f"{V3}/join/{r}", {}, bob)
    assert status == 200, body
    for status, members in gw.on_each_worker("GET", f"{V3}/rooms/{r}/joined_members", bob).values():
        assert status == 200 and set(members["joined"]) == {"@alice:w.test", "@bob:w.test"}
    status, worker, page = gw.on_worker("GET", f"{V3}/rooms/{r}/messages?dir=b&limit=5", bob)
    assert status == 200, page
    assert (page["chunk"][0]["type"], page["chunk"][0]["state_key"]) == ("m.room.member", "@bob:w.test")
    assert [e["content"]["body"] for e in page["chunk"][1:]] == [f"reading {n}" for n in range(11, 7, -1)]
    assert "end" in page

    # the newest event, sent a moment ago through the main process, is on every worker's page
    newest = _send(gw, alice, room, "late", "the newest")
    for _ in range(6):
        status, _, page = gw.on_worker("GET", f"{V3}/rooms/{r}/messages?dir=b&limit=1", bob)
        assert [e["event_id"] for e in page["chunk"]] == [newest]

    # a redaction through the main process: a worker serves the event redacted at once (no stale cache)
    status, _, body = gw.request("PUT", f"{V3}/rooms/{r}/redact/{quote(sent[0])}/x1", {"reason": "wrong"}, alice)
    assert status == 200, body
    for _ in range(4):
        status, _, event = gw.on_worker("GET", f"{V3}/rooms/{r}/event/{quote(sent[0])}", bob)
        assert status == 200 and event["content"] == {}, event

    # a state event redacted through the main process: the workers' state reads show it redacted at once
    status, _, body = gw.request("PUT", f"{V3}/rooms/{r}/state/m.room.topic", {"topic": "boiler room"}, alice)
    assert status == 200, body
    topic_id = body["event_id"]
    for status, topic in gw.on_each_worker("GET", f"{V3}/rooms/{r}/state/m.room.topic", bob).values():
        assert status == 200 and topic == {"topic": "boiler room"}
    assert gw.request("PUT", f"{V3}/rooms/{r}/redact/{quote(topic_id)}/x2", {}, alice)[0] == 200
    for status, topic in gw.on_each_worker("GET", f"{V3}/rooms/{r}/state/m.room.topic", bob).values():
        assert status == 200 and topic == {}, topic

    # paths are passed on as sent: a state key with "/", "?" and "#" (%2F, %3F, %23) stays one key, whichever
    # process got it
    for n in range(20):
        status, _, body = gw.request("PUT", f"{V3}/rooms/{r}/state/org.example.probe/k%2F%3F%23{n}", {"n": n}, alice)
        assert status == 200, body
    for n in range(20):
        status, _, body = gw.request("GET", f"{V3}/rooms/{r}/state/org.example.probe/k%2F%3F%23{n}", token=alice)
        assert status == 200 and body == {"n": n}, body

    # a page that reaches the room's oldest event goes to the main process (only it backfills from peers)
    for _ in range(10):
        status, worker, page = gw.request("GET", f"{V3}/rooms/{r}/messages?dir=b&limit=100", token=bob)
        assert status == 200 and worker is None and "end" not in page
        assert page["chunk"][-1]["type"] == "m.room.create"

    # a logout through the main process ends the token on every worker at once (tokens are not cached there)
    status, _, body = gw.request("POST", V3 + "/login", {"type": "m.login.password", "identifier": {
        "type": "m.id.user", "user": "bob"}, "password": "pw-bobbobbob"})  # fmt: skip
    assert status == 200, body
    second = body["access_token"]
    assert gw.on_worker("GET", f"{V3}/rooms/{r}/members", second)[0] == 200
    status, worker, _ = gw.request("POST", V3 + "/logout", {}, second)
    assert status == 200 and worker is None
    for _ in range(4):
        status, _, body = gw.on_worker("GET", f"{V3}/rooms/{r}/members", second)
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body

    # the forwarding headers are believed only with the workers' secret: the main process refuses a guess, a
    # worker puts its own in their place
    statuses = set()
    for _ in range(TRIES):
        status, _, body = gw.request("GET", "/_matrix/client/versions", headers={
            "X-Lowband-Worker-Secret": "guess", "X-Lowband-Client-Address": "10.0.0.9"})  # fmt: skip
        assert status == 200 or (status == 403 and body["errcode"] == "M_FORBIDDEN"), body
        statuses.add(status)
    assert statuses == {200, 403}


def test_an_erasure_reaches_the_workers(gateway: Gateway) -> None:
    gw = gateway
    alice, bob = _register(gw, "alice"), _register(gw, "bob")
    room = gw.request("POST", V3 + "/createRoom", {"preset": "public_chat"}, alice)[2]["room_id"]
    r = quote(room)
    assert gw.request("POST", f"{V3}/join/{r}", {}, bob)[0] == 200
    said = _send(gw, bob, room, "b1", "something bob regrets")
    _send(gw, alice, room, "a1", "after it")
    # an erased sender's events are served redacted to those who were not joined when they were sent
    carol = _register(gw, "carol")
    assert gw.request("POST", f"{V3}/join/{r}", {}, carol)[0] == 200
    status, _, event = gw.on_worker("GET", f"{V3}/rooms/{r}/event/{quote(said)}", carol)
    assert event["content"]["body"] == "something bob regrets"
    status, _, body = gw.request("POST", V3 + "/account/deactivate", {"erase": True, "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
        "password": "pw-bobbobbob"}}, bob)  # fmt: skip
    assert status == 200, body
    # both workers serve it redacted from the next request on (each asks the store whether a sender was erased)
    for status, event in gw.on_each_worker("GET", f"{V3}/rooms/{r}/event/{quote(said)}", carol).values():
        assert status == 200 and event["content"] == {}, event
    status, _, page = gw.on_worker("GET", f"{V3}/rooms/{r}/messages?dir=b&limit=10", carol)
    assert [e["content"] for e in page["chunk"] if e["event_id"] == said] == [{}]


def test_a_dead_worker_is_started_again_and_all_stop_with_the_main_process(gateway: Gateway) -> None:
    gw = gateway
    first = sorted(gw.worker_pids())
    assert len(first) == 2
    # alice types before the worker dies: the new worker has the notice from the main process's snapshot
    token = _register(gw, "alice")
    status, _, body = gw.request("POST", V3 + "/createRoom", {}, token)
    assert status == 200, body
    room = body["room_id"]
    assert gw.request("PUT", f"{V3}/rooms/{quote(room)}/typing/{quote('@alice:w.test')}",
                      {"typing": True, "timeout": 120000}, token)[0] == 200  # fmt: skip
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    # one look at /proc per round: two looks let a worker still dying count as running in the first and be
    # gone in the second
    while not (len(pids := gw.worker_pids()) == 2 and first[0] not in pids):
        assert time.monotonic() < deadline, gw.output()
        time.sleep(0.1)
    assert "reader worker" in gw.output() and "starting it again" in gw.output()
    # the status snapshot (every 5 s) counts the restart
    deadline = time.monotonic() + 20
    while True:
        try:
            workers = json.loads((gw.data_dir / "status.json").read_text())["workers"]
        except (OSError, ValueError):
            workers = None
        if workers and workers["restarts"] == 1:
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.2)
    assert workers["configured"] == 2 and workers["running"] == 2 and sorted(workers["pids"]) == sorted(gw.worker_pids())
    assert gw.on_worker("GET", V3 + "/rooms/%21nowhere%3Aw.test/members", token)[0] == 403
    for status, synced in gw.on_each_worker("GET", V3 + "/sync?set_presence=offline", token).values():
        assert status == 200, synced
        assert {"type": "m.typing", "content": {"user_ids": ["@alice:w.test"]}} in (
            synced["rooms"]["join"][room]["ephemeral"]["events"])  # fmt: skip

    # the main process killed outright: the workers read end-of-file on their pipe and stop
    pids = gw.worker_pids()
    gw.process.kill()
    gw.process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their main process"
        time.sleep(0.1)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
    except (OSError, IndexError):
        return b"Z"


def test_workers_need_the_postgresql_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOWBAND_TEST_DATABASE_URL"}  # this one on SQLite
    done = subprocess.run([LOWBAND, "serve", "--data-dir", str(tmp_path / "data"), "--http", "127.0.0.1:0",
                           "--workers", "2"], check=False, capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2
    assert "--workers needs the PostgreSQL store" in done.stderr.strip().splitlines()[-1]
    done = subprocess.run([LOWBAND, "serve", "--data-dir", str(tmp_path / "data"), "--workers", "-1"],
                          check=False, capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2 and "-1 workers: 0 to 64" in done.stderr


class Pinned:
    """One keep-alive connection, on the process the kernel gave it (every request on it goes there)."""

    def __init__(self, gw: Gateway, token: str, want_worker: bool) -> None:
        # a read every process answers tells which one holds the connection: new connections until one fits
        for _ in range(TRIES):
            self.conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
            self.worker = self._probe(token)
            if (self.worker is not None) == want_worker:
                self.token = token
                return
            self.conn.close()
        raise AssertionError(f"no connection to {'a worker' if want_worker else 'the main process'} in {TRIES}")

    def _probe(self, token: str) -> str | None:
        self.conn.request("GET", V3 + "/capabilities", headers={"Authorization": f"Bearer {token}"})
        answer = self.conn.getresponse()
        answer.read()
        # /capabilities is forwarded: the main process answers it either way; the worker's middleware does not
        # name itself on a forwarded answer, so ask a worker-served read as well
        self.conn.request("GET", V3 + "/rooms/%21none%3Aw.test/members", headers={"Authorization": f"Bearer {token}"})
        answer = self.conn.getresponse()
        answer.read()
        return answer.getheader("X-Lowband-Worker")

    def sync(self, since: str | None = None, timeout_ms: int = 0, presence: str = "offline") -> tuple[str | None, Any]:
        """A /sync; ``set_presence`` offline unless told (presence changes wake long-polls too)."""
        path = f"{V3}/sync?timeout={timeout_ms}&set_presence={presence}" + (f"&since={since}" if since else "")
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
        answer = self.conn.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 200, body
        return answer.getheader("X-Lowband-Worker"), body

    def close(self) -> None:
        self.conn.close()


def _timeline(body: Any, room: str) -> list[str]:
    joined = body["rooms"]["join"].get(room)
    return [e["event_id"] for e in joined["timeline"]["events"]] if joined else []


def _long_poll(pinned: Pinned, since: str, timeout_ms: int = 20_000) -> tuple[Any, float, threading.Thread, list[Any]]:
    """Start a /sync long-poll on ``pinned`` in a thread: (None, start time, thread, [answer when it came])."""
    found: list[Any] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: found.append(pinned.sync(since, timeout_ms)[1]), daemon=True)
    thread.start()
    time.sleep(0.5)  # parked on the worker before anything is written
    return None, started, thread, found


def _answer(thread: threading.Thread, found: list[Any], started: float) -> tuple[Any, float]:
    thread.join(timeout=30)
    assert found, "the long-poll did not answer"
    return found[0], time.monotonic() - started


def test_sync_in_a_worker_is_woken_by_the_main_process(gateway: Gateway) -> None:
    gw = gateway
    alice, bob = _register(gw, "alice"), _register(gw, "bob")
    status, _, body = gw.request("POST", V3 + "/createRoom", {"preset": "public_chat"}, alice)
    assert status == 200, body
    room = body["room_id"]
    r = quote(room)
    assert gw.request("POST", f"{V3}/join/{r}", {}, bob)[0] == 200
    first = _send(gw, alice, room, "a0", "before the sync")
    # the feed and the presence route are the workers' only: a client is refused, with or without a secret
    for method, path in (("GET", "/_lowband/worker/v1/feed"), ("POST", "/_lowband/worker/v1/synced")):
        for headers in ({}, {"X-Lowband-Worker-Secret": "guessed"}):
            status, _, refused = gw.request(method, path, {"user_id": "@bob:w.test", "set_presence": "online"},
                                            headers=headers)  # fmt: skip
            assert status == 403 and refused["errcode"] == "M_FORBIDDEN", (path, headers, refused)
    on_worker, on_main = Pinned(gw, bob, want_worker=True), Pinned(gw, bob, want_worker=False)
    try:
        # an initial /sync answered by the worker itself, from the store
        worker, initial = on_worker.sync()
        assert worker == on_worker.worker
        assert first in _timeline(initial, room)
        assert initial["rooms"]["join"][room]["unread_notifications"]["notification_count"] >= 1

        # a long-poll parked on the worker answers when the main process stores a message
        _, started, thread, found = _long_poll(on_worker, initial["next_batch"])
        sent = _send(gw, alice, room, "a1", "woken")
        answer, took = _answer(thread, found, started)
        assert _timeline(answer, room) == [sent] and took < 15, (took, answer)
        # with its unread count (judged by the main process's push rules before the worker serves it)
        assert answer["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 2

        # typing, set through the main process, wakes the worker's long-poll and is in it
        _, started, thread, found = _long_poll(on_worker, answer["next_batch"])
        assert gw.request("PUT", f"{V3}/rooms/{r}/typing/{quote('@alice:w.test')}",
                          {"typing": True, "timeout": 30000}, alice)[0] == 200  # fmt: skip
        typed, took = _answer(thread, found, started)
        ephemeral = typed["rooms"]["join"][room]["ephemeral"]["events"]
        assert {"type": "m.typing", "content": {"user_ids": ["@alice:w.test"]}} in ephemeral, typed
        assert took < 15

        # tokens cross processes: the worker's token on the main process and the main's on the worker give
        # each event once, and never a position below the token's
        after_typing = typed["next_batch"]
        second = _send(gw, alice, room, "a2", "second")
        _, from_main = on_main.sync(after_typing)
        assert _timeline(from_main, room) == [second]
        third = _send(gw, alice, room, "a3", "third")
        _, from_worker = on_worker.sync(from_main["next_batch"])
        assert _timeline(from_worker, room) == [third]
        assert int(from_worker["next_batch"][1:].split("_")[0]) >= int(from_main["next_batch"][1:].split("_")[0])
        # the typing notice was already given: not again, on either process
        assert room not in from_worker["rooms"]["join"] or not any(
            e["type"] == "m.typing" for e in from_worker["rooms"]["join"][room]["ephemeral"]["events"])  # fmt: skip

        # a to-device message sent through the main process: delivered once by the worker, acknowledged by the
        # next token (the worker deletes it), not delivered again by the main process
        devices = gw.request("GET", V3 + "/devices", token=bob)[2]["devices"]
        status, _, _ = gw.request("PUT", f"{V3}/sendToDevice/m.test/d1",
                                  {"messages": {"@bob:w.test": {devices[0]["device_id"]: {"n": 1}}}}, alice)  # fmt: skip
        assert status == 200
        _, delivered = on_worker.sync(from_worker["next_batch"])
        assert delivered["to_device"]["events"] == [{"sender": "@alice:w.test", "type": "m.test", "content": {"n": 1}}]
        _, again = on_worker.sync(delivered["next_batch"])
        assert again["to_device"]["events"] == []
        _, on_main_again = on_main.sync(from_worker["next_batch"])  # the older token: already acknowledged
        assert on_main_again["to_device"]["events"] == []

        # presence: bob's /sync on the worker makes him online in the main process, which keeps presence
        on_worker.sync(again["next_batch"], presence="online")
        deadline = time.monotonic() + 10  # the worker tells the main process in the background
        while (seen := gw.request("GET", f"{V3}/presence/{quote('@bob:w.test')}/status", token=alice)[2]).get(
                "presence") != "online":  # fmt: skip
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        # an explicit change through the main process reaches the worker's /sync (the feed)
        assert gw.request("PUT", f"{V3}/presence/{quote('@alice:w.test')}/status",
                          {"presence": "unavailable", "status_msg": "in the boiler room"}, alice)[0] == 200  # fmt: skip
        deadline = time.monotonic() + 10
        since = again["next_batch"]
        while True:
            _, changed = on_worker.sync(since, 2000)
            since = changed["next_batch"]
            events = [e for e in changed["presence"]["events"] if e["sender"] == "@alice:w.test"]
            if events:
                assert events[-1]["content"]["presence"] == "unavailable"
                assert events[-1]["content"]["status_msg"] == "in the boiler room"
                break
            assert time.monotonic() < deadline, changed
    finally:
        on_worker.close()
        on_main.close()
