"""A fresh ``plantpulse up``, as a newcomer starts it: nothing in its Dagster instance goes red in
its first minutes (no failed run, no failed sensor or schedule tick, no failed asset check).

The real launcher runs on a fresh state directory with the Dagster UI, the daemon, the stream and
the technician.  The only things shortened are how often ``new_readings_sensor`` looks (each
minute by default) and how often a day is revalidated (15 minutes): so the test sees a second
validation of the day in progress shortly after the first, and stops (Ctrl-C) while it runs.
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
from dagster._core.scheduler.instigation import TickStatus  # not exported by dagster 1.13

from tests.conftest import REPO

PLANTPULSE = str(Path(sys.executable).parent / "plantpulse")
DEADLINE_S = 300.0
ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runs(instance: DagsterInstance, statuses: list[DagsterRunStatus]) -> int:
    return len(instance.get_run_records(RunsFilter(job_name="validate_day", statuses=statuses)))


def red(instance: DagsterInstance) -> list[str]:
    """Everything the Dagster UI shows red: failed runs, failed sensor and schedule ticks, failed
    asset checks (of any severity).  A run canceled when ``up`` stops is the user's stop, not
    red."""
    out = []
    for rec in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE])):
        out.append(f"run {rec.dagster_run.job_name} failed ({rec.dagster_run.run_id})")
    for state in instance.all_instigator_state():
        for tick in instance.get_ticks(
            state.instigator_origin_id, state.selector_id, statuses=[TickStatus.FAILURE]
        ):
            error = tick.error.message.strip() if tick.error else ""
            out.append(f"tick {state.instigator_name}: {error[:300]}")
    for check in _check_evaluations(instance):
        if not check.passed:
            out.append(f"check {check.check_name}: {(check.description or '')[:300]}")
    return out


def _check_evaluations(instance: DagsterInstance, job: str | None = None) -> list:
    found = []
    for rec in instance.get_run_records(RunsFilter(job_name=job) if job else None):
        for entry in instance.all_logs(
            rec.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            if entry.dagster_event is not None:
                found.append(entry.dagster_event.event_specific_data)
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    "minutes",
    [None, pytest.param(3.0, marks=pytest.mark.long)],
    ids=["until-a-second-validation-runs", "three-minutes"],
)
def test_a_fresh_up_shows_no_red_in_its_first_minutes(tmp_path: Path, minutes: float | None):
    """Without ``minutes``: up until the first validation of the day in progress has finished
    and a second one is running, then Ctrl-C (which cancels that one).  With
    ``minutes``: that long after the launcher is up."""
    home = tmp_path / "home"
    log = tmp_path / "up.log"
    env = {
        **os.environ,
        "PLANTPULSE_HOME": str(home),
        "PLANTPULSE_VALIDATION_DEBOUNCE_S": "20",
        "PLANTPULSE_VALIDATION_TICK_S": "15",
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
        until = None if minutes is None else time.monotonic() + 60 * minutes
        with DagsterInstance.from_config(str(home / "dagster")) as instance:

            def done() -> bool:
                if until is not None:
                    return time.monotonic() >= until
                finished = _runs(instance, [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE])
                return finished >= 1 and _runs(instance, [DagsterRunStatus.STARTED]) >= 1

            while not done() and time.monotonic() < deadline:
                assert up.poll() is None, log.read_text()
                assert not red(instance), red(instance)
                time.sleep(2)
            assert done(), f"no second validation by the deadline\n{log.read_text()}"
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        up.wait(timeout=120)
    assert up.returncode == 0, log.read_text()
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert not red(instance), red(instance)
        # the day was really judged: the blocking check ran and passed
        contracts = [
            c
            for c in _check_evaluations(instance, "validate_day")
            if c.check_name == "readings_pass_contracts"
        ]
        assert contracts and all(c.passed for c in contracts)
        # what ran at the stop was canceled, not failed, and nothing was left running
        assert not instance.get_run_records(RunsFilter(statuses=ACTIVE))
