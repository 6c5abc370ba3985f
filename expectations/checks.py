"""Vectorised validity checks derived from the sensor contracts, for the stream.

Each check returns one reason code per reading (``OK`` for a valid one) so that a batch is
split into accepted rows and dead letters in a few NumPy operations, never a Python loop per
sample.  Reason codes are the ``dead_letter.reason`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from expectations.contracts import SensorContract

__all__ = [
    "REASONS",
    "OK",
    "scalar_reasons",
    "value_problems",
    "frame_problem",
    "Arrivals",
    "arrival_reasons",
]

REASONS: dict[str, str] = {
    "ok": "valid",
    "malformed": "payload could not be parsed (not JSON / bad binary header / missing field)",
    "oversized": "payload larger than the maximum message size",
    "wrong_type": "a field has the wrong type (e.g. a string where a number belongs)",
    "unknown_sensor": "sensor_id is not declared in the sensor contracts",
    "non_finite": "value is NaN, infinite or null",
    "out_of_range": "value outside the sensor's physical range",
    "bad_timestamp": "timestamp missing, unparsable or outside the plausible range",
    "duplicate": "same sensor and timestamp as a reading already accepted",
    "late": "older than the watermark (newest event time seen minus the allowed lateness)",
    "bad_sample_rate": "frame sample rate differs from the sensor's contract",
    "empty_frame": "frame with no samples",
    "empty_message": "a message (or Arrow payload) with no readings in it",
    "capacity": "the stream already tracks as many series as it is configured for "
    "(PLANTPULSE_MAX_SERIES); payload kept",
    "short_frame": "frame shorter than the sensor's minimum for spectral features",
    "shed": "set aside unprocessed by the load-shedding circuit breaker (payload kept)",
    "out_of_sequence": "an MQTT message numbered (pp-seq) at or below what its publisher already "
    "sent, not a redelivery: a repeat, or a publisher that restarted its numbering (payload kept), "
    "or numbered too far ahead of the receive clock (refused, not adopted)",
    "dropped_by_broker": "the MQTT broker dropped QoS 1 messages under its queue limits (the row "
    "counts them; their payloads never reached the stream)",
}
OK = "ok"

_CODES = np.array(list(REASONS), dtype=object)
_IDX = {r: i for i, r in enumerate(REASONS)}


def scalar_reasons(contract: SensorContract, values: NDArray[np.float64]) -> NDArray[np.object_]:
    """Reason code per value: non-finite, outside the physical range, else ``ok``.

    >>> from expectations.contracts import contract_for
    >>> scalar_reasons(contract_for("bearing_temp"), np.array([20.0, np.nan, 900.0])).tolist()
    ['ok', 'non_finite', 'out_of_range']
    """
    codes = np.zeros(values.shape, dtype=np.int8)
    non_finite, out_of_range = value_problems(values, contract.low, contract.high)
    codes[non_finite] = _IDX["non_finite"]
    codes[out_of_range] = _IDX["out_of_range"]
    return _CODES[codes]


def value_problems(
    values: NDArray[np.float64], low: float | NDArray[np.float64], high: float | NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Masks of the values that are not finite, and of the finite ones outside ``[low, high]``
    (one range, or one per value: the stream checks every series of a batch at once).

    >>> value_problems(np.array([1.0, np.nan, 9.0]), np.array([0.0, 0.0, 0.0]), 5.0)
    (array([False,  True, False]), array([False, False,  True]))
    """
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        outside = finite & ((values < low) | (values > high))
    return ~finite, outside


