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
