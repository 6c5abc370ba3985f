"""Topology in the alerts: a downstream asset's alert names the upstream asset in alert (or with
a recent drift event) as the suspected cause, and the upstream alert lists its downstream
effects; topology-connected assets share a shard, so the two alerts meet."""

from __future__ import annotations

import json

import numpy as np

from dataplane.rows import Out
from dataplane.scoring import AlertPolicy, Channel, Emit, _drift_row, _update_alert
from dataplane.step import route
from dataplane.topology import TopologyBoard, annotate_alerts, shard_groups, upstream_assets
from dataplane.wire import Batch, Message
from lake import Lake, current_alerts
from plant import PLANTS_DIR, load_plant
from tests.conftest import T0_US

PLANT = load_plant(PLANTS_DIR / "demo.yaml")  # pump-01 feeds pump-02 and pump-03
POLICY = AlertPolicy()
S = 1_000_000


def _window(ch: Channel, asset: str, end_us: int, anomaly: float, emit: Emit) -> None:
    """One scored window through the real alert state machine (``dataplane.scoring``)."""
    for row in _update_alert(
        ch, POLICY, asset, end_us, anomaly, None, None, None, None, {"vib_rms": 4.0}
    ):
        emit.add("alerts", row)


def _hot(ch: Channel, asset: str, start_us: int, board: TopologyBoard, lake: Lake) -> None:
    """``open_after`` hot windows, one micro-batch each, annotated and written to the lake."""
    for k in range(POLICY.open_after):
        out = Out([Message("test", 0, T0_US, b"")])
        _window(ch, asset, start_us + k * S, 20.0, Emit(out, 0, T0_US))
        annotate_alerts(board, PLANT, out)
        for rows in out.sink_rows():
            lake.append(rows.table, rows.rows)


def test_downstream_alert_names_upstream_cause_and_upstream_lists_effect(lake: Lake):
    board = TopologyBoard()
    up, down, other = Channel(), Channel(), Channel()
    _hot(up, "pump-01", T0_US + 600 * S, board, lake)  # opens at 00:10:02
    _hot(other, "cmapss-engine", T0_US + 610 * S, board, lake)  # not connected: no cause
    _hot(down, "pump-02", T0_US + 720 * S, board, lake)  # opens at 00:12:02
    alerts = current_alerts(lake).set_index("asset_id")
    assert (
        alerts.loc["pump-02", "suspected_cause"] == "upstream pump-01 in alert since 00:10:02 UTC"
    )
    effects = list(alerts.loc["pump-01", "downstream_effects"])
    assert effects == [f"pump-02 alert {alerts.loc['pump-02', 'alert_id']} since 00:12:02 UTC"]
    assert alerts.loc["pump-01", "status"] == "open"  # the revision keeps the alert's state
    assert alerts.loc["pump-01", "suspected_cause"] is None
    assert alerts.loc["cmapss-engine", "suspected_cause"] is None

    # later rows of the alert (here: its closing) keep its cause
    out = Out([Message("test", 0, T0_US, b"")])
    for k in range(POLICY.close_after):
        _window(down, "pump-02", T0_US + (800 + k) * S, 0.0, Emit(out, 0, T0_US))
    annotate_alerts(board, PLANT, out)
    closing = out.dicts["alerts"][-1]
    assert closing["status"] == "closed"
    assert closing["suspected_cause"].startswith("upstream pump-01 in alert")
    assert "pump-02" not in board.by_asset or not board.by_asset["pump-02"]


def test_a_recent_upstream_drift_event_is_a_suspected_cause(lake: Lake):
    board = TopologyBoard()
    out = Out([Message("test", 0, T0_US, b"")])
    out.add(
        "drift_events",
        _drift_row("pump-01", T0_US + 100 * S, "feature", "env_bpfo_1", "PageHinkley", 3.0, "rose"),
        0,
    )
    annotate_alerts(board, PLANT, out)
    _hot(Channel(), "pump-03", T0_US + 200 * S, board, lake)
    row = current_alerts(lake).iloc[0]
    assert row["suspected_cause"] == (
        "upstream pump-01 drift in env_bpfo_1 (PageHinkley) at 00:01:40 UTC"
    )
    # a drift event long before the alert is not named
    board2 = TopologyBoard(drift={"pump-01": (T0_US, "vib_rms", "PageHinkley")})
    out = Out([Message("test", 0, T0_US, b"")])
    ch = Channel()
    for k in range(POLICY.open_after):
        _window(ch, "pump-03", T0_US + (7200 + k) * S, 20.0, Emit(out, 0, T0_US))
    annotate_alerts(board2, PLANT, out)
    assert out.dicts["alerts"][0]["suspected_cause"] is None


