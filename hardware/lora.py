"""LoRa time on air and the duty-cycle budget that spends it.

Rules:
- Time on air follows the formula of the SX1276/77/78/79 datasheet (section
  4.1.1.7) and Semtech AN1200.13 for spreading factors 7 to 12. SF5 and SF6
  (SX126x only) use a different formula and are refused rather than
  approximated.
- Times passed in as ``now`` are seconds on any monotonic clock; airtime is
  milliseconds, the unit radio documents and calculators use.
- ``DutyCycleBudget`` is sans-I/O: it never reads a clock and never sleeps.
  It answers "may I start a transmission of this length now?" and "when is
  the earliest I may?" so that, on one sub-band, the airtime inside *every*
  window of ``window_s`` seconds stays at or below ``duty_cycle × window``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MIN_SF",
    "MAX_SF",
    "MAX_PAYLOAD",
    "LDRO_SYMBOL_MS",
    "DutyCycleBudget",
    "DutyCycleError",
    "SubBandBudgets",
    "low_data_rate_optimize_needed",
    "payload_symbols",
    "symbol_time_ms",
    "time_on_air_ms",
]

MIN_SF = 7
MAX_SF = 12
MAX_PAYLOAD = 255  # the LoRa length field is one byte
# The datasheets mandate low data rate optimisation once a symbol lasts
# 16 ms or more: SF11 and SF12 at 125 kHz, SF12 at 250 kHz.
LDRO_SYMBOL_MS = 16.0

# Slack for floating-point comparisons of airtime sums (1 ns). It is far below
# anything a regulator or a radio can resolve, and it keeps "exactly at the
# limit" from flipping to "over" because of rounding in a sum.
_EPS_MS = 1e-6


def symbol_time_ms(sf: int, bw_hz: float) -> float:
    """Duration of one LoRa symbol, 2**sf / bandwidth, in milliseconds.

    Raises ValueError for a spreading factor outside 7..12 or a bandwidth
    that is not positive.
    """
    _check_sf_bw(sf, bw_hz)
    return (1 << sf) * 1000.0 / bw_hz


def low_data_rate_optimize_needed(sf: int, bw_hz: float) -> bool:
    """True when the symbol time is 16 ms or more (SF11/SF12 at 125 kHz, SF12 at 250 kHz)."""
    return symbol_time_ms(sf, bw_hz) >= LDRO_SYMBOL_MS


def payload_symbols(
    payload_len: int,
    sf: int,
    cr: int = 1,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate_optimize: bool = False,
) -> int:
    """Number of symbols after the preamble: 8 fixed plus the coded payload.

    ``8 + max(ceil((8·PL − 4·SF + 28 + 16·CRC − 20·IH) / (4·(SF − 2·DE))) · (CR + 4), 0)``
    where IH is 1 for an implicit header and DE is 1 with low data rate
    optimisation. Raises ValueError for a length outside 0..255, a coding
    rate outside 1..4 or a spreading factor outside 7..12.
    """
    _check_sf(sf)
    if not isinstance(payload_len, int) or not 0 <= payload_len <= MAX_PAYLOAD:
        raise ValueError(f"payload length must be an integer 0..{MAX_PAYLOAD}, got {payload_len!r}")
    if cr not in (1, 2, 3, 4):
        raise ValueError(f"coding rate index must be 1..4 (4/5..4/8), got {cr!r}")
    ih = 0 if explicit_header else 1
    de = 1 if low_data_rate_optimize else 0
    numerator = 8 * payload_len - 4 * sf + 28 + 16 * int(bool(crc)) - 20 * ih
    denominator = 4 * (sf - 2 * de)
    # Integer ceiling: -(-a // b) keeps the arithmetic exact.
    blocks = max(-(-numerator // denominator), 0)
    return 8 + blocks * (cr + 4)


def time_on_air_ms(
    payload_len: int,
    sf: int,
    bw_hz: float,
    cr: int = 1,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate_optimize: bool | None = None,
) -> float:
    """Time on air of one LoRa packet in milliseconds.

    ``payload_len`` is the number of bytes the radio is given (for Lowband the
    whole link frame). ``cr`` is the coding-rate index, 1 for 4/5 up to 4 for
    4/8. ``low_data_rate_optimize=None`` switches it on when a symbol lasts
    16 ms or more, as the datasheets require; pass True or False to match a
    radio configured otherwise. The preamble adds 4.25 symbols to the
    programmed length (the sync word and start-of-frame delimiter).

    Raises ValueError for a spreading factor outside 7..12, a non-positive
    bandwidth, a coding rate outside 1..4, a negative preamble or a payload
    outside 0..255 bytes.
    """
    t_sym = symbol_time_ms(sf, bw_hz)
    if not isinstance(preamble, int) or preamble < 0:
        raise ValueError(f"preamble length must be a non-negative integer, got {preamble!r}")
    if low_data_rate_optimize is None:
        low_data_rate_optimize = t_sym >= LDRO_SYMBOL_MS
    n_payload = payload_symbols(payload_len, sf, cr, explicit_header, crc, low_data_rate_optimize)
    # Summing symbol counts first (the 0.25 is exact in binary) and
    # multiplying once keeps values such as 56.576 ms free of drift.
    return (preamble + 4.25 + n_payload) * t_sym


def _check_sf(sf: int) -> None:
    if not isinstance(sf, int) or isinstance(sf, bool) or not MIN_SF <= sf <= MAX_SF:
        raise ValueError(f"spreading factor must be {MIN_SF}..{MAX_SF}, got {sf!r}")


def _check_sf_bw(sf: int, bw_hz: float) -> None:
    _check_sf(sf)
    if not isinstance(bw_hz, (int, float)) or isinstance(bw_hz, bool) or not bw_hz > 0 or not math.isfinite(bw_hz):
        raise ValueError(f"bandwidth must be a positive number of hertz, got {bw_hz!r}")


# ---------------------------------------------------------------------------
# Duty cycle


class DutyCycleError(ValueError):
    """A transmission was recorded that the budget does not allow (our bug, not the peer's)."""


@dataclass(frozen=True)
class _Tx:
    start_ms: float
    end_ms: float

    @property
    def airtime_ms(self) -> float:
        return self.end_ms - self.start_ms


class DutyCycleBudget:
    """Sliding-window airtime budget for one sub-band.

    The rule enforced: for every window ``[t, t + window_s]`` (every real
    ``t``, not only whole hours), the airtime of the recorded transmissions
    inside the window — a transmission that straddles an edge counts with the
    part inside — is at most ``duty_cycle × window_s``. With the defaults for
    a 1 % sub-band that is 36 s in any hour.

    Transmissions on one budget are sequential (one radio): a new one may
    not start before the previous one ended. Under that condition the
    busiest window that contains a new transmission is the one that ends
    exactly when it ends, so ``can_send`` checks that single window and
    ``earliest_send`` solves for it in closed form.

    ``now`` is in seconds on the caller's monotonic clock; ``airtime_ms`` in
    milliseconds. Nothing here reads a clock.
    """

    def __init__(self, duty_cycle: float, window_s: float = 3600.0) -> None:
        """Raises ValueError unless ``0 < duty_cycle <= 1`` and ``window_s > 0``."""
        if not isinstance(duty_cycle, (int, float)) or not 0.0 < duty_cycle <= 1.0:
            raise ValueError(f"duty cycle must be in (0, 1], got {duty_cycle!r}")
        if not isinstance(window_s, (int, float)) or not window_s > 0 or not math.isfinite(window_s):
            raise ValueError(f"window must be a positive number of seconds, got {window_s!r}")
        self.duty_cycle = float(duty_cycle)
        self.window_s = float(window_s)
        self._window_ms = self.window_s * 1000.0
        self.budget_ms = self.duty_cycle * self._window_ms
        # Oldest first; transmissions that ended a whole window ago are pruned.
        self._txs: deque[_Tx] = deque()

    def __repr__(self) -> str:
        return f"DutyCycleBudget(duty_cycle={self.duty_cycle}, window_s={self.window_s}, recorded={len(self._txs)})"

    # -- queries ---------------------------------------------------------

    @property
    def busy_until(self) -> float | None:
        """End of the last recorded transmission in seconds, or None if none is remembered."""
        return self._txs[-1].end_ms / 1000.0 if self._txs else None

    def used_ms(self, now: float) -> float:
        """Airtime inside the window that ends at ``now`` (the last ``window_s`` seconds)."""
        return self._used_in_window_ending(_to_ms(now))

    def remaining_ms(self, now: float) -> float:
        """Budget left in the window that ends at ``now``; never negative."""
        return max(0.0, self.budget_ms - self.used_ms(now))

    def can_send(self, airtime_ms: float, now: float) -> bool:
        """True when a transmission of ``airtime_ms`` starting at ``now`` keeps every window within budget.

        False also when the previous transmission has not ended by ``now``
        or when the airtime alone exceeds the whole budget. Raises
        ValueError for a negative or non-finite airtime or time.
        """
        airtime_ms = _check_airtime(airtime_ms)
        start = _to_ms(now)
        if airtime_ms > self.budget_ms + _EPS_MS:
            return False
        if self._txs and start < self._txs[-1].end_ms - _EPS_MS:
            return False
        used = self._used_in_window_ending(start + airtime_ms)
        return used + airtime_ms <= self.budget_ms + _EPS_MS

    def earliest_send(self, airtime_ms: float, now: float) -> float:
        """Earliest time ``t >= now`` (seconds) at which ``can_send(airtime_ms, t)`` holds.

        Returns ``now`` itself when sending at once is allowed. Raises
        ValueError when ``airtime_ms`` exceeds the whole budget (it could
        never be sent) or is negative.
        """
        airtime_ms = _check_airtime(airtime_ms)
        if airtime_ms > self.budget_ms + _EPS_MS:
            raise ValueError(
                f"a {airtime_ms:.3f} ms transmission exceeds the whole budget of "
                f"{self.budget_ms:.3f} ms per {self.window_s:g} s window"
            )
        start = _to_ms(now)
        if self._txs:
            start = max(start, self._txs[-1].end_ms)
        # Airtime of older transmissions the window may still hold (with the
        # same slack can_send allows, so the two agree on what is earliest).
        allowed = max(0.0, self.budget_ms - airtime_ms) + _EPS_MS
        # The window that matters ends at start + airtime and reaches back one
        # window length. Find the smallest left edge L at which the recorded
        # airtime at or after L is within `allowed`; then start = L + W - airtime.
        left = self._smallest_left_edge(allowed)
        candidate = max(start, left + self._window_ms - airtime_ms)
        # Guard against rounding: step forward by whole nanoseconds until the
        # exact check agrees (at most a couple of iterations in practice).
        for _ in range(8):
            # Converting back to seconds must not land before `now`.
            t = max(float(now), candidate / 1000.0)
            if self.can_send(airtime_ms, t):
                return t
            candidate = math.nextafter(candidate, math.inf) + _EPS_MS
        return max(float(now), candidate / 1000.0)

    # -- updates ---------------------------------------------------------

    def record(self, airtime_ms: float, now: float) -> None:
        """Record a transmission of ``airtime_ms`` that started at ``now``.

        Raises DutyCycleError when it would break the budget or overlap the
        previous transmission — the caller skipped ``can_send``. Nothing is
        recorded then.
        """
        if not self.can_send(airtime_ms, now):
            raise DutyCycleError(
                f"transmission of {airtime_ms:.3f} ms at t={now:.6f} s would exceed "
                f"{self.duty_cycle:.4%} of {self.window_s:g} s or overlap the previous one"
            )
        start = _to_ms(now)
        self._txs.append(_Tx(start, start + float(airtime_ms)))
        self._prune(start)

    # -- internals -------------------------------------------------------

    def _prune(self, now_ms: float) -> None:
        # Every window still to be checked ends at or after now, so it starts
        # at or after now - W; a transmission that ended by then is irrelevant.
        horizon = now_ms - self._window_ms
        while self._txs and self._txs[0].end_ms <= horizon:
            self._txs.popleft()

    def _used_in_window_ending(self, end_ms: float) -> float:
        begin_ms = end_ms - self._window_ms
        used = 0.0
        for tx in self._txs:
            lo = max(tx.start_ms, begin_ms)
            hi = min(tx.end_ms, end_ms)
            if hi > lo:
                used += hi - lo
        return used

    def _smallest_left_edge(self, allowed_ms: float) -> float:
        """Smallest L such that the airtime recorded at or after L is at most ``allowed_ms``."""
        txs = list(self._txs)
        # suffix[i] = airtime of txs[i:]
        suffix = [0.0] * (len(txs) + 1)
        for i in range(len(txs) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + txs[i].airtime_ms
        if suffix[0] <= allowed_ms:
            return -math.inf
        # The first k whose later transmissions alone fit: the edge falls
        # inside txs[k], cutting off just enough of it.
        k = next(i for i in range(len(txs)) if suffix[i + 1] <= allowed_ms)
        return txs[k].end_ms - (allowed_ms - suffix[k + 1])


def _to_ms(now: float) -> float:
    if not isinstance(now, (int, float)) or isinstance(now, bool) or not math.isfinite(now):
        raise ValueError(f"time must be a finite number of seconds, got {now!r}")
    return float(now) * 1000.0


def _check_airtime(airtime_ms: float) -> float:
    if (
        not isinstance(airtime_ms, (int, float))
        or isinstance(airtime_ms, bool)
        or not math.isfinite(airtime_ms)
        or airtime_ms < 0
    ):
        raise ValueError(f"airtime must be a non-negative number of milliseconds, got {airtime_ms!r}")
    return float(airtime_ms)


class _SubBandLike(Protocol):
    name: str
    duty_cycle: float


class _RegionLike(Protocol):
    def sub_band_for(self, frequency_hz: int, bw_hz: int = 0) -> _SubBandLike: ...


class SubBandBudgets:
    """One ``DutyCycleBudget`` per sub-band of a region, picked by frequency.

    The regulation counts airtime per sub-band, so a transmitter that uses
    channels in two sub-bands has two independent budgets. Budgets are made
    on first use. ``region`` is a ``lowband.hardware.radio.Region`` (anything
    with ``sub_band_for(frequency_hz, bw_hz)``).
    """

    def __init__(self, region: _RegionLike, window_s: float = 3600.0) -> None:
        self.region = region
        self.window_s = window_s
        self._budgets: dict[str, DutyCycleBudget] = {}

    def budget_for(self, frequency_hz: int, bw_hz: int = 0) -> DutyCycleBudget:
        """The budget of the sub-band holding this channel; raises HardwareError outside every sub-band."""
        band = self.region.sub_band_for(frequency_hz, bw_hz)
        budget = self._budgets.get(band.name)
        if budget is None:
            budget = self._budgets[band.name] = DutyCycleBudget(band.duty_cycle, self.window_s)
        return budget

    def can_send(self, frequency_hz: int, airtime_ms: float, now: float, bw_hz: int = 0) -> bool:
        """``DutyCycleBudget.can_send`` on the sub-band of ``frequency_hz``."""
        return self.budget_for(frequency_hz, bw_hz).can_send(airtime_ms, now)

    def earliest_send(self, frequency_hz: int, airtime_ms: float, now: float, bw_hz: int = 0) -> float:
        """``DutyCycleBudget.earliest_send`` on the sub-band of ``frequency_hz``."""
        return self.budget_for(frequency_hz, bw_hz).earliest_send(airtime_ms, now)

    def record(self, frequency_hz: int, airtime_ms: float, now: float, bw_hz: int = 0) -> None:
        """``DutyCycleBudget.record`` on the sub-band of ``frequency_hz``."""
        self.budget_for(frequency_hz, bw_hz).record(airtime_ms, now)
