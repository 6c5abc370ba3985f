"""Unknown sensors in the lake: what landed in ``unknown_readings``, their profiles and proposed
contracts (``sensor_proposals``), and the replay of an accepted sensor's backlog into
``readings``, exactly once.

Exactly once: the replay of (asset, sensor) commits to ``readings`` (and the backlog's rejects
to ``dead_letter``) with the Delta application transaction ``onboard:<asset>/<sensor>`` whose
version is the newest ``ingest_ts`` (µs) of the landed rows it covers (rows landed within a
settle margin of now are left for the next run: they may still be in the stream's sink).  A later run takes only
rows landed after that watermark: accepting twice, or re-running after a crash between the two
tables' commits, adds nothing twice, and readings that landed after a first run (the stream
had not yet reloaded the plant) are picked up by the next.  Landed rows themselves are kept
(the table's retention removes them), never rewritten while the stream appends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expectations.checks import value_problems
from lake.catalogue import TS
from lake.store import Lake, LakeError
from plant.model import Plant
from plant.onboarding import SensorProfile, profile_sensor, proposal_yaml, propose_sensor

__all__ = [
    "landed_sensors",
    "landed_readings",
    "proposals",
    "proposal_rows",
    "stored_proposal",
    "fresh_proposal",
    "replay_backlog",
    "Replayed",
    "app_id",
]

log = logging.getLogger(__name__)


def app_id(asset_id: str, sensor_id: str) -> str:
    return f"onboard:{asset_id}/{sensor_id}"


def landed_sensors(lake: Lake) -> pa.Table:
    """One row per (asset_id, sensor_id) in ``unknown_readings``: readings, first and last
    event time, newest landing time."""
    if not lake.exists("unknown_readings"):
        return pa.table(
            {
                "asset_id": pa.array([], pa.string()),
                "sensor_id": pa.array([], pa.string()),
                "n_readings": pa.array([], pa.int64()),
                "first_ts": pa.array([], TS),
                "last_ts": pa.array([], TS),
                "last_ingest_ts": pa.array([], TS),
            }
        )
    t = lake.read_arrow("unknown_readings", columns=["asset_id", "sensor_id", "ts", "ingest_ts"])
    g = t.group_by(["asset_id", "sensor_id"]).aggregate(
        [("ts", "count"), ("ts", "min"), ("ts", "max"), ("ingest_ts", "max")]
    )
    g = g.rename_columns(
        ["asset_id", "sensor_id", "n_readings", "first_ts", "last_ts", "last_ingest_ts"]
    )
    return g.sort_by([("asset_id", "ascending"), ("sensor_id", "ascending")])


def landed_readings(
    lake: Lake, asset_id: str, sensor_id: str, columns: list[str] | None = None
) -> pa.Table:
    if not lake.exists("unknown_readings"):
        raise LakeError("no sensor has landed in unknown_readings yet")
    return lake.read_arrow(
        "unknown_readings",
        columns=columns,
        filters=[("asset_id", "=", asset_id), ("sensor_id", "=", sensor_id)],
    )


def _profile(lake: Lake, plant: Plant, asset_id: str, sensor_id: str) -> SensorProfile:
    t = landed_readings(lake, asset_id, sensor_id, ["ts", "value"])
    if not t.num_rows:
        raise LakeError(
            f"no readings of {asset_id}/{sensor_id} in unknown_readings "
            "(`plantpulse sensors list` shows what landed)"
        )
    ts = t["ts"].cast(pa.int64()).to_numpy()
    values = t["value"].to_numpy(zero_copy_only=False).astype(np.float64)
    return profile_sensor(asset_id, sensor_id, ts, values, plant)


def proposals(
    lake: Lake, plant: Plant, include_declared: bool = False
) -> list[tuple[SensorProfile, dict[str, Any]]]:
    """Profile and proposed plant-file entry of every landed sensor the plant does not declare
    (``include_declared``: of every landed sensor)."""
    out = []
    for asset_id, sensor_id in zip(
        *(landed_sensors(lake)[c].to_pylist() for c in ("asset_id", "sensor_id")), strict=True
    ):
        if not include_declared and plant.contract(asset_id, sensor_id) is not None:
            continue
        profile = _profile(lake, plant, asset_id, sensor_id)
        out.append((profile, propose_sensor(profile, plant)))
    return out


def proposal_rows(found: list[tuple[SensorProfile, dict[str, Any]]], now_us: int) -> pa.Table:
    """``sensor_proposals`` rows of ``proposals(...)``."""
    rows = [
        {
            "asset_id": p.asset_id,
            "sensor_id": p.sensor_id,
            "profiled_ts": now_us,
            "n_readings": p.n_readings,
            "first_ts": p.first_us,
            "last_ts": p.last_us,
            "min": p.min,
            "max": p.max,
            "rate_hz": p.rate_hz,
            "resolution": p.resolution,
            "gaps": p.gaps,
            "longest_gap_s": p.longest_gap_s,
            "stuck_stretches": p.stuck_stretches,
            "longest_stuck_s": p.longest_stuck_s,
            "non_finite": p.non_finite,
            "kind": p.kind,
            "kind_reason": p.kind_reason,
            "proposal": proposal_yaml(entry),
        }
        for p, entry in found
    ]
    from lake.catalogue import table_spec

    return pa.Table.from_pylist(rows, schema=table_spec("sensor_proposals").schema)


def stored_proposal(lake: Lake, asset_id: str, sensor_id: str) -> dict[str, Any] | None:
    """The proposed entry stored by the ``sensor_proposals`` asset for (asset, sensor), if any
    (what the engineer reviewed in the UI)."""
    import yaml

    if not lake.exists("sensor_proposals"):
        return None
    t = lake.read_arrow(
        "sensor_proposals",
        columns=["proposal"],
        filters=[("asset_id", "=", asset_id), ("sensor_id", "=", sensor_id)],
    )
    if not t.num_rows:
        return None
    return yaml.safe_load(t["proposal"][0].as_py())[0]


def fresh_proposal(
    lake: Lake, plant: Plant, asset_id: str, sensor_id: str
) -> tuple[SensorProfile, dict[str, Any]]:
    """The profile and proposed entry of one landed sensor, computed now."""
    profile = _profile(lake, plant, asset_id, sensor_id)
    return profile, propose_sensor(profile, plant)


@dataclass(frozen=True)
class Replayed:
    readings: int
    dead_letters: int
    already: int  # landed rows an earlier run had replayed
    pending: int  # landed within the settle margin: left for the next run


def replay_backlog(
    lake: Lake, plant: Plant, asset_id: str, sensor_id: str, now_us: int, settle_s: float = 0.0
) -> Replayed:
    """Replay the landed readings of a now declared sensor into ``readings`` (values outside
    its contract's range, non-finite values and repeated timestamps into ``dead_letter``),
    each landed row exactly once (see the module's docstring).

    Only rows landed at least ``settle_s`` before ``now_us`` are taken: a running stream
    stamps ``ingest_ts`` when it lands a row and commits it up to one snapshot interval later
    (2 s in ``plantpulse up``), so a row stamped inside the margin may not be visible yet, and
    a watermark past it would skip it for ever.  Those are counted as ``pending`` and taken by
    the next run."""
    contract = plant.contract(asset_id, sensor_id)
    if contract is None:
        raise LakeError(
            f"{asset_id}/{sensor_id} is not declared in the plant ({plant.path}); accept it first"
        )
    if contract.frames:
        raise LakeError(
            f"{asset_id}/{sensor_id} is declared as a frame sensor; landed "
            "scalar readings cannot be replayed into it"
        )
    if not lake.exists("unknown_readings"):
        return Replayed(0, 0, 0, 0)
    t = landed_readings(lake, asset_id, sensor_id)
    if not t.num_rows:
        return Replayed(0, 0, 0, 0)
    key = app_id(asset_id, sensor_id)
    ingest = t["ingest_ts"].cast(pa.int64()).to_numpy()
    ts = t["ts"].cast(pa.int64()).to_numpy()
    # every landed row's fate, judged over all of them (deterministic across runs): the first
    # landed of a repeated timestamp is the reading, the others duplicates
    order = np.lexsort((ingest, ts))
    dup = np.zeros(ts.size, bool)
    dup[order[1:]] = ts[order[1:]] == ts[order[:-1]]
    values = t["value"].to_numpy(zero_copy_only=False).astype(np.float64)
    non_finite, out_of_range = value_problems(
        values, np.full(ts.size, contract.low), np.full(ts.size, contract.high)
    )
    reason = np.where(
        dup,
        "duplicate",
        np.where(non_finite, "non_finite", np.where(out_of_range, "out_of_range", "")),
    )
    cutoff = now_us - round(settle_s * 1e6)
    settled = ingest <= cutoff
    counts, already = {}, 0
    for table in ("readings", "dead_letter"):
        done = lake.committed_version(table, key)
        done = -1 if done is None else done
        wanted = (reason == "") if table == "readings" else (reason != "")
        new = wanted & (ingest > done) & settled
        already += int((wanted & (ingest <= done)).sum())
        counts[table] = int(new.sum())
        if not new.any():
            continue
        version = int(ingest[settled].max())  # every settled row up to here is now taken
        idx = pa.array(np.flatnonzero(new))
        rows = t.take(idx)
        if table == "readings":
            data = {
                "asset_id": rows["asset_id"],
                "sensor_id": rows["sensor_id"],
                "ts": rows["ts"],
                "value": rows["value"],
                "raw_value": rows["value"],
                "quality": pa.array(["good"] * rows.num_rows, pa.string()),
                "ingest_ts": pa.array(np.full(rows.num_rows, now_us), pa.int64()).cast(TS),
            }
        else:
            r = reason[np.flatnonzero(new)]
            detail = [
                {
                    "duplicate": "timestamp already landed for this sensor",
                    "non_finite": "value is null, NaN or infinite",
                    "out_of_range": f"value outside [{contract.low:g}, {contract.high:g}]",
                }[x]
                for x in r.tolist()
            ]
            data = {
                "received_ts": rows["ingest_ts"],
                "source": pc.binary_join_element_wise(rows["source"], pa.scalar(f"#{key}"), ""),
                "raw": rows["raw"],
                "reason": pa.array(r.tolist(), pa.string()),
                "detail": pa.array(detail, pa.string()),
                "asset_id": rows["asset_id"],
                "sensor_id": rows["sensor_id"],
            }
        lake.append(table, data, idempotency_key=(key, version))
    pending = int((~settled).sum())
    log.info(
        "replayed %s/%s: %d readings, %d dead letters (%d done before, %d pending)",
        asset_id,
        sensor_id,
        counts["readings"],
        counts["dead_letter"],
        already,
        pending,
    )
    return Replayed(counts["readings"], counts["dead_letter"], already, pending)
