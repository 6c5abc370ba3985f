"""Replay of the reference data sets through the real flow into a real lake."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bytewax.testing import run_main

from bytewax_flows.payloads import encode_scalars
from bytewax_flows.replay import ReplaySource, UnknownDatasetError, dataset_messages
from bytewax_flows.telemetry import get_flow
from lake import Lake
from tests.test_cli import cli
from tests.test_process_and_data import DATA, needs_data


def replay(lake: Lake, name: str, **kwargs) -> None:
    run_main(get_flow(ReplaySource(dataset_messages(name, DATA), **kwargs), lake.uri))


@needs_data
def test_nab_replay_accounts_for_every_reading_including_the_backwards_step(lake: Lake):
    replay(lake, "nab")
    dead = lake.read("dead_letter")
    assert lake.count("readings") + len(dead) == 22_695  # every line of the file, exactly once
    # the file re-records 02:00-02:55 on 2014-01-07 after 02:55: older than the lateness, or a repeat
    assert dead["reason"].value_counts().to_dict() == {"late": 11, "duplicate": 1}
    replay(lake, "nab")  # the same replay again adds nothing: commits are keyed by source offset
    assert lake.count("readings") == 22_683 and lake.count("dead_letter") == 12


@needs_data
def test_skab_replay_is_clean_and_per_experiment(lake: Lake):
    replay(lake, "skab")
    per_asset = lake.read("readings", columns=["asset_id"])["asset_id"].value_counts()
    assert len(per_asset) == 16 and not lake.exists("dead_letter")
    assert per_asset["skab-valve1-0"] == 1147 * 8


@needs_data
def test_cwru_replay_features_show_the_fault_in_the_stream(lake: Lake):
    replay(lake, "cwru")
    f = (
        lake.read("features")
        .groupby("asset_id")[["env_bpfi_1", "env_bpfo_1", "vib_speed_ok"]]
        .median()
    )
    assert (f["vib_speed_ok"] == 1.0).all()  # the replay sends the recording's shaft speed first
    assert f.loc["cwru-IR021_1", "env_bpfi_1"] > 3 * f.loc["cwru-normal_0", "env_bpfi_1"]
    assert (
        f.loc["cwru-OR021_centered_at_6_1", "env_bpfo_1"] > 3 * f.loc["cwru-normal_0", "env_bpfo_1"]
    )
    assert lake.count("frames") == 19  # one sampled frame kept per recording


def test_paced_replay_follows_event_time(lake: Lake):
    import models.registry  # noqa: F401 - the flow loads it on its first batch: not what is timed

    t0 = 1_767_225_600_000_000
    timeline = [
        (t0 + i * 1_000_000, encode_scalars("pump-a", "bearing_temp", [t0 + i * 1_000_000], [40.0]))
        for i in range(4)
    ]
    start = time.perf_counter()
    run_main(get_flow(ReplaySource({"pump-a": timeline}, speed=10.0), lake.uri))
    elapsed = time.perf_counter() - start
    assert 0.3 <= elapsed < 5.0  # 3 s of event time at 10x
    assert lake.count("readings") == 4


def test_unknown_dataset_and_bad_speed_are_clear_errors(tmp_path: Path):
    with pytest.raises(UnknownDatasetError, match="choose one of cmapss, cwru, nab, skab"):
        dataset_messages("kaggle", tmp_path)
    with pytest.raises(ValueError, match="speed must be positive"):
        ReplaySource({}, speed=0)
    out = cli("replay", "kaggle", home=tmp_path)
    assert (
        out.returncode == 2
        and out.stderr.strip()
        == "error: unknown dataset 'kaggle'; choose one of cmapss, cwru, nab, skab"
    )
    out = cli("replay", "nab", "--speed", "0", home=tmp_path)
    assert (
        out.returncode == 2 and "must be positive" in out.stderr and "Traceback" not in out.stderr
    )
    out = cli("replay", "nab", "--data", str(tmp_path), home=tmp_path)
    assert out.returncode == 2 and "PLANTPULSE_DATA" in out.stderr and "Traceback" not in out.stderr


@needs_data
def test_replay_command_reports_new_rows(tmp_path: Path):
    out = cli("replay", "nab", "--asap", home=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "22,683" in out.stdout and "dead_letter" in out.stdout
    counts = pd.DataFrame(Lake(tmp_path / "lake").read("readings", columns=["sensor_id"]))[
        "sensor_id"
    ].unique()
    assert list(counts) == ["nab_machine_temperature"] and np.all(counts)
