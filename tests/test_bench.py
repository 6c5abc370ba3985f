"""Each benchmark script runs end to end in --quick mode and writes its JSON (not a timing test)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tests.test_process_and_data import needs_data


@needs_data
@pytest.mark.parametrize("name", ["cwru", "rul", "features", "validation", "stream"])
def test_bench_quick_writes_the_contract_json(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / f"{name}.json"
    importlib.import_module(f"bench.{name}").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["name"] == name and result["quick"] is True
    assert {"machine", "when", "metrics", "targets"} <= set(result)
    assert result["metrics"] and all(isinstance(v, float) for v in result["metrics"].values())
    assert set(result["targets"]) <= set(result["metrics"])
    printed = capsys.readouterr().out
    assert f"bench.{name}" in printed and "metric" in printed