@dataclass
class Arrivals:
    """Event-time bookkeeping of one sensor: the newest timestamp seen and the accepted
    timestamps still inside the allowed lateness (to recognise duplicates).  Picklable, so it
    lives in the stream's recoverable state."""

    newest_us: int | None = None
    recent_us: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def arrival_reasons(
    ts_us: NDArray[np.int64], arrivals: Arrivals, lateness_us: int
) -> NDArray[np.object_]:
    """Per timestamp: ``late`` if older than the watermark (newest seen so far minus
    ``lateness_us``), ``duplicate`` if that timestamp was already accepted, else ``ok``.
    Accepted timestamps update ``arrivals``.  Out-of-order readings within the lateness are
    accepted: event time, not arrival order, decides.

    >>> a = Arrivals()
    >>> arrival_reasons(np.array([10, 12, 12, 11, 3]), a, lateness_us=5).tolist()
    ['ok', 'ok', 'duplicate', 'ok', 'late']
    >>> arrival_reasons(np.array([11, 13, 20, 14]), a, lateness_us=5).tolist()
    ['duplicate', 'ok', 'ok', 'late']
    """
    if ts_us.size == 0:
        return np.array([], dtype=object)
    start = (
        np.iinfo(np.int64).min + lateness_us if arrivals.newest_us is None else arrivals.newest_us
    )
    newest_before = np.maximum.accumulate(np.concatenate(([start], ts_us[:-1])))
    codes = np.zeros(ts_us.shape, dtype=np.int8)
    late = ts_us < newest_before - lateness_us
    codes[late] = _IDX["late"]
    candidates = np.flatnonzero(~late)
    cand_ts = ts_us[candidates]
    recent = arrivals.recent_us  # sorted, unique
    if recent.size:
        pos = np.minimum(np.searchsorted(recent, cand_ts), recent.size - 1)
        seen_before = recent[pos] == cand_ts
    else:
        seen_before = np.zeros(cand_ts.size, dtype=bool)
    if cand_ts.size > 1 and not np.all(np.diff(cand_ts) > 0):  # repeats within the batch
        _, first = np.unique(cand_ts, return_index=True)
        repeat_in_batch = np.ones(cand_ts.size, dtype=bool)
        repeat_in_batch[first] = False
        seen_before |= repeat_in_batch
    codes[candidates[seen_before]] = _IDX["duplicate"]
    accepted = ts_us[codes == 0]
    newest = int(max(start, ts_us.max())) if arrivals.newest_us is not None else int(ts_us.max())
    arrivals.newest_us = newest
    kept = recent[np.searchsorted(recent, newest - lateness_us) :]
    accepted = accepted[accepted >= newest - lateness_us]
    if (
        accepted.size
        and (accepted.size == 1 or np.all(np.diff(accepted) > 0))
        and (kept.size == 0 or accepted[0] > kept[-1])
    ):
        arrivals.recent_us = np.concatenate([kept, accepted])  # the common, in-order case
    else:
        arrivals.recent_us = np.union1d(kept, accepted)
    return _CODES[codes]


def frame_problem(
    contract: SensorContract, sample_rate_hz: float, samples: NDArray[np.floating]
) -> tuple[str, str] | None:
    """``(reason, detail)`` if a whole frame must be rejected, else None.

    >>> from expectations.contracts import contract_for
    >>> c = contract_for("vib_de")
    >>> frame_problem(c, 12_000.0, np.zeros(2048, np.float32)) is None
    True
    >>> frame_problem(c, 12_000.0, np.zeros(10, np.float32))[0]
    'short_frame'
    >>> frame_problem(c, 8_000.0, np.zeros(2048, np.float32))[0]
    'bad_sample_rate'
    """
    if samples.size == 0:
        return "empty_frame", "frame has no samples"
    if samples.size < contract.min_frame_samples:
        return (
            "short_frame",
            f"{samples.size} samples, contract needs >= {contract.min_frame_samples}",
        )
    expected = contract.sample_rate_hz
    if not abs(sample_rate_hz - expected) <= contract.rate_tolerance * expected:
        return "bad_sample_rate", f"sample rate {sample_rate_hz} Hz, contract says {expected} Hz"
    finite = np.isfinite(samples)
    if not finite.all():
        return "non_finite", f"{int((~finite).sum())} of {samples.size} samples are NaN/inf"
    peak = float(np.abs(samples).max())
    if peak > max(abs(contract.low), abs(contract.high)):
        return (
            "out_of_range",
            f"peak {peak:.3g} {contract.unit} outside [{contract.low}, {contract.high}]",
        )
    return None
