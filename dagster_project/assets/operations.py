"""What operators look at: score and alert timelines, drift events, the envelope spectrum of
the newest alert's frame, and the open alerts, as pictures and tables on one asset."""

import dagster as dg
import numpy as np
import pandas as pd

from dagster_project.plots import (
    drift_timeline,
    envelope_plot,
    png_markdown,
    rul_figure,
    score_timeline,
)
from dagster_project.resources import LakeResource
from lake import current_alerts
from physics.bearing import SKF_6205, defect_frequencies
from physics.features import demodulation_band, envelope_spectrum

__all__ = ["operations_overview", "alert_frame_spectrum", "STREAM_TABLES"]

STREAM_TABLES = [
    dg.AssetSpec(
        name,
        description=f"`{name}`, appended continuously by the Bytewax telemetry flow: {what}.",
        group_name="lake",
        kinds={"delta", "bytewax"},
        owners=["team:data-plane"],
    )
    for name, what in (
        ("scores", "one scored window (anomaly score, champion prediction, model version)"),
        ("alerts", "alert lifecycles; the newest row of an alert_id is its state"),
        ("drift_events", "changes the River drift detectors found"),
        ("frames", "raw vibration frames kept by the flight recorder"),
        ("dead_letter", "every rejected input with its reason and raw payload"),
        ("prognostics", "remaining useful life with its interval, per health-indicator window"),
    )
]

HOURS = 24.0


def alert_frame_spectrum(store, alert: pd.Series):
    """The envelope spectrum of the first frame the flight recorder kept for ``alert``, with
    the defect frequencies at the shaft speed of that moment; None without a frame or speed."""
    frames = store.read("frames", filters=[("retained_because", "=", f"alert:{alert['alert_id']}")])
    if frames.empty:
        return None
    frame = frames.sort_values("ts_start").iloc[-1]
    speed = store.read(
        "readings",
        columns=["ts", "value"],
        filters=[
            ("asset_id", "=", alert["asset_id"]),
            ("sensor_id", "=", "shaft_speed"),
            ("ts", "<=", frame["ts_start"]),
        ],
    )
    if speed.empty:
        return None
    rpm = float(speed.sort_values("ts")["value"].iloc[-1])
    x = np.asarray(frame["samples"], np.float64)[None, :]
    fs = float(frame["sample_rate_hz"])
    low, high, _ = demodulation_band(x, fs)
    freqs, amp = envelope_spectrum(x, fs, low, high)
    f = defect_frequencies(SKF_6205, rpm)
    return envelope_plot(
        freqs,
        amp[0],
        {"BPFO": f.bpfo, "BPFI": f.bpfi, "2xBSF": 2 * f.bsf, "shaft": rpm / 60},
        f"{alert['asset_id']}: envelope spectrum of the frame at {frame['ts_start']:%H:%M:%S} "
        f"({rpm:.0f} rpm; band {low[0]:.0f}-{high[0]:.0f} Hz)",
    )


@dg.asset(
    deps=[t for t in STREAM_TABLES if t.key.to_user_string() != "dead_letter"],
    group_name="operations",
    kinds={"delta", "matplotlib"},
    owners=["team:reliability"],
)
def operations_overview(lake: LakeResource) -> dg.MaterializeResult:
    """The last 24 hours of event time: scores with alerts shaded, drift events, the open
    alerts with their top features, the envelope spectrum of the newest alert's frame, and
    each asset's remaining useful life with its interval against the truth (failures in
    ``maintenance_events``)."""
    store = lake.lake()
    if not store.exists("scores"):
        raise dg.Failure("no scores yet: run the stream (`plantpulse up`) first")
    newest = store.read("scores", columns=["window_end"])["window_end"].max()
    since = newest - pd.Timedelta(hours=HOURS)
    scores = store.read("scores", filters=[("window_end", ">=", since)])
    alerts = current_alerts(store)
    metadata: dict[str, dg.MetadataValue] = {
        "windows_scored": dg.MetadataValue.int(len(scores)),
        "open_alerts": dg.MetadataValue.int(int((alerts["status"] == "open").sum())),
        "scores_and_alerts": dg.MetadataValue.md(
            png_markdown(score_timeline(scores, alerts, "scores, last 24 h"), "score timeline")
        ),
    }
    if len(alerts):
        table = alerts[["asset_id", "severity", "status", "opened_ts", "summary"]].copy()
        table["top features"] = [
            ", ".join(f"{t['feature']} ({t['contribution']:+.2f})" for t in tops)
            for tops in alerts["top_features"]
        ]
        metadata["alerts"] = dg.MetadataValue.md(table.to_markdown(index=False))
        fig = alert_frame_spectrum(store, alerts.sort_values("opened_ts").iloc[-1])
        if fig is not None:
            metadata["newest_alert_envelope_spectrum"] = dg.MetadataValue.md(
                png_markdown(fig, "envelope spectrum")
            )
    if store.exists("drift_events"):
        events = store.read("drift_events", filters=[("ts", ">=", since)])
        if len(events):
            metadata["drift_events"] = dg.MetadataValue.md(
                png_markdown(drift_timeline(events, "drift events, last 24 h"), "drift")
            )
    if store.exists("prognostics"):
        prog = store.read("prognostics", filters=[("ts", ">=", since)])
        if len(prog):
            prog = with_rul_truth(
                prog,
                store.read("maintenance_events")
                if store.exists("maintenance_events")
                else pd.DataFrame(columns=["asset_id", "ts", "kind"]),
            )
            metadata["remaining_useful_life"] = dg.MetadataValue.md(
                png_markdown(
                    rul_figure(
                        prog,
                        "remaining useful life, last 24 h (shaded: the champion's "
                        f"{prog['coverage'].iloc[-1]:.0%} interval; dashed: truth from "
                        "maintenance_events failures)",
                    ),
                    "RUL over time",
                )
            )
            newest_rul = prog.sort_values("ts").groupby("asset_id").last()
            metadata["rul_now"] = dg.MetadataValue.md(
                newest_rul[["ts", "rul", "rul_low", "rul_high", "model_version"]].to_markdown()
            )
    return dg.MaterializeResult(metadata=metadata)


def with_rul_truth(prog: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """``prognostics`` rows with ``truth``: seconds to the asset's next ``failure`` in
    ``maintenance_events`` (NaN where none is recorded yet)."""
    fails = (
        events[events["kind"] == "failure"][["asset_id", "ts"]]
        .rename(columns={"ts": "failed_at"})
        .sort_values("failed_at")
    )
    prog = prog.sort_values("ts")
    if fails.empty:
        return prog.assign(truth=float("nan"))
    fails["failed_at"] = fails["failed_at"].astype(prog["ts"].dtype)
    out = pd.merge_asof(
        prog, fails, left_on="ts", right_on="failed_at", by="asset_id", direction="forward"
    )
    return out.assign(truth=(out["failed_at"] - out["ts"]).dt.total_seconds())
