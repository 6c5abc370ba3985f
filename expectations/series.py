"""Time-series checks of one sensor's series, over the span of a period the stream has covered.

A period in progress (today's partition while the stream writes it) is judged on its elapsed
part only: each series from its first reading or the period's start, whichever is later, to the
newest committed event of its asset or the period's end, whichever is earlier (``Period``).
So a series that began an hour ago is not missing the hours before it existed, one that
reported yesterday and stopped at 03:00 today is silent since 03:00, and one whose asset
reports on the next day is judged to the period's end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from expectations.contracts import SensorContract
from expectations.outcomes import Outcome
from physics.sensor_models import spike_mask, stuck_runs

__all__ = ["Period", "expected_readings", "psi", "series_checks"]


def _us(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


@dataclass(frozen=True)
class Period:
    """A period of readings (a day partition: ``[start, end)``) and what the lake knows beyond
    it: ``first_seen``, the first reading of each ``(asset_id, sensor_id)`` series that reported
    before the period, and ``newest``, the newest committed event of each asset that reported
    after it.  A series or asset in neither is judged from its own first reading in the period
    to its asset's newest reading there.

    >>> day = Period(pd.Timestamp("2026-01-02", tz="UTC"), pd.Timestamp("2026-01-03", tz="UTC"),
    ...              first_seen={("p", "t"): pd.Timestamp("2026-01-01 08:00", tz="UTC")})
    >>> first, newest = _us(pd.Timestamp("2026-01-02 09:00", tz="UTC")), _us(day.end) - 3_600_000_000
    >>> [str(pd.Timestamp(t, unit="us")) for t in day.span_us("p", "t", first, newest)]
    ['2026-01-02 00:00:00', '2026-01-02 23:00:00']
    >>> [str(pd.Timestamp(t, unit="us")) for t in day.span_us("p", "new", first, newest)]
    ['2026-01-02 09:00:00', '2026-01-02 23:00:00']
    """

    start: pd.Timestamp
    end: pd.Timestamp
    first_seen: Mapping[tuple[str, str], pd.Timestamp] = field(default_factory=dict)
    newest: Mapping[str, pd.Timestamp] = field(default_factory=dict)

    def span_us(
        self, asset_id: str, sensor_id: str, first_us: int, newest_us: int
    ) -> tuple[int, int]:
        """The ``[from, to]`` (µs) a series is judged on, given its first reading in the period
        (``first_us``) and its asset's newest one (``newest_us``)."""
        before = self.first_seen.get((asset_id, sensor_id))
        after = self.newest.get(asset_id)
        first = min(first_us, _us(before)) if before is not None else first_us
        newest = max(newest_us, _us(after)) if after is not None else newest_us
        return max(first, _us(self.start)), min(newest, _us(self.end) - 1)


def expected_readings(rate_hz: float, start_us: int, first_us: int, end_us: int) -> int:
    """Readings a series at ``rate_hz`` should have in ``[start_us, end_us]`` if its first one
    is at ``first_us``: its sample instants there (the phase of the first reading), so a
    1 Hz sensor that reported at 0, 1, ..., 29 s is complete at 29.9 s (30 of 30), not 30 of
    30.9.

    >>> expected_readings(1.0, 0, 0, 29_900_000), expected_readings(10.0, 0, 0, 29_900_000)
    (30, 300)
    >>> expected_readings(1.0, 0, 5_500_000, 9_999_999)  # 0.5, 1.5, ... before the first one
    10
    """
    period_us = 1e6 / rate_hz
    # timestamps are whole µs, so an instant of a period that is not may be rounded by up to
    # half a µs: that much slack keeps the reading at ``end_us`` and nothing past it
    lead = math.floor((first_us - start_us + 0.5) / period_us)
    tail = math.floor((end_us - first_us + 0.5) / period_us)
    return lead + tail + 1


