"""The process detector sets itself up per asset from the asset's own warm-up: what it watches
of each sensor, its robust normal and its alert thresholds; then it follows slow normal drift
without absorbing a fault.  Driven through ``score_process``, the function the stream hands
each process window to, with windows computed as the stream computes them."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.rows import Out
from dataplane.scoring import (
    PROCESS_WARMUP,
    AlertPolicy,
    AssetScorer,
    Emit,
    RobustMahalanobis,
    score_process,
)
from physics.process import rolling_window_stats
from physics.registry import PROCESS_WINDOW_S

T0_US = 1_700_000_000_000_000
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


def stream(
    asset: str,
    readings: dict[str, np.ndarray],
    state: AssetScorer | None = None,
    policy: AlertPolicy | None = None,
) -> tuple[AssetScorer, Out]:
    """Every sensor's 30 s window per second (level, slope, std and the sensor's quantum, as
    ``dataplane.step`` offers them) through ``score_process``."""
    state, policy, out = state or AssetScorer(), policy or AlertPolicy(), Out([])
    window = int(PROCESS_WINDOW_S)
    stats = {s: rolling_window_stats(np.array([]), v, window) for s, v in readings.items()}
    n = len(next(iter(readings.values())))
    for t in range(n):
        tick = T0_US + t * 1_000_000
        for s in readings:
            views = {k: float(stats[s][k][t]) for k in ("level", "slope", "std")}
            views.update(
                resolution=RESOLUTION[s], window_s=float(window), rate_hz=1.0, overlap=float(window)
            )
            score_process(state, Emit(out, 0, 0), asset, s, tick, tick, views, policy)
    return state, out


def alerts_opened(out: Out) -> list[int]:
    return [r["opened_ts"] for r in out.dicts["alerts"] if r["status"] == "open"]


def test_a_fault_inside_the_warm_up_is_not_learnt_as_normal():
    """A broken relationship (pressure up, current not following) for 15 % of the warm-up:
    the robust fit leaves it out, so the same fault after the warm-up scores far above the
    asset's opening threshold, and the threshold is about the one a clean warm-up gives."""
    n = PROCESS_WARMUP + 200
    clean, faulty = pump(n, seed=1), pump(n, seed=1)
    fault = slice(120, 120 + int(0.15 * PROCESS_WARMUP))
    after = slice(PROCESS_WARMUP + 100, PROCESS_WARMUP + 160)
    for where in (fault, after):
        faulty["discharge_pressure"][where] += 0.6
    clean["discharge_pressure"][after] += 0.6
    policy = AlertPolicy()
    thresholds, fault_scores = {}, {}
    for name, readings in (("clean", clean), ("faulty", faulty)):
        state, out = stream("pump-01", readings, policy=policy)
        thresholds[name] = policy.for_channel("process", state.proc.detector).anomaly_open_at
        scores = np.array([r["anomaly_score"] for r in out.dicts["scores"]])
        fault_scores[name] = np.median(scores[100 + 40 : 160])  # inside the late fault
        assert alerts_opened(out), name
    assert fault_scores["faulty"] > 5 * thresholds["faulty"]
    assert thresholds["faulty"] < 2 * thresholds["clean"]
    assert fault_scores["faulty"] > 0.5 * fault_scores["clean"]


def test_each_asset_gets_the_threshold_its_own_warm_up_supports():
    """Two pumps with the same sensors, one with heavy-tailed current noise (a drive with
    switching spikes): each gets its opening threshold from its own warm-up, the spiky one a
    higher one; on the calm pump's threshold the spiky one would be hot far more often than
    on its own."""
    n = PROCESS_WARMUP + 600
    policy = AlertPolicy()
    rng = np.random.default_rng(2)
    spiky = pump(n, seed=7)
    spiky["motor_current"] += 0.03 * np.abs(rng.standard_t(1.5, n))
    runs = {
        "pump-01": stream("pump-01", pump(n, seed=7), policy=policy),
        "pump-02": stream("pump-02", spiky, policy=policy),
    }
    opens = {
        a: policy.for_channel("process", s.proc.detector).anomaly_open_at
        for a, (s, _) in runs.items()
    }
    assert opens["pump-02"] > 1.1 * opens["pump-01"]
    scores = {
        a: np.array([r["anomaly_score"] for r in out.dicts["scores"]])
        for a, (_, out) in runs.items()
    }
    on_calm = (scores["pump-02"] > opens["pump-01"]).mean()
    on_own = (scores["pump-02"] > opens["pump-02"]).mean()
    assert on_calm > 1.2 * on_own
    assert (scores["pump-01"] > opens["pump-01"]).mean() < 3 * policy.false_alarm_budget


def test_slow_normal_drift_does_not_alert_a_step_fault_does():
    """The housing warms steadily from the start (a slow state: watched by its slope, decided
    from the warm-up) and the pump's operating point creeps up after the warm-up (pressure and
    current together, by one reading's scatter in 23 minutes): no alert, with an operator's
    budget of 0.1 % of normal windows.  The same pump with a step in its discharge pressure
    (current not following): an alert, soon after the step and not before."""
    n = PROCESS_WARMUP + 1400
    policy = AlertPolicy(false_alarm_budget=0.001)
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
    assert not alerts_opened(out)

    stepped = pump(n, seed=3)
    onset = PROCESS_WARMUP + 500
    stepped["discharge_pressure"][onset:] += 0.4
    _, out = stream("pump-02", stepped, policy=policy)
    opened = alerts_opened(out)
    assert opened and all(t >= T0_US + onset * 1_000_000 for t in opened)
    assert (opened[0] - T0_US) / 1e6 - onset <= 30


def test_a_declared_view_is_kept_and_sensors_without_warm_up_data_never_score():
    """A sensor offered with one view (declared in the plant with its reason) is watched by
    it; a detector given nothing finite in its warm-up stays silent instead of crashing."""
    det = RobustMahalanobis(warmup=50)
    rng = np.random.default_rng(0)
    for _ in range(50):
        det.learn_one(
            {
                "a:slope": rng.normal(),
                "b:level": rng.normal(),
                "b:slope": rng.normal(),
                "b:std": 5.0,
            }
        )
    assert det.views == {"a": "slope", "b": "level"}
    assert det.quantile(0.99) > 0
    empty = RobustMahalanobis(warmup=5)
    for _ in range(6):
        empty.learn_one({})
    assert empty.fitted and empty.score_one({"a:level": 1.0}) == 0.0


@pytest.mark.parametrize("budget", [0.01, 0.05])
def test_the_false_alarm_budget_sets_the_opening_quantile(budget: float):
    state, _ = stream("pump-01", pump(PROCESS_WARMUP + 5, seed=2))
    det = state.proc.detector
    policy = AlertPolicy(false_alarm_budget=budget).for_channel("process", det)
    assert policy.anomaly_open_at == pytest.approx(det.quantile(1 - budget))
    assert policy.anomaly_close_below == pytest.approx(det.quantile(0.9))
    assert AlertPolicy().for_channel("vibration") == AlertPolicy()
