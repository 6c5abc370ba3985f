"""Flows the cluster tests start as separate processes
(``python -m bytewax.run "tests.cluster_flows:fleet_replay_flow(...)" -i I -a ADDRS``).

A module of its own, not a test module: importing ``tests.conftest`` would reset the environment
(``PLANTPULSE_HOME``, ``PLANTPULSE_LAKE``) that the processes are given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bytewax.dataflow import Dataflow

if TYPE_CHECKING:
    from bytewax_flows.replay import Timeline

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, as tests.conftest


def bad_payload(asset: str, k: int) -> bytes:
    """A reading whose value is not a number: a dead letter (``malformed``) of ``asset``."""
    return b'{"asset_id": "%s", "sensor_id": "motor_current", "ts": [%d], "value": ["x%d"]}' % (
        asset.encode(),
        T0_US + k * 1_000_000,
        k,
    )


def fleet_timelines(n_machines: int, n_chunks: int) -> dict[str, Timeline]:
    """The demo fleet (an outer-race fault on the first pumps from 20 s) as per-machine replay
    timelines, one hostile message every ten seconds of each machine."""
    from bytewax_flows.sources import chunk_payloads
    from physics.simulator import default_fleet

    fleet = default_fleet(
        n_machines,
        seed=3,
        start_us=T0_US,
        outer_race_at_s=20,
        inner_race_at_s=40,
        time_to_failure_s=200,
    )
    out: dict[str, Timeline] = {}
    for asset in fleet.asset_ids:
        timeline: Timeline = []
        for k in range(n_chunks):
            t = T0_US + k * 1_000_000
            timeline += [(t, p) for _, p in chunk_payloads(fleet.chunk(asset, k))]
            if k % 10 == 5:
                timeline.append((t, bad_payload(asset, k)))
        out[asset] = timeline
    return out


def fleet_replay_flow(
    lake_uri: str, n_machines: int = 6, n_chunks: int = 40, pause_s: float = 0.0
) -> Dataflow:
    """The telemetry flow over the fleet's replay: one source partition per machine, so the
    processes of a cluster each read their part.  ``pause_s`` before each micro-batch of 8
    messages slows the run down without changing where its micro-batches are cut (pacing by
    event time would: a resumed replay would then cut them elsewhere than the run it
    resumes, see ``test_cluster``)."""
    import time

    from bytewax_flows.replay import ReplaySource
    from bytewax_flows.telemetry import get_flow

    class Slow(ReplaySource):
        def build_part(self, step_id, for_part, resume_state):
            part = super().build_part(step_id, for_part, resume_state)
            if pause_s:
                take = part.next_batch

                def next_batch():
                    time.sleep(pause_s)
                    return take()

                part.next_batch = next_batch
            return part

    return get_flow(Slow(fleet_timelines(n_machines, n_chunks), batch=8), lake_uri)


def key_probe_flow(out_dir: str) -> Dataflow:
    """Every ``WORKER_KEYS`` key through a stateful step; each process notes, in a file named
    by its pid, which keys it got (what Bytewax's routing does with them)."""
    import os

    import bytewax.operators as op
    from bytewax.testing import TestingSource

    from bytewax_flows.routing import WORKER_KEYS

    def note(state: None, key: str) -> tuple[None, str]:
        with open(f"{out_dir}/{os.getpid()}", "a") as f:
            f.write(key + "\n")
        return state, key

    flow = Dataflow("key_probe")
    keys = op.input("keys", flow, TestingSource([(k, k) for k in WORKER_KEYS]))
    op.inspect("done", op.stateful_map("note", keys, note), lambda *_: None)
    return flow