def psi(reference: NDArray[np.float64], current: NDArray[np.float64], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (reference deciles).

    >>> rng = np.random.default_rng(0)
    >>> psi(rng.normal(0, 1, 5000), rng.normal(0, 1, 5000)) < 0.05
    True
    >>> psi(rng.normal(0, 1, 5000), rng.normal(1, 1, 5000)) > 0.25
    True
    """
    ref, cur = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if ref.size < bins or cur.size < bins:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _ts(us: int | float) -> pd.Timestamp:
    return pd.Timestamp(int(us), unit="us", tz="UTC")


def series_checks(
    asset_id: str,
    contract: SensorContract,
    ts_us: NDArray[np.int64],
    values: NDArray[np.float64],
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    rejected_non_finite: int = 0,
    reference: NDArray[np.float64] | None = None,
    reference_span_s: float | None = None,
) -> list[Outcome]:
    """Time-series checks of one sensor's accepted readings.

    Completeness and gaps are judged over ``[start_us, end_us]``, the span the stream has
    covered (``Period.span_us``; by default from the series' first reading to its last).  A
    series with no reading in a known span is silent for all of it.
    ``rejected_non_finite`` counts its NaN/null readings that the stream dead-lettered.
    The distribution is compared with ``reference`` only when this window spans at least half
    of ``reference_span_s`` (a short window sees fewer operating points than a long reference).
    """
    sid, out = contract.sensor_id, []
    n, rate_hz = ts_us.size, contract.sample_rate_hz
    if n == 0:
        if start_us is None or end_us is None:
            return [
                Outcome(
                    "completeness",
                    asset_id,
                    sid,
                    False,
                    {"received": 0},
                    message="no readings at all",
                )
            ]
        # silent over the whole span: no phase to count its sample instants from
        start, end = int(start_us), max(int(end_us), int(start_us))
        expected = max(1, math.floor((end - start) * rate_hz / 1e6))
    else:
        order = np.argsort(ts_us, kind="stable")
        ts_us, values = ts_us[order], values[order]
        first = int(ts_us[0])
        start = first if start_us is None else min(int(start_us), first)
        end = int(ts_us[-1]) if end_us is None else max(int(end_us), int(ts_us[-1]))
        expected = expected_readings(rate_hz, start, first, end)
    completeness = min(n / expected, 1.0)
    out.append(
        Outcome(
            "completeness",
            asset_id,
            sid,
            completeness >= contract.min_completeness,
            {
                "completeness": round(completeness, 4),
                "received": n,
                "expected": expected,
                "limit": contract.min_completeness,
                "judged_from": _ts(start).isoformat(),
                "judged_to": _ts(end).isoformat(),
            },
            message=f"{100 * (1 - completeness):.1f} % of expected readings missing "
            f"(limit {100 * (1 - contract.min_completeness):.1f} %)"
            if n
            else "no readings at all",
        )
    )

    edges = np.r_[start, ts_us, end]
    gaps = np.diff(edges)
    worst = int(np.argmax(gaps))
    max_gap_s = float(gaps[worst]) / 1e6
    out.append(
        Outcome(
            "max_gap",
            asset_id,
            sid,
            max_gap_s <= contract.max_gap_s,
            {"max_gap_s": round(max_gap_s, 3), "limit_s": contract.max_gap_s},
            since=_ts(edges[worst]) if max_gap_s > contract.max_gap_s else None,
            message=f"silent for {max_gap_s:.0f} s (limit {contract.max_gap_s:g} s)",
        )
    )
    if n == 0:
        return out

    null_rate = rejected_non_finite / (n + rejected_non_finite)
    out.append(
        Outcome(
            "null_rate",
            asset_id,
            sid,
            null_rate <= contract.max_null_rate,
            {
                "null_rate": round(null_rate, 5),
                "rejected": rejected_non_finite,
                "limit": contract.max_null_rate,
            },
            message=f"{100 * null_rate:.2f} % of readings were NaN/null (limit {100 * contract.max_null_rate:g} %)",
        )
    )

    if contract.stuck_after_s is not None:
        min_run = max(3, math.ceil(contract.stuck_after_s * contract.sample_rate_hz))
        flat = stuck_runs(values, min_run)
        stuck = bool(flat.any())
        first = int(np.argmax(flat)) if stuck else 0
        run_s = float(flat.sum()) / contract.sample_rate_hz
        out.append(
            Outcome(
                "stuck",
                asset_id,
                sid,
                not stuck,
                {
                    "stuck_readings": int(flat.sum()),
                    "stuck_value": float(values[first]) if stuck else None,
                    "limit_s": contract.stuck_after_s,
                },
                since=_ts(ts_us[first]) if stuck else None,
                message=f"unchanged at {values[first]:.6g} {contract.unit} for {run_s:.0f} s "
                f"(limit {contract.stuck_after_s:g} s)"
                if stuck
                else "not stuck",
            )
        )

    flagged = spike_mask(values, resolution=contract.resolution)
    rate = float(flagged.mean())
    spiky = rate > contract.max_spike_rate and int(flagged.sum()) >= 3
    out.append(
        Outcome(
            "spikes",
            asset_id,
            sid,
            not spiky,
            {
                "spike_rate": round(rate, 5),
                "spikes": int(flagged.sum()),
                "limit": contract.max_spike_rate,
            },
            since=_ts(ts_us[int(np.argmax(flagged))]) if spiky else None,
            message=f"{int(flagged.sum())} isolated spikes ({100 * rate:.2f} % of readings, "
            f"limit {100 * contract.max_spike_rate:g} %)",
        )
    )

    if n >= 10:
        period_us = 1e6 / rate_hz
        ppm = (float(np.median(np.diff(ts_us))) / period_us - 1.0) * 1e6
        out.append(
            Outcome(
                "clock_rate",
                asset_id,
                sid,
                abs(ppm) <= contract.max_clock_error_ppm,
                {"clock_error_ppm": round(ppm, 1), "limit_ppm": contract.max_clock_error_ppm},
                message=f"sample clock off by {ppm:+.0f} ppm (limit ±{contract.max_clock_error_ppm:g} ppm)",
            )
        )

    span_s = (end - start) / 1e6
    comparable = reference_span_s is None or span_s >= 0.5 * reference_span_s
    if reference is not None and reference.size >= 100 and comparable:
        shift = psi(reference, values)
        out.append(
            Outcome(
                "distribution_shift",
                asset_id,
                sid,
                not shift > contract.max_psi,
                {"psi": round(shift, 4), "limit": contract.max_psi},
                severity="warning",
                message=f"PSI {shift:.2f} against the reference window (limit {contract.max_psi:g})",
            )
        )
    return out
