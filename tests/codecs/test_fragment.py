"""Tests of lowband.codecs.fragment: golden vectors, reassembly rules, bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs.errors import WireError
from lowband.codecs.fragment import Reassembler, fragment

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "fragment_vectors.json").read_text())
FAST = settings(max_examples=150, deadline=None)


def frag(msg_id: int, index: int, data: bytes, last: bool = False) -> bytes:
    return bytes((msg_id, index | (0x80 if last else 0))) + data


# --- golden vectors -------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector_fragments_exactly(vec: dict) -> None:
    payload = bytes.fromhex(vec["payload"])
    assert [f.hex() for f in fragment(payload, vec["msg_id"], vec["mtu"])] == vec["fragments"]


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector_layout_and_reassembly(vec: dict) -> None:
    payload = bytes.fromhex(vec["payload"])
    frags = [bytes.fromhex(h) for h in vec["fragments"]]
    chunk = vec["mtu"] - 2
    for i, f in enumerate(frags):
        is_last = i == len(frags) - 1
        assert f[0] == vec["msg_id"]
        assert f[1] == i | (0x80 if is_last else 0)
        assert len(f) == vec["mtu"] if not is_last else 3 <= len(f) <= vec["mtu"]
    assert b"".join(f[2:] for f in frags) == payload
    assert len(payload) > (len(frags) - 1) * chunk
    # Reassemble in reverse order: only the final feed returns the payload.
    r = Reassembler(max_message_bytes=8192)
    results = [r.feed("dev", f, 0.0) for f in reversed(frags)]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == payload
    assert r.completed == 1 and r.pending == 0


def test_vector_set_covers_the_brief() -> None:
    vecs = VECTORS["vectors"]
    assert any(len(v["fragments"]) == 1 for v in vecs)
    assert any(v["mtu"] == 51 and len(v["payload"]) == 240 for v in vecs)
    assert any(v["mtu"] == 3 for v in vecs)
    assert any(len(v["fragments"]) == 128 for v in vecs)
    assert any(len(v["payload"]) // 2 % (v["mtu"] - 2) == 0 and len(v["fragments"]) > 1 for v in vecs)


# --- fragment() -----------------------------------------------------------


def test_mtu_51_with_120_bytes() -> None:
    frags = fragment(bytes(range(120)), 9, 51)
    assert [len(f) for f in frags] == [51, 51, 24]
    assert [f[1] for f in frags] == [0x00, 0x01, 0x82]


@pytest.mark.parametrize(
    ("payload", "msg_id", "mtu"),
    [
        (b"x", 0, 2),
        (b"x", 0, 0),
        (b"x", -1, 51),
        (b"x", 256, 51),
        (b"", 0, 51),
        (bytes(129), 0, 3),
        (bytes(49 * 128 + 1), 0, 51),
    ],
)
def test_fragment_refuses(payload: bytes, msg_id: int, mtu: int) -> None:
    with pytest.raises(WireError):
        fragment(payload, msg_id, mtu)


def test_fragment_limits_are_inclusive() -> None:
    assert len(fragment(bytes(128), 255, 3)) == 128
    assert len(fragment(bytes(49 * 128), 0, 51)) == 128


# --- round trips ----------------------------------------------------------


@FAST
@given(
    payload=st.binary(min_size=1, max_size=600),
    mtu=st.integers(3, 80),
    msg_id=st.integers(0, 255),
    data=st.data(),
)
def test_round_trip_shuffled_with_duplicates(payload: bytes, mtu: int, msg_id: int, data: st.DataObject) -> None:
    chunk = mtu - 2
    if -(-len(payload) // chunk) > 128:
        with pytest.raises(WireError):
            fragment(payload, msg_id, mtu)
        return
    frags = fragment(payload, msg_id, mtu)
    assert all(len(f) <= mtu for f in frags)
    dups = data.draw(st.lists(st.sampled_from(frags), max_size=5))
    order = data.draw(st.permutations(frags + dups))
    r = Reassembler()
    # The message completes exactly when its last missing fragment arrives;
    # duplicates before that are ignored, after it they start a new buffer.
    seen: set[bytes] = set()
    results = []
    for f in order:
        seen.add(f)
        out = r.feed(b"addr", f, 1.0)
        if out is not None:
            results.append(out)
            assert seen == set(frags)
            break
    assert results == [payload]
    assert r.completed == 1
    assert (r.malformed, r.inconsistent, r.oversize, r.evicted) == (0, 0, 0, 0)


def test_interleaved_sources_and_ids() -> None:
    messages = {
        ("dev-a", 1): bytes(range(100)),
        ("dev-a", 2): b"A2" * 40,
        ("dev-b", 1): b"B1" * 60,
        ("dev-b", 2): bytes(range(255, 155, -1)),
    }
    queues = {key: fragment(p, key[1], 20) for key, p in messages.items()}
    r = Reassembler(max_messages=4)
    done = {}
    while any(queues.values()):
        for (src, mid), q in queues.items():
            if q:
                out = r.feed(src, q.pop(), 5.0)  # each message in reverse order
                if out is not None:
                    done[(src, mid)] = out
    assert done == messages
    assert r.evicted == 0 and r.pending == 0


def test_same_msg_id_from_two_sources_does_not_mix() -> None:
    r = Reassembler()
    assert r.feed(1, frag(7, 0, b"aa"), 0) is None
    assert r.feed(2, frag(7, 0, b"bb"), 0) is None
    assert r.feed(2, frag(7, 1, b"BB", last=True), 0) == b"bbBB"
    assert r.feed(1, frag(7, 1, b"AA", last=True), 0) == b"aaAA"


def test_single_fragment_needs_no_buffer_and_evicts_nothing() -> None:
    r = Reassembler(max_messages=1)
    assert r.feed("s", frag(1, 0, b"held"), 0) is None
    assert r.feed("s", frag(2, 0, b"single", last=True), 0) == b"single"
    assert r.evicted == 0 and r.pending == 1


# --- drops ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"", b"\x01", b"\x01\x80"])
def test_short_fragments_are_malformed(bad: bytes) -> None:
    r = Reassembler()
    assert r.feed("s", bad, 0) is None
    assert r.malformed == 1 and r.pending == 0


def test_exact_duplicate_is_ignored() -> None:
    r = Reassembler()
    assert r.feed("s", frag(3, 0, b"ab"), 0) is None
    assert r.feed("s", frag(3, 0, b"ab"), 0) is None
    assert r.feed("s", frag(3, 1, b"c", last=True), 0) == b"abc"
    assert r.inconsistent == 0


def test_same_index_with_other_data_drops_message() -> None:
    r = Reassembler()
    r.feed("s", frag(3, 0, b"ab"), 0)
    assert r.feed("s", frag(3, 0, b"xy"), 0) is None
    assert r.inconsistent == 1 and r.pending == 0


def test_index_above_last_drops_message() -> None:
    r = Reassembler()
    r.feed("s", frag(4, 1, b"b", last=True), 0)
    assert r.feed("s", frag(4, 2, b"c"), 0) is None
    assert r.inconsistent == 1 and r.pending == 0


def test_second_different_last_drops_message() -> None:
    r = Reassembler()
    r.feed("s", frag(4, 2, b"c", last=True), 0)
    assert r.feed("s", frag(4, 3, b"d", last=True), 0) is None
    assert r.inconsistent == 1 and r.pending == 0


def test_last_below_seen_index_drops_message() -> None:
    r = Reassembler()
    r.feed("s", frag(4, 5, b"f"), 0)
    assert r.feed("s", frag(4, 2, b"c", last=True), 0) is None
    assert r.inconsistent == 1 and r.pending == 0


def test_same_index_with_other_last_flag_drops_message() -> None:
    r = Reassembler()
    r.feed("s", frag(4, 1, b"b", last=True), 0)
    assert r.feed("s", frag(4, 1, b"b"), 0) is None
    assert r.inconsistent == 1 and r.pending == 0


def test_oversize_message_is_dropped() -> None:
    r = Reassembler(max_message_bytes=10)
    assert r.feed("s", frag(1, 0, b"x" * 6), 0) is None
    assert r.feed("s", frag(1, 1, b"y" * 5), 0) is None
    assert r.oversize == 1 and r.pending == 0
    # A single fragment bigger than the limit never gets a buffer.
    assert r.feed("s", frag(2, 0, b"z" * 11, last=True), 0) is None
    assert r.feed("s", frag(3, 0, b"z" * 11), 0) is None
    assert r.oversize == 3 and r.pending == 0
    # Exactly at the limit is fine.
    r.feed("s", frag(4, 0, b"x" * 6), 0)
    assert r.feed("s", frag(4, 1, b"y" * 4, last=True), 0) == b"x" * 6 + b"y" * 4


def test_oldest_buffer_is_evicted_when_full() -> None:
    r = Reassembler(max_messages=2)
    r.feed("s", frag(1, 0, b"1"), 0)
    r.feed("s", frag(2, 0, b"2"), 1)
    r.feed("s", frag(3, 0, b"3"), 2)  # evicts msg 1
    assert r.evicted == 1 and r.pending == 2
    assert r.feed("s", frag(2, 1, b"2", last=True), 3) == b"22"
    assert r.feed("s", frag(3, 1, b"3", last=True), 3) == b"33"
    # msg 1 lost its index 0: its LAST alone starts a new, incomplete buffer.
    assert r.feed("s", frag(1, 1, b"1", last=True), 3) is None
    assert r.pending == 1


def test_fragment_of_existing_message_does_not_evict() -> None:
    r = Reassembler(max_messages=1)
    r.feed("s", frag(1, 0, b"a"), 0)
    r.feed("s", frag(1, 1, b"b"), 0)
    assert r.feed("s", frag(1, 2, b"c", last=True), 0) == b"abc"
    assert r.evicted == 0


def test_expiry_and_next_deadline() -> None:
    r = Reassembler(max_age=10.0)
    assert r.next_deadline() is None
    r.feed("s", frag(1, 0, b"a"), 100.0)
    r.feed("s", frag(2, 0, b"b"), 104.0)
    assert r.next_deadline() == 110.0
    # Later fragments do not extend a buffer's life.
    r.feed("s", frag(1, 1, b"a"), 109.0)
    assert r.next_deadline() == 110.0
    assert r.expire(109.9) == 0
    assert r.expire(110.0) == 1
    assert r.next_deadline() == 114.0
    # feed() expires too, before it looks at the new fragment.
    assert r.feed("s", frag(2, 1, b"b", last=True), 114.0) is None
    assert r.expired == 2
    assert r.pending == 1  # the LAST above opened a new buffer
    assert r.next_deadline() == 124.0


def test_late_duplicate_after_completion_starts_a_buffer_that_expires() -> None:
    r = Reassembler(max_age=5.0)
    frags = fragment(b"abcdef", 9, 4)
    for f in frags:
        out = r.feed("s", f, 0.0)
    assert out == b"abcdef"
    assert r.feed("s", frags[0], 1.0) is None
    assert r.pending == 1
    assert r.expire(6.0) == 1 and r.pending == 0


def test_constructor_rejects_bad_bounds() -> None:
    for kwargs in ({"max_messages": 0}, {"max_message_bytes": 0}, {"max_age": 0}):
        with pytest.raises(ValueError):
            Reassembler(**kwargs)


# --- hostile input --------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.one_of(
                st.binary(max_size=40),
                st.builds(
                    lambda m, i, d: bytes((m, i)) + d,
                    st.integers(0, 3),
                    st.integers(0, 255),
                    st.binary(min_size=1, max_size=30),
                ),
            ),
            st.floats(0, 200, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_arbitrary_fragments_never_raise_and_stay_bounded(
    feeds: list[tuple[int, bytes, float]],
) -> None:
    r = Reassembler(max_messages=3, max_message_bytes=64, max_age=30.0)
    for source, data, now in sorted(feeds, key=lambda t: t[2]):
        out = r.feed(source, data, now)
        assert out is None or 1 <= len(out) <= 64
        assert r.pending <= 3
        assert all(p.size <= 64 for p in r._buffers.values())
        deadline = r.next_deadline()
        assert deadline is None or deadline > now
