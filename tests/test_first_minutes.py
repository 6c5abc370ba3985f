"""A fresh ``plantpulse up``, as a newcomer starts it: nothing in its Dagster instance goes red in
its first minutes (no failed run, no failed sensor or schedule tick, no failed asset check).

The real launcher runs on a fresh state directory with the Dagster UI, the daemon, the stream and
the technician.  The only thing shortened is how often a day is revalidated (15 minutes by
default): every sensor tick (each minute) may revalidate today, so the test sees validation of a
day in progress at several of its ages, not once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._core.scheduler.instigation import TickStatus

from tests.conftest import REPO

PLANTPULSE = str(Path(sys.executable).parent / "plantpulse")
VALIDATIONS = 2
"""``validate_day`` runs to see finish before stopping: the first one, on the stream's first
seconds, and one a minute later."""
DEADLINE_S = 270.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _finished_validations(instance: DagsterInstance) -> int:
    return len(
        instance.get_run_records(
            RunsFilter(
                job_name="validate_day",
                statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE],
            )
        )
    )


def red(instance: DagsterInstance) -> list[str]:
    """Everything the Dagster UI would show red: failed (or canceled) runs, failed sensor and
    schedule ticks, failed asset checks (of any severity)."""
    out = []
    for rec in instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])
    ):
        out.append(f"run {rec.dagster_run.job_name} {rec.dagster_run.status.value}")
    for state in instance.all_instigator_state():
        for tick in instance.get_ticks(
            state.instigator_origin_id, state.selector_id, statuses=[TickStatus.FAILURE]
        ):
            error = tick.error.message.strip() if tick.error else ""
            out.append(f"tick {state.instigator_name}: {error[:300]}")
    for rec in instance.get_run_records():
        for entry in instance.all_logs(
            rec.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            event = entry.dagster_event
            check = event.event_specific_data if event is not None else None
            if check is not None and not check.passed:
                out.append(f"check {check.check_name}: {(check.description or '')[:300]}")
    return out


@pytest.mark.slow
def test_a_fresh_up_shows_no_red_in_its_first_minutes(tmp_path: Path):
    home = tmp_path / "home"
    log = tmp_path / "up.log"
    env = {
        **os.environ,
        "PLANTPULSE_HOME": str(home),
        "PLANTPULSE_VALIDATION_DEBOUNCE_S": "30",
    }
    with open(log, "w") as sink:
        up = subprocess.Popen(
            [PLANTPULSE, "up", "--port", str(_free_port()), "--duration", str(DEADLINE_S + 60)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        # the launcher has created the instance's storage (opening it sooner races that)
        while "PlantPulse is up" not in log.read_text() and time.monotonic() < deadline:
            assert up.poll() is None, log.read_text()
            time.sleep(1)
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            while _finished_validations(instance) < VALIDATIONS and time.monotonic() < deadline:
                assert up.poll() is None, log.read_text()
                assert not red(instance), red(instance)
                time.sleep(3)
            finished = _finished_validations(instance)
            found = red(instance)
            evaluations = [
                e.dagster_event.event_specific_data
                for rec in instance.get_run_records(RunsFilter(job_name="validate_day"))
                for e in instance.all_logs(
                    rec.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
                )
                if e.dagster_event is not None
            ]
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
    assert finished >= VALIDATIONS, (
        f"only {finished} validate_day run(s) finished\n{log.read_text()}"
    )
    assert not found, found
    # the validation really judged the day: its blocking check ran and passed each time
    contracts = [c for c in evaluations if c.check_name == "readings_pass_contracts"]
    assert len(contracts) >= VALIDATIONS and all(c.passed for c in contracts)
    assert up.returncode == 0, log.read_text()
