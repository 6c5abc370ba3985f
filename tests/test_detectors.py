"""The self-setting detector and the alert lifecycle, driven through ``score_process`` (the
function the stream hands each process window to) with windows computed as the stream computes
them: what the ensemble sets up from an asset's own warm-up, that its members see different
things, that its alarm level follows the declared false-alarm budget, that a warm-up still
moving is extended, and that an alert opens, persists, is confirmed, re-baselined or closed as
the machine and the technician say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dataplane.alerts import AlertPolicy, settle
from dataplane.detectors import Ensemble
from dataplane.rows import Out
from dataplane.scoring import PROCESS_WARMUP, AssetScorer, Emit, score_process
from physics.detectors import Tails, alarm_threshold, cauchy_combine, extremal_index, mcd
from physics.process import rolling_window_stats
from physics.registry import PROCESS_WINDOW_S

T0_US = 1_700_000_000_000_000
S = 1_000_000
SENSORS = ("bearing_temp", "discharge_pressure", "motor_current")
RESOLUTION = {"bearing_temp": 0.01, "discharge_pressure": 0.001, "motor_current": 0.001}


def pump(n: int, seed: int, tail_df: float | None = None) -> dict[str, np.ndarray]:
    """1 Hz readings of a healthy pump: current follows discharge pressure (the affinity
    relationship), the housing temperature sits still; ``tail_df`` makes the current's noise
    heavy-tailed (Student t), as on a drive with switching spikes."""
    rng = np.random.default_rng(seed)
    pressure = 5.0 + rng.normal(0, 0.05, n)
    noise = rng.standard_t(tail_df, n) * 0.05 if tail_df else rng.normal(0, 0.05, n)
    return {
        "bearing_temp": 40.0 + rng.normal(0, 0.05, n),
        "discharge_pressure": pressure,
        "motor_current": 10.0 + 2.0 * (pressure - 5.0) + noise,
    }


class Labels:
    """A label feed (``dataplane.scoring.LabelFeed``) the test writes to."""

    def __init__(self) -> None:
        self.by_asset: dict[str, tuple] = {}

    def add(self, asset: str, ts_us: int, kind: str, component: str = "") -> None:
        self.by_asset[asset] = (*self.by_asset.get(asset, ()), (ts_us, kind, component, ""))

    def notes(self, asset_id: str) -> tuple:
        return self.by_asset.get(asset_id, ())


def stream(
    asset: str,
    readings: dict[str, np.ndarray],
    state: AssetScorer | None = None,
    policy: AlertPolicy | None = None,
    labels: Labels | None = None,
    start: int = 0,
    out: Out | None = None,
) -> tuple[AssetScorer, Out]:
    """Every sensor's 30 s window per second (level, slope, std and the sensor's quantum, as
    ``dataplane.step`` offers them) through ``score_process``, from second ``start``."""
    state, policy, out = state or AssetScorer(), policy or AlertPolicy(), out or Out([])
    window = int(PROCESS_WINDOW_S)
    stats_ = {s: rolling_window_stats(np.array([]), v, window) for s, v in readings.items()}
    n = len(next(iter(readings.values())))
    for t in range(n):
        tick = T0_US + (start + t) * S
        for s in readings:
            views = {k: float(stats_[s][k][t]) for k in ("level", "slope", "std")}
            views.update(
                resolution=RESOLUTION.get(s, 0.0),
                window_s=float(window),
                rate_hz=1.0,
                overlap=float(window),
            )
            score_process(
                state, Emit(out, 0, 0), asset, s, tick, tick, views, policy, labels=labels
            )
    return state, out


def opened(out: Out) -> list[dict]:
    return [
        r
        for r in out.dicts.get("alerts", [])
        if r["status"] == "open" and r["opened_ts"] == r["updated_ts"]
    ]


def level_of(state: AssetScorer, policy: AlertPolicy) -> float:
    return policy.for_channel("process", state.proc.detector).anomaly_open_at


# -- the numerics (physics.detectors) ---------------------------------------------------------
def test_mcd_ignores_a_quarter_of_outliers_that_move_the_mean():
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal([0, 0, 0], [[1, 0.8, 0], [0.8, 1, 0], [0, 0, 1]], size=400)
    x[:100] += [4.0, -4.0, 0.0]  # breaks the correlation of the first two
    fit = mcd(x)
    assert np.abs(fit.location).max() < 0.25 < np.abs(x.mean(0)).max()
    assert fit.covariance[0, 1] > 0.6  # the normal's correlation, not the mixture's
    assert fit.support[:100].sum() == 0 and fit.support[100:].mean() > 0.9


def test_tail_p_values_are_calibrated_inside_and_beyond_the_warm_up():
    """Against fresh draws from the warm-up's own distribution, P(p <= a) ~ a, also for ``a``
    below 1 / n where only the GPD tail can say anything."""
    rng = np.random.default_rng(1)
    tails = Tails.fit(stats.chi2.rvs(6, size=(400, 1), random_state=rng))
    fresh = tails.p_values(stats.chi2.rvs(6, size=(200_000, 1), random_state=rng))[:, 0]
    for a in (0.1, 0.01, 0.001, 1e-4):
        assert 0.4 * a < (fresh <= a).mean() < 2.5 * a, a


def test_cauchy_fusion_holds_its_level_when_members_are_dependent():
    """Three identical p-values (fully dependent members) fuse to about the same one: the
    combination does not count one piece of evidence three times (Fisher's would)."""
    p = np.random.default_rng(2).uniform(size=20_000)
    fused = cauchy_combine(np.stack([p, p, p], axis=1), np.full(3, 1 / 3))
    for a in (0.05, 0.01):
        assert (fused <= a).mean() < 1.5 * a
    fisher = stats.chi2.sf(-2 * 3 * np.log(p), 6)
    assert (fisher <= 0.01).mean() > 3 * 0.01


def test_the_alarm_level_gives_the_asked_rate_of_clusters():
    """A smoothed (clustered) noise series: its warm-up's alarm level for one cluster per
    ``k`` steps is crossed, as clusters, about that often on fresh data."""
    rng = np.random.default_rng(3)

    def smoothed(n: int) -> np.ndarray:
        raw = -np.log10(rng.uniform(size=n))
        out, level = np.empty(n), 0.0
        for i, v in enumerate(raw):
            level += 0.3 * (v - level)
            out[i] = level
        return out

    warm, fresh = smoothed(2000), smoothed(400_000)
    per_day = 86400.0 / 2000  # one cluster in 2000 steps of 1 s
    level = alarm_threshold(warm, 1.0, per_day)
    above = fresh > level
    clusters = int(np.sum(above[1:] & ~above[:-1]))
    assert 0.3 * 200 < clusters < 3.0 * 200
    assert alarm_threshold(warm, 1.0, per_day / 10) > level  # a tighter budget: higher level
    assert extremal_index(np.repeat(rng.uniform(size=500) > 0.9, 4)) < 0.5


# -- the ensemble per asset -------------------------------------------------------------------
def test_a_fault_inside_the_warm_up_is_not_learnt_as_normal():
    """A broken relationship (pressure up, current not following) for 15 % of the warm-up:
    the robust fit leaves it out, so the same fault after the warm-up alerts, and the alarm
    level is about the one a clean warm-up gives."""
    n = PROCESS_WARMUP + 200
    clean, faulty = pump(n, seed=1), pump(n, seed=1)
    fault = slice(120, 120 + int(0.15 * PROCESS_WARMUP))
    after = slice(PROCESS_WARMUP + 100, PROCESS_WARMUP + 160)
    for where in (fault, after):
        faulty["discharge_pressure"][where] += 0.6
    clean["discharge_pressure"][after] += 0.6
    policy = AlertPolicy()
    levels, scores = {}, {}
    for name, readings in (("clean", clean), ("faulty", faulty)):
        state, out = stream("pump-01", readings, policy=policy)
        levels[name] = level_of(state, policy)
        s = np.array([r["anomaly_score"] for r in out.dicts["scores"]])
        scores[name] = np.median(s[100 + 40 : 160])  # inside the late fault
        assert opened(out), name
    assert scores["faulty"] > 3 * levels["faulty"]
    assert levels["faulty"] < 2 * levels["clean"]


def test_each_asset_gets_the_alarm_level_its_own_warm_up_supports():
    """Two pumps with the same sensors, one with heavy-tailed current noise (a drive with
    switching spikes): each calibrates on its own warm-up, so the spiky one is quiet on its
    own normal, while the calm pump's detector, shown the spiky pump's windows, alarms."""
    import copy

    n = PROCESS_WARMUP * 3 // 2 + 900
    policy = AlertPolicy(alerts_per_day=0.1)
    rng = np.random.default_rng(2)
    spiky = pump(n, seed=7)
    spiky["motor_current"] += 0.05 * rng.standard_t(1.5, n)
    calm_state, _ = stream(
        "pump-01",
        {k: v[: PROCESS_WARMUP * 3 // 2 + 5] for k, v in pump(n, seed=7).items()},
        policy=policy,
    )
    assert calm_state.proc.detector.fitted
    borrowed = copy.deepcopy(calm_state)  # the calm pump's normal, judging the spiky pump
    start = PROCESS_WARMUP * 3 // 2 + 5
    later = {k: v[start:] for k, v in spiky.items()}
    _, on_borrowed = stream("pump-02", later, borrowed, policy, start=start)
    own_state, on_own = stream("pump-02", spiky, policy=policy)
    tails = (calm_state.proc.detector.tails[2], own_state.proc.detector.tails[2])
    j = calm_state.proc.detector.keys.index("motor_current:level")
    assert tails[1].shape[j] + tails[1].scale[j] > tails[0].shape[j] + tails[0].scale[j]
    assert len(opened(on_borrowed)) > len(opened(on_own))
    assert len(opened(on_own)) <= 1


def test_the_members_see_different_things():
    """A correlation that breaks while both sensors stay within their ranges is carried by the
    multivariate members; a small sustained shift of one sensor by the CUSUM; and the alert
    names the member and the channel."""
    n = PROCESS_WARMUP + 400
    broken = pump(n, seed=4)
    broken["motor_current"][PROCESS_WARMUP + 100 :] -= 2.0 * 0.08  # pressure within range...
    broken["discharge_pressure"][PROCESS_WARMUP + 100 :] += 0.08  # ...current does not follow
    state, out = stream("pump-01", broken)
    assert opened(out)
    members = dict(state.proc.detector.contributions(10))
    relation = max(v for k, v in members.items() if k.split(":")[0] in ("distance", "spe"))
    assert relation > 3.0  # p < 0.001 from the relation between the sensors alone

    shifted = pump(n, seed=5)
    shifted["bearing_temp"][PROCESS_WARMUP + 100 :] += 0.03  # a small lasting shift
    _, out = stream("pump-02", shifted)
    alert = opened(out)[0]
    named = {f["feature"]: f["contribution"] for f in alert["top_features"]}
    assert next(iter(named)) in ("cusum:bearing_temp:level", "shift:bearing_temp:level")
    assert named.get("cusum:bearing_temp:level", 0.0) > named.get(
        "distance:bearing_temp:level", 0.0
    )


def test_a_slow_normal_drift_does_not_alert_a_step_fault_does():
    """The housing warms steadily from the start (a slow state: watched by its slope, decided
    from the warm-up) and the operating point creeps up after the warm-up (pressure and current
    together, by one reading's scatter in 23 minutes): no more alerts than the same pump with
    neither, and none about the warming housing.  The same pump with a step in its discharge
    pressure (current not following): an alert, soon after the step."""
    n = PROCESS_WARMUP + 1400
    policy = AlertPolicy(alerts_per_day=0.1)
    drifting = pump(n, seed=3)
    drifting["bearing_temp"] += np.arange(n) * (3.0 / 3600.0)  # 3 degC an hour
    creep = np.clip(np.arange(n) - PROCESS_WARMUP, 0, None) * (0.05 / 1400.0)
    drifting["discharge_pressure"] += creep
    drifting["motor_current"] += 2.0 * creep
    state, out = stream("pump-01", drifting, policy=policy)
    assert state.proc.detector.views == {
        "bearing_temp": "slope",
        "discharge_pressure": "level",
        "motor_current": "level",
    }
    _, still = stream("pump-03", pump(n, seed=3), policy=policy)
    assert len(opened(out)) <= len(opened(still))
    led = [r["top_features"][0]["feature"] for r in opened(out)]
    assert not [f for f in led if "bearing_temp" in f]

    stepped = pump(n, seed=3)
    onset = PROCESS_WARMUP + 500
    stepped["discharge_pressure"][onset:] += 0.4
    _, out = stream("pump-02", stepped, policy=policy)
    first = opened(out)
    assert first and all(r["opened_ts"] >= T0_US + onset * S for r in first)
    assert (first[0]["opened_ts"] - T0_US) / S - onset <= 30


def test_a_warm_up_still_moving_at_its_end_is_extended_and_says_so():
    """A pump whose operating point still ramps up over the end of its warm-up learns for
    longer (a ``drift_events`` row says why); a settled one does not."""
    n = PROCESS_WARMUP * 2
    settling = pump(n, seed=6)
    ramp = np.clip((np.arange(n) - 280) / 200.0, 0, 1) * 0.3
    settling["discharge_pressure"] += ramp
    settling["motor_current"] += 2 * ramp
    state, out = stream("pump-01", settling)
    events = out.dicts.get("drift_events", [])
    assert [e["subject"] for e in events][:1] == ["process_warmup_extended"]
    assert events[0]["detector"] == "warm-up" and events[0]["statistic"] > 2.0
    assert state.proc.detector.target > PROCESS_WARMUP
    steady, out = stream("pump-02", pump(n, seed=6))
    assert steady.proc.detector.target == PROCESS_WARMUP
    assert not [e for e in out.dicts.get("drift_events", []) if "warmup" in e["subject"]]


@pytest.mark.parametrize("budget", [0.1, 10.0])
def test_the_budget_sets_the_alarm_level(budget: float):
    state, _ = stream("pump-01", pump(PROCESS_WARMUP * 3 // 2 + 5, seed=2))
    det = state.proc.detector
    assert det.fitted
    policy = AlertPolicy(alerts_per_day=budget).for_channel("process", det)
    assert policy.anomaly_open_at == pytest.approx(det.alarm_level(budget))
    assert policy.anomaly_close_below <= policy.anomaly_open_at
    # a larger budget (more alarms accepted) can only lower the level
    assert det.alarm_level(10 * budget) <= det.alarm_level(budget)
    assert AlertPolicy().for_channel("vibration") == AlertPolicy()


def test_a_declared_view_is_kept_and_sensors_without_warm_up_data_never_score():
    """A sensor offered with one view (declared in the plant with its reason) is watched by
    it; a detector given nothing finite in its warm-up stays silent instead of crashing."""
    det = Ensemble(warmup=50)
    rng = np.random.default_rng(0)
    for t in range(50):
        det.observe(
            {
                "a:slope": rng.normal(),
                "b:level": rng.normal(),
                "b:slope": rng.normal(),
                "b:std": 5.0,
            },
            t * S,
        )
    assert det.views == {"a": "slope", "b": "level"}
    assert math.isfinite(det.alarm_level(1.0))
    empty = Ensemble(warmup=5)
    for t in range(6):
        empty.observe({}, t * S)
    assert empty.fitted and empty.observe({"a:level": 1.0}, 7 * S).score == 0.0


# -- the alert lifecycle ----------------------------------------------------------------------
def _summaries(out: Out) -> list[str]:
    return [r["summary"] for r in out.dicts.get("alerts", [])]


def test_a_step_change_persists_and_a_technicians_label_rebaselines_it():
    """A lasting step (a new operating point nobody declared): the alert opens, then becomes a
    persisting change once its evidence stops rising; a ``normal_operation`` label closes it
    and the asset learns the new level as its normal, without a second alert on it."""
    policy = AlertPolicy()
    n = PROCESS_WARMUP + 400
    stepped = pump(n + 2 * PROCESS_WARMUP, seed=8)
    stepped["discharge_pressure"][PROCESS_WARMUP + 60 :] += 0.4
    stepped["motor_current"][PROCESS_WARMUP + 60 :] += 0.8
    labels = Labels()
    first = {k: v[:n] for k, v in stepped.items()}
    state, out = stream("pump-01", first, policy=policy, labels=labels)
    rows = out.dicts["alerts"]
    assert rows[0]["status"] == "open" and "persisting change" in rows[-1]["summary"]
    alert_id = rows[0]["alert_id"]
    labels.add("pump-01", T0_US + n * S, "normal_operation")
    rest = {k: v[n:] for k, v in stepped.items()}
    state, out = stream("pump-01", rest, state, policy, labels, start=n, out=out)
    mine = [r for r in out.dicts["alerts"] if r["alert_id"] == alert_id]
    assert mine[-1]["status"] == "closed" and "re-baselined" in mine[-1]["summary"]
    assert mine[-1]["closed_ts"] == T0_US + n * S
    assert state.proc.detector.fitted  # learnt again, from the new level
    assert [r["alert_id"] for r in opened(out)] == [alert_id]  # no alert on the new normal


def test_a_confirmed_fault_stays_open_until_a_repair():
    """A technician's ``failure`` label confirms the open alert: it does not close when the
    evidence calms down; a ``repair`` closes it and re-baselines the asset."""
    policy = AlertPolicy()
    n = PROCESS_WARMUP + 300
    readings = pump(n + 300, seed=9)
    readings["discharge_pressure"][PROCESS_WARMUP + 50 : PROCESS_WARMUP + 150] += 0.5
    labels = Labels()
    state, out = stream(
        "pump-01",
        {k: v[: PROCESS_WARMUP + 100] for k, v in readings.items()},
        policy=policy,
        labels=labels,
    )
    alert = opened(out)[0]
    labels.add("pump-01", alert["opened_ts"], "failure", "discharge_pressure_sensor")
    state, out = stream(
        "pump-01",
        {k: v[PROCESS_WARMUP + 100 : n] for k, v in readings.items()},
        state,
        policy,
        labels,
        start=PROCESS_WARMUP + 100,
        out=out,
    )
    rows = [r for r in out.dicts["alerts"] if r["alert_id"] == alert["alert_id"]]
    assert any("confirmed" in r["summary"] for r in rows)
    assert rows[-1]["status"] == "open"  # calm again for 150 windows, but confirmed
    labels.add("pump-01", T0_US + n * S, "repair", "discharge_pressure_sensor")
    state, out = stream(
        "pump-01", {k: v[n:] for k, v in readings.items()}, state, policy, labels, start=n, out=out
    )
    rows = [r for r in out.dicts["alerts"] if r["alert_id"] == alert["alert_id"]]
    assert rows[-1]["status"] == "closed" and "re-baselined" in rows[-1]["summary"]


def test_an_alert_closes_after_a_sustained_stretch_back_in_normal():
    """A transient fault: the alert closes once the asset has been back within its normal
    for ``close_after`` windows, and labels older than what the scorer saw are ignored."""
    policy = AlertPolicy()
    readings = pump(PROCESS_WARMUP + 400, seed=10)
    readings["discharge_pressure"][PROCESS_WARMUP + 50 : PROCESS_WARMUP + 110] += 0.5
    labels = Labels()
    labels.add("pump-01", T0_US - 10 * S, "normal_operation")  # before this scorer started
    state, out = stream("pump-01", readings, policy=policy, labels=labels)
    rows = out.dicts["alerts"]
    assert rows[0]["status"] == "open" and rows[-1]["status"] == "closed"
    closed_after_s = (rows[-1]["closed_ts"] - T0_US) / S - (PROCESS_WARMUP + 110)
    assert 0 < closed_after_s < PROCESS_WINDOW_S + 3 * policy.close_after
    assert "back within its normal" in rows[-1]["summary"]


def test_settle_leaves_an_asset_without_an_alert_as_it_is():
    ch = AssetScorer().proc
    assert settle(ch, "pump-01", T0_US, "failure", "bearing_outer_race", "").rows == []
    assert settle(ch, "pump-01", T0_US, "inspection", "", "").rebaseline is False
    assert settle(ch, "pump-01", T0_US, "operating_change", "", "").rebaseline is True


# -- in the running stream: a label written to the lake re-baselines the asset ---------------
def test_a_label_in_the_lake_rebaselines_the_running_stream(tmp_path):
    """The whole stream without an engine (``run_batch`` per micro-batch, the shard state kept
    between them), the label feed reading the real ``maintenance_events`` table: a SKAB-like rig
    steps to a new operating point, its alert becomes a persisting change, a technician labels
    it ``normal_operation`` with the CLI's own code while the stream runs, and the next batches
    close the alert and learn the new normal, without a restart."""
    import pandas as pd

    from bytewax_flows.labels import MaintenanceFeed
    from bytewax_flows.replay import readings_messages
    from dataplane.context import Context
    from dataplane.formats import Batch, Message
    from dataplane.step import run_batch
    from lake import Lake, Settings, current_alerts
    from plantpulse_cli.label import record_label

    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(11)
    n = PROCESS_WARMUP * 3 // 2 + 1800
    t = pd.date_range("2026-03-01", periods=n, freq="s", tz="UTC")
    flow = 32.0 + rng.normal(0, 0.4, n)
    flow[PROCESS_WARMUP * 3 // 2 + 100 :] -= 3.0  # a valve left half closed: a new state
    sensors = {"skab_volume_flow_rate_rms": flow, "skab_current": 1.0 + rng.normal(0, 0.05, n)}
    readings = pd.concat(
        pd.DataFrame({"asset_id": "skab-rig", "sensor_id": s, "ts": t, "value": v})
        for s, v in sensors.items()
    )
    timeline = readings_messages(readings, batch_s=10.0)["skab-rig"]
    ctx = Context(labels=MaintenanceFeed(lake.uri, refresh_s=0.0))
    state = None

    def run(messages: list) -> None:
        nonlocal state
        batch = Batch([Message("test", i, ts, body) for i, (ts, body) in enumerate(messages)])
        state, rows = run_batch(state, batch, ctx)
        for r in rows:
            if r.table == "alerts" and r.rows.num_rows:
                lake.append("alerts", r.rows)

    half = (PROCESS_WARMUP * 3 // 2 + 700) * len(sensors) // 10  # messages: 10 s per sensor
    for k in range(0, half, 20):
        run(timeline[k : min(k + 20, half)])
    alerts = current_alerts(lake)
    assert len(alerts) == 1 and "persisting change" in alerts.iloc[0]["summary"]
    alert_id = alerts.iloc[0]["alert_id"]
    labelled_at = pd.Timestamp(timeline[half][0], unit="us", tz="UTC")
    row = record_label(
        Settings.from_env({"PLANTPULSE_HOME": str(tmp_path), "PLANTPULSE_LAKE": lake.uri}),
        alert_id,
        kind="normal_operation",
        component=None,
        ts=labelled_at.isoformat(),
    )
    assert row["kind"] == "normal_operation" and row["asset_id"] == "skab-rig"
    for k in range(half, len(timeline), 20):
        run(timeline[k : k + 20])
    alerts = current_alerts(lake)
    mine = alerts[alerts["alert_id"] == alert_id].iloc[0]
    assert mine["status"] == "closed" and "re-baselined" in mine["summary"]
    assert abs((mine["closed_ts"] - labelled_at).total_seconds()) <= 20
    assert len(alerts) == 1  # the new level is the asset's normal now: no new alert on it


def test_a_warm_up_resumed_from_an_older_snapshot_sets_up_the_same_detector():
    """The warm-up keeps its windows packed (names, values); a recovery snapshot written before
    that holds dicts.  Either way, and mixed, the warm-up ends in the same fitted detector."""
    rng = np.random.default_rng(5)
    windows = [
        {f"{s}:level": float(v) for s, v in zip(SENSORS, rng.normal(0, 1, 3), strict=True)}
        for _ in range(60)
    ]
    packed, mixed = Ensemble(warmup=50), Ensemble(warmup=50)
    for i, w in enumerate(windows[:49]):
        packed.observe(w, T0_US + i * S)
        mixed.observe(w, T0_US + i * S)
    assert isinstance(packed.buffer, list) and all(isinstance(b, tuple) for b in packed.buffer)
    mixed.buffer = [dict(zip(*b, strict=True)) for b in mixed.buffer or []]  # as unpickled
    for i, w in enumerate(windows[49:], start=49):
        a, b = packed.observe(w, T0_US + i * S), mixed.observe(w, T0_US + i * S)
        assert (a is None) == (b is None)
        if a is not None:
            assert a == b
    assert packed.fitted and mixed.fitted and packed.keys == mixed.keys
    np.testing.assert_allclose(packed.center, mixed.center)


def test_an_extended_warm_up_learns_the_normal_from_its_latest_windows():
    """A warm-up extended because the operating point still ramped: once settled, the normal is
    fitted on the latest ``warmup`` windows (where the asset is now), not on the ramp too."""
    n = PROCESS_WARMUP * 2
    settling = pump(n, seed=6)
    ramp = np.clip((np.arange(n) - 280) / 200.0, 0, 1) * 0.3
    settling["discharge_pressure"] += ramp
    settling["motor_current"] += 2 * ramp
    state, _ = stream("pump-01", settling)
    det = state.proc.detector
    assert det.fitted and det.target > PROCESS_WARMUP
    assert det.normal <= PROCESS_WARMUP  # the windows it was fitted on: the latest warm-up's


def test_windows_back_in_the_normal_are_learnt_while_an_alert_is_open():
    """While an alert is open the detector still learns from windows its state members find
    usual (so that a normal drifting on can be caught up with), never from the unusual ones."""
    policy = AlertPolicy()
    readings = pump(PROCESS_WARMUP + 400, seed=10)
    readings["discharge_pressure"][PROCESS_WARMUP + 50 : PROCESS_WARMUP + 110] += 0.5
    state, out, learnt = AssetScorer(), Out([]), []
    window = int(PROCESS_WINDOW_S)
    stats_ = {s: rolling_window_stats(np.array([]), v, window) for s, v in readings.items()}
    for t in range(PROCESS_WARMUP + 400):  # as ``stream``, watching the detector each second
        was_open, before = state.proc.alert is not None, state.proc.detector.learnt
        for s in readings:
            views = {k: float(stats_[s][k][t]) for k in ("level", "slope", "std")}
            views.update(resolution=RESOLUTION[s], window_s=float(window), rate_hz=1.0)
            views.update(overlap=float(window))
            tick = T0_US + t * S
            score_process(state, Emit(out, 0, 0), "pump-01", s, tick, tick, views, policy)
        if was_open and state.proc.alert is not None:
            learnt.append((t, state.proc.detector.learnt - before))
    assert opened(out), "the transient fault is not alerted"
    during = [d for t, d in learnt if t < PROCESS_WARMUP + 110]
    after = [d for t, d in learnt if t >= PROCESS_WARMUP + 110 + PROCESS_WINDOW_S]
    assert sum(during) == 0  # the change's own windows are not learnt
    assert sum(after) > 0  # usual windows are, with the alert still open