def test_connected_assets_share_a_shard():
    groups = shard_groups(PLANT)
    assert groups == {"pump-01": "pump-01", "pump-02": "pump-01", "pump-03": "pump-01"}
    assert upstream_assets(PLANT, "pump-02") == ["pump-01"]
    ids = ["pump-01", "pump-02", "pump-03", "pump-04", "pump-05", "pump-06", "pump-07"]
    messages = [
        Message(
            "test",
            i,
            T0_US,
            json.dumps(
                {"asset_id": a, "sensor_id": "bearing_temp", "ts": T0_US, "value": 40.0}
            ).encode(),
        )
        for i, a in enumerate(ids)
    ]
    pieces = route(Batch(messages), 8, groups)
    shard_of = {piece.assets[int(g)]: key for key, piece in pieces for g in np.unique(piece.g_a)}
    assert shard_of["pump-01"] == shard_of["pump-02"] == shard_of["pump-03"]
    assert len(set(shard_of.values())) > 1  # the others still spread by their own id


def _pump_batch(t0_s: int, n_s: int, rng: np.random.Generator, shifted: dict[str, int]) -> Batch:
    """``n_s`` seconds of the four scalar sensors of pump-01 and pump-02 at 1 Hz, one
    multi-sensor message per asset and second; an asset in ``shifted`` runs hot (pressure down,
    current and temperature up) from that second on."""
    messages = []
    for s in range(t0_s, t0_s + n_s):
        for asset in ("pump-01", "pump-02"):
            hot = s >= shifted.get(asset, 1 << 30)
            values = {
                "bearing_temp": 40.0 + rng.normal(0, 0.2) + (25.0 if hot else 0.0),
                "discharge_pressure": 5.0 + rng.normal(0, 0.05) - (3.0 if hot else 0.0),
                "motor_current": 20.0 + rng.normal(0, 0.2) + (30.0 if hot else 0.0),
                "shaft_speed": 1790.0 + rng.normal(0, 2.0),
            }
            messages.append(
                Message(
                    "test",
                    len(messages) + 10_000 * s,
                    T0_US,
                    json.dumps({"asset_id": asset, "ts": T0_US + s * S, "values": values}).encode(),
                )
            )
    return Batch(messages)


def test_the_stream_annotates_its_own_alerts(lake: Lake):
    """Through ``dataplane.step.process`` and its process detectors: pump-01 (upstream) runs
    hot first, pump-02 two minutes later; pump-02's alert names pump-01 as the cause."""
    from dataplane.scoring import PROCESS_WARMUP
    from dataplane.step import Context, run_batch

    ctx = Context(plant=PLANT)
    rng = np.random.default_rng(7)
    state, alerts = None, []
    shifted = {"pump-01": PROCESS_WARMUP + 100, "pump-02": PROCESS_WARMUP + 220}
    for t0 in range(0, PROCESS_WARMUP + 300, 20):
        state, rows = run_batch(state, _pump_batch(t0, 20, rng, shifted), ctx)
        alerts += [r for r in rows if r.table == "alerts"]
    for r in alerts:
        lake.append("alerts", r.rows)
    # each asset's newest alert (a self-set-up detector may have raised an earlier one)
    current = (
        current_alerts(lake)
        .sort_values("opened_ts")
        .drop_duplicates("asset_id", keep="last")
        .set_index("asset_id")
    )
    assert {"pump-01", "pump-02"} <= set(current.index)
    assert current.loc["pump-02", "suspected_cause"].startswith("upstream pump-01 in alert since")
    assert list(current.loc["pump-01", "downstream_effects"])[0].startswith(
        f"pump-02 alert {current.loc['pump-02', 'alert_id']}"
    )


def test_an_alerts_table_written_before_the_new_columns_gains_them(lake: Lake):
    import pyarrow as pa
    from deltalake import DeltaTable

    from lake import table_spec

    spec = table_spec("alerts")
    old = pa.schema(
        [f for f in spec.schema if f.name not in ("suspected_cause", "downstream_effects")]
    )
    DeltaTable.create(lake.table_uri("alerts"), schema=old, partition_by=["date"])
    _hot(Channel(), "pump-01", T0_US, TopologyBoard(), lake)  # no cause: nulls
    _hot(
        Channel(),
        "pump-02",
        T0_US + 10 * S,
        TopologyBoard(drift={"pump-01": (T0_US, "vib_rms", "PageHinkley")}),
        lake,
    )
    alerts = current_alerts(lake).set_index("asset_id")
    assert alerts.loc["pump-02", "suspected_cause"].startswith("upstream pump-01 drift")
    assert alerts.loc["pump-01", "suspected_cause"] is None
