"""Small matplotlib pictures for asset metadata, embedded as PNG in markdown."""

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def png_markdown(fig: plt.Figure, alt: str) -> str:
    """The figure as a markdown image (base64 PNG), closing the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def sensor_trend(
    readings: pd.DataFrame, title: str, marks: list[tuple[pd.Timestamp, str]] | None = None
) -> plt.Figure:
    """One sensor's values over time (minute means and range), failures marked as red lines."""
    per_min = (
        readings.set_index("ts")["value"].resample("1min").agg(["mean", "min", "max"]).dropna()
    )
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.fill_between(
        per_min.index, per_min["min"], per_min["max"], alpha=0.25, label="min-max per minute"
    )
    ax.plot(per_min.index, per_min["mean"], lw=1, label="mean per minute")
    for when, label in marks or []:
        ax.axvline(when, color="red", lw=1)
        ax.annotate(label, (when, ax.get_ylim()[1]), color="red", fontsize=8, va="top", rotation=90)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.autofmt_xdate()
    return fig


def score_timeline(scores: pd.DataFrame, alerts: pd.DataFrame, title: str) -> plt.Figure:
    """Each asset's anomaly score (log scale) and, if a model served, its P(fault), with alert
    periods shaded."""
    assets = sorted(scores["asset_id"].unique())
    fig, axes = plt.subplots(
        len(assets), 1, figsize=(9, 1.8 * len(assets) + 0.6), sharex=True, squeeze=False
    )
    for ax, asset in zip(axes[:, 0], assets, strict=True):
        s = scores[scores["asset_id"] == asset].sort_values("window_end")
        ax.plot(s["window_end"], s["anomaly_score"].clip(lower=1e-3), lw=0.8, label="anomaly score")
        ax.set_yscale("log")
        ax.set_ylabel(asset, fontsize=8)
        if s["prediction"].notna().any():
            ax2 = ax.twinx()
            ax2.plot(s["window_end"], s["prediction"], color="tab:orange", lw=0.8, label="P(fault)")
            ax2.set_ylim(-0.05, 1.05)
            ax2.tick_params(labelsize=7)
        end = s["window_end"].max()
        for a in alerts[alerts["asset_id"] == asset].itertuples():
            closed = a.closed_ts if pd.notna(a.closed_ts) else end
            color = "red" if a.severity == "critical" else "gold"
            ax.axvspan(a.opened_ts, closed, color=color, alpha=0.25)
    axes[0, 0].set_title(title + " (shaded: alerts; orange: P(fault) of the champion)", fontsize=10)
    fig.autofmt_xdate()
    return fig


def drift_timeline(events: pd.DataFrame, title: str) -> plt.Figure:
    """Drift events over time: one row of markers per asset and subject."""
    fig, ax = plt.subplots(figsize=(9, 2.6))
    labels = sorted(
        {f"{a} · {s}" for a, s in zip(events["asset_id"], events["subject"], strict=True)}
    )
    for i, label in enumerate(labels):
        a, s = label.split(" · ")
        e = events[(events["asset_id"] == a) & (events["subject"] == s)]
        ax.scatter(e["ts"], [i] * len(e), marker="|", s=200)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.autofmt_xdate()
    return fig


def envelope_plot(freqs, amp, lines: dict[str, float], title: str, max_hz: float = 600.0):
    """An envelope spectrum with the bearing defect frequencies (1-3x) marked."""
    fig, ax = plt.subplots(figsize=(9, 3))
    keep = freqs <= max_hz
    ax.plot(freqs[keep], amp[keep], lw=0.8, color="black")
    colors = {"BPFO": "tab:red", "BPFI": "tab:blue", "2xBSF": "tab:green", "shaft": "tab:gray"}
    for name, hz in lines.items():
        for h in (1, 2, 3):
            if h * hz <= max_hz:
                ax.axvline(
                    h * hz,
                    color=colors.get(name, "tab:purple"),
                    lw=1,
                    alpha=0.7,
                    ls="-" if h == 1 else "--",
                    label=name if h == 1 else None,
                )
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("envelope amplitude (g)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=10)
    return fig


def rul_figure(df: pd.DataFrame, title: str, max_assets: int = 6) -> plt.Figure:
    """Remaining useful life over time per asset: the estimate (``rul``), its interval
    (``rul_low``..``rul_high``) shaded, and the truth (``truth``, where known) dashed; hours
    when the horizon is longer than ten, else seconds."""
    assets = sorted(df["asset_id"].astype(str).unique())[:max_assets]
    scale, unit = (3600.0, "h") if df["rul"].max() > 36_000 else (1.0, "s")
    fig, axes = plt.subplots(len(assets), 1, figsize=(9, 1.9 * len(assets) + 0.6), squeeze=False)
    for ax, asset in zip(axes[:, 0], assets, strict=True):
        d = df[df["asset_id"].astype(str) == asset].sort_values("ts")
        ax.fill_between(
            d["ts"], d["rul_low"] / scale, d["rul_high"] / scale, alpha=0.25, label="interval"
        )
        ax.plot(d["ts"], d["rul"] / scale, lw=1, label="RUL")
        if "truth" in d and d["truth"].notna().any():
            ax.plot(d["ts"], d["truth"] / scale, "k--", lw=1, label="truth")
        ax.set_ylabel(f"{asset}\n({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.autofmt_xdate()
    return fig


def health_figure(prog: pd.DataFrame, title: str, max_assets: int = 8) -> plt.Figure:
    """Per asset (a row each): its remaining life over time with the interval shaded (hours
    when the horizon is longer than ten, else seconds), and beside it the health indicator's
    trend - each window's value and its rolling mean over the last ten."""
    assets = sorted(prog["asset_id"].astype(str).unique())[:max_assets]
    scale, unit = (3600.0, "h") if prog["rul_high"].max() > 36_000 else (1.0, "s")
    fig, axes = plt.subplots(
        len(assets), 2, figsize=(11, 1.9 * len(assets) + 0.7), squeeze=False, sharex="row"
    )
    for (left, right), asset in zip(axes, assets, strict=True):
        d = prog[prog["asset_id"].astype(str) == asset].sort_values("ts")
        left.fill_between(
            d["ts"], d["rul_low"] / scale, d["rul_high"] / scale, alpha=0.25, label="interval"
        )
        left.plot(d["ts"], d["rul"] / scale, lw=1, label="RUL")
        left.set_ylabel(f"{asset}\nRUL ({unit})", fontsize=8)
        right.plot(d["ts"], d["health_indicator"], lw=0.6, alpha=0.5, label="indicator")
        right.plot(
            d["ts"], d["health_indicator"].rolling(10, min_periods=1).mean(), lw=1.2, label="trend"
        )
        right.set_ylabel("health indicator", fontsize=8)
        for ax in (left, right):
            ax.tick_params(labelsize=7)
    axes[0, 0].set_title(title, fontsize=10, loc="left")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[0, 1].legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    return fig
