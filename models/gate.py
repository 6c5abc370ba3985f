"""The promotion gate: an explicit policy that decides whether a candidate replaces the
champion, and the rollback.

Every rule is evaluated and reported, pass or fail; ``champion`` moves only when all pass.  Each
decision (promote, refuse, rollback) is a row in ``model_decisions`` with its evidence as JSON,
and the same evidence is set as tags on the candidate's MLflow model version.

The gate never promotes without comparing: when a champion needs inputs the candidate's holdout
lacks (the candidate was trained without some features), they are read from the lake table the
holdout came from (the ``holdout_source`` tag: table and key columns) for exactly the holdout's
rows; if the lake cannot supply them for every row, the candidate is refused with that reason.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from lake import Lake, LakeError
from models.prognostics import ServedRUL
from models.registry import (
    CHAMPION,
    LoadedModel,
    ModelNotFoundError,
    champion_version,
    client,
    load_holdout,
    load_version,
)
from models.training import (
    Evaluation,
    evaluate_classifier,
    evaluate_regressor,
    latency_ms_per_1000,
    score_rul,
)
from physics.registry import FEATURE_VERSION

__all__ = [
    "GatePolicy",
    "plant_latency_ceiling_ms",
    "Decision",
    "PairedLatency",
    "paired_latency",
    "decide",
    "evaluate",
    "champion_holdout",
    "run_gate",
    "rollback",
]


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show to become champion.

    ``min_improvement``: relative improvement of the overall metric over the champion's on the
    same holdout (0.01 = 1 % better). ``slice_tolerance``: no slice may be worse than the
    champion's by more than this, relative (10 %: a slice is one holdout machine or condition,
    a few hundred windows, whose metric moves by a few % with the sampling alone).
    ``max_latency_ratio``: the candidate's prediction time for a batch of 1,000 holdout rows
    over the champion's, both measured in the same run on the same machine, interleaved
    (``paired_latency``), so a machine busy with other work slows both alike and the ratio
    stays what it is.  ``latency_ceiling_ms``: an absolute limit per 1,000 rows, only where the
    plant declares one (``serving.latency_ceiling_ms`` of the plant file: a controller's cycle,
    say); None judges the ratio alone.  ``require_validated_training``: the training data
    passed validation.
    """

    min_improvement: float = 0.01
    slice_tolerance: float = 0.10
    max_latency_ratio: float = 1.5
    latency_ceiling_ms: float | None = None
    require_validated_training: bool = True


def plant_latency_ceiling_ms(plant: Any) -> float | None:
    """The absolute latency ceiling ``plant`` declares (its file's ``serving`` section), or
    None: without one, the gate judges latency only against the champion's."""
    serving = getattr(plant, "serving", None)
    return None if serving is None else serving.latency_ceiling_ms


@dataclass
class Decision:
    decision: str  # promote | refuse | rollback
    model_name: str
    candidate_version: str
    champion_version: str | None
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"


def _worse_by(candidate: float, champion: float, higher_is_better: bool) -> float:
    """How much worse ``candidate`` is than ``champion``, relative (negative = better)."""
    if not (math.isfinite(candidate) and math.isfinite(champion)):
        return 0.0 if math.isfinite(candidate) else math.inf
    scale = max(abs(champion), 1e-9)
    return (champion - candidate) / scale if higher_is_better else (candidate - champion) / scale


def decide(
    candidate: Evaluation,
    champion: Evaluation | None,
    *,
    policy: GatePolicy,
    training_validated: bool,
    feature_version: int,
    signature_ok: tuple[bool, str],
    champion_unavailable: str | None = None,
    latency: PairedLatency | None = None,
) -> tuple[bool, list[str]]:
    """Apply every rule of ``policy``; returns (all passed, one line per rule).

    ``champion`` None with ``champion_unavailable`` set means there is a champion but it could
    not be evaluated on the holdout (the text says why): the comparison rule fails, since a
    candidate is never promoted over a champion it was not compared with.  ``latency`` is the
    paired measurement of both models (without a champion: the candidate's alone, judged by
    the plant's ceiling if it declares one); None falls back to the evaluations' own figures."""
    rules: list[tuple[bool, str]] = []
    if policy.require_validated_training:
        rules.append(
            (
                training_validated,
                "training data validated" if training_validated else "training data not validated",
            )
        )
    rules.append(
        (
            feature_version == FEATURE_VERSION,
            f"feature_version {feature_version} "
            + ("matches" if feature_version == FEATURE_VERSION else "differs from")
            + f" the stream's {FEATURE_VERSION}",
        )
    )
    rules.append(signature_ok)
    rules += _latency_rules(candidate, champion, policy, latency)
    m = candidate.metric
    if champion is None and champion_unavailable:
        rules.append((False, f"not compared with the champion: {champion_unavailable}"))
    elif champion is None:
        rules.append((True, f"no champion yet; {m} {candidate.overall:.4f}"))
    else:
        gain = -_worse_by(candidate.overall, champion.overall, candidate.higher_is_better)
        rules.append(
            (
                gain >= policy.min_improvement,
                f"{m} {candidate.overall:.4f} vs champion {champion.overall:.4f}: "
                f"{gain:+.1%} (needs {policy.min_improvement:+.1%})",
            )
        )
        worst = [
            (s, _worse_by(v, champion.slices[s], candidate.higher_is_better), v)
            for s, v in candidate.slices.items()
            if s in champion.slices
        ]
        bad = [w for w in worst if w[1] > policy.slice_tolerance]
        if bad:
            text = "; ".join(f"{s} {v:.4f} vs {champion.slices[s]:.4f}" for s, _, v in bad)
            rules.append(
                (False, f"slices worse than tolerance {policy.slice_tolerance:.0%}: {text}")
            )
        else:
            rules.append(
                (
                    True,
                    f"no slice worse than {policy.slice_tolerance:.0%} "
                    f"({len(worst)} slices compared)",
                )
            )
    return all(ok for ok, _ in rules), [("PASS: " if ok else "FAIL: ") + r for ok, r in rules]


@dataclass(frozen=True)
class PairedLatency:
    """Prediction time per 1,000 rows of candidate and champion, measured in the same run,
    alternating one call of each ``rounds`` times (medians), and the load average then."""

    candidate_ms: float
    champion_ms: float | None
    rounds: int
    load_avg_1m: float | None
    outputs: tuple[int, int] = (1, 1)  # what each predicts per row (classes; 1 for a regressor)

    @property
    def ratio(self) -> float | None:
        if self.champion_ms is None:
            return None
        return self.candidate_ms / max(self.champion_ms, 1e-6)

    @property
    def allowance(self) -> float:
        """How much of the ratio the candidate's extra outputs account for: a classifier that
        names three conditions where the champion named two does half as much work again
        (XGBoost grows one tree per class and round)."""
        return max(1.0, self.outputs[0] / max(self.outputs[1], 1))


def _load_avg() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not available on this platform
        return None


def paired_latency(
    candidate: Callable[[], object], champion: Callable[[], object] | None, rounds: int = 9
) -> PairedLatency:
    """Time ``candidate()`` and ``champion()`` (each one prediction of a 1,000-row batch)
    alternately, after one warm-up call of each: whatever else the machine does at that
    moment slows both, so their ratio compares the models, not the machine's load."""
    candidate()
    if champion is not None:
        champion()
    cand, champ = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        candidate()
        cand.append((time.perf_counter() - t0) * 1000.0)
        if champion is not None:
            t0 = time.perf_counter()
            champion()
            champ.append((time.perf_counter() - t0) * 1000.0)
    return PairedLatency(
        float(np.median(cand)),
        float(np.median(champ)) if champ else None,
        rounds,
        _load_avg(),
    )


def _outputs(model: LoadedModel) -> int:
    """Values ``model`` predicts per row: its classes (a binary classifier one), else 1."""
    n = len(model.classes or [])
    return n if n > 2 else 1


def batch_predictor(model: LoadedModel, rows: pd.DataFrame) -> Callable[[], object]:
    """One prediction of a 1,000-row batch of ``rows`` (sampled with replacement) by
    ``model``, as the stream calls it: what ``paired_latency`` times."""
    batch = rows.sample(n=1000, replace=True, random_state=0) if len(rows) else rows
    served = ServedRUL.of(model)
    if served is not None:
        snap = served.snapshot(batch)
        return lambda: served.predict(snap)
    x = batch[model.features].astype(np.float64).to_numpy()
    return lambda: model.model.predict(x)


def _latency_rules(
    candidate: Evaluation,
    champion: Evaluation | None,
    policy: GatePolicy,
    latency: PairedLatency | None,
) -> list[tuple[bool, str]]:
    """The latency rules: the ratio to the champion (same run, same machine) and, only if the
    plant declares one, the absolute ceiling; each line names its measurement."""
    if latency is None:  # evaluations measured apart (a caller without a paired measurement)
        latency = PairedLatency(
            candidate.latency_ms_per_1000,
            champion.latency_ms_per_1000 if champion is not None else None,
            1,
            _load_avg(),
        )
    load = f", load average {latency.load_avg_1m:.1f}" if latency.load_avg_1m is not None else ""
    rules: list[tuple[bool, str]] = []
    ratio = latency.ratio
    if ratio is None:
        rules.append(
            (
                True,
                f"latency {latency.candidate_ms:.2f} ms per 1,000 rows (no champion to compare "
                f"with{load})",
            )
        )
    else:
        allowed = policy.max_latency_ratio * latency.allowance
        per_output = (
            f" x {latency.outputs[0]}/{latency.outputs[1]} outputs = x{allowed:.2f}"
            if latency.allowance > 1.0
            else ""
        )
        rules.append(
            (
                ratio <= allowed,
                f"latency {latency.candidate_ms:.2f} ms vs champion {latency.champion_ms:.2f} ms "
                f"per 1,000 rows, measured together ({latency.rounds} alternating rounds{load}): "
                f"x{ratio:.2f} (at most x{policy.max_latency_ratio:g}{per_output})",
            )
        )
    if policy.latency_ceiling_ms is not None:
        rules.append(
            (
                latency.candidate_ms <= policy.latency_ceiling_ms,
                f"latency {latency.candidate_ms:.2f} ms per 1,000 rows (the plant's ceiling "
                f"{policy.latency_ceiling_ms:g} ms{load})",
            )
        )
    return rules


def needed_columns(model: LoadedModel) -> list[str]:
    """The holdout columns ``model`` predicts from: a served RUL model's history snapshot of
    its indicator's sensors, else the regressor's or classifier's inputs."""
    served = ServedRUL.of(model)
    if served is not None:
        return served.columns()
    return list(model.features)


def evaluate(model: LoadedModel, holdout: pd.DataFrame) -> Evaluation:
    """``model`` on ``holdout`` with the metric and slices its task declares (a served RUL
    model: its whole estimate - prior, residual, shift - and its interval's coverage)."""
    slice_by = [c for c in json.loads(model.tags.get("slice_by", "[]")) if c in holdout]
    if model.task == "regressor":
        served = ServedRUL.of(model)
        if served is None:
            return evaluate_regressor(model.model, holdout, slice_by)
        rul, low, high = served.predict(served.snapshot(holdout))
        truth = holdout["rul"].to_numpy()
        return score_rul(
            rul,
            holdout,
            slice_by,
            latency_ms_per_1000(lambda b: served.predict(served.snapshot(b)), holdout),
            {"interval_coverage": float(np.mean((truth >= low) & (truth <= high)))},
        )
    return evaluate_classifier(model.model, model.classes or [], holdout, slice_by)


def champion_holdout(
    lake: Lake, holdout: pd.DataFrame, missing: list[str], source: dict[str, Any] | None
) -> tuple[pd.DataFrame | None, str]:
    """``holdout`` with the columns ``missing`` added from the lake, for every one of its rows.

    ``source`` is the candidate's ``holdout_source`` tag: ``{"table": ..., "keys": [...]}``, the
    lake table the holdout's rows came from and the columns that identify a row there.  Returns
    the completed holdout and a one-line account, or None and the reason it cannot be done (no
    source, a key or input the table does not have, holdout rows the lake has no row for)."""
    if not source or not source.get("table") or not source.get("keys"):
        return None, (
            f"the champion needs {missing}, which the candidate's holdout lacks, and the holdout "
            "names no lake table to read them from"
        )
    table, keys = str(source["table"]), [str(k) for k in source["keys"]]
    absent_keys = [k for k in keys if k not in holdout]
    if absent_keys or holdout.empty:
        return None, f"the candidate's holdout lacks the key column(s) {absent_keys} of {table!r}"
    filters = []
    if "asset_id" in keys:
        filters.append(("asset_id", "in", sorted(holdout["asset_id"].astype(str).unique())))
    for k in keys:  # bound the read by the holdout's time range
        if pd.api.types.is_datetime64_any_dtype(holdout[k]):
            filters += [(k, ">=", holdout[k].min()), (k, "<=", holdout[k].max())]
    try:
        if not lake.exists(table):
            return None, f"the champion needs {missing}; lake table {table!r} does not exist"
        found = lake.read(table, filters=filters or None, columns=[*keys, *missing])
    except LakeError as exc:
        return None, f"the champion needs {missing}, which the lake cannot supply: {exc}"
    for k in keys:  # the same key types on both sides of the join
        if found[k].dtype != holdout[k].dtype:
            found[k] = found[k].astype(holdout[k].dtype)
    found = found.drop_duplicates(subset=keys, keep="last")
    merged = holdout.merge(found, on=keys, how="left", indicator=True, validate="many_to_one")
    unmatched = int((merged["_merge"] != "both").sum())
    if unmatched:
        return None, (
            f"the champion needs {missing}; {unmatched} of {len(holdout)} holdout rows have no "
            f"row in lake table {table!r}"
        )
    merged = merged.drop(columns="_merge")
    merged.index = holdout.index
    return (
        merged,
        f"champion inputs {missing} read from lake table {table!r} for all {len(holdout)} holdout rows",
    )


def _record(lake: Lake, tracking_uri: str, d: Decision) -> None:
    ts = pd.Timestamp.now(tz="UTC")
    lake.append(
        "model_decisions",
        pd.DataFrame(
            {
                "ts": [ts],
                "model_name": [d.model_name],
                "candidate_version": [d.candidate_version],
                "champion_version": [d.champion_version],
                "decision": [d.decision],
                "metrics": [json.dumps(d.evidence, default=float)],
                "reasons": [d.reasons],
            }
        ),
    )
    c = client(tracking_uri)
    tags = {
        "gate.decision": d.decision,
        "gate.decided_at": ts.isoformat(),
        "gate.reasons": " | ".join(d.reasons)[:4900],
        "gate.champion_before": d.champion_version or "none",
    }
    for k, v in tags.items():
        c.set_model_version_tag(d.model_name, d.candidate_version, k, v)


def run_gate(
    tracking_uri: str, lake: Lake, name: str, candidate: str, policy: GatePolicy | None = None
) -> Decision:
    """Evaluate version ``candidate`` of ``name`` and the champion on the candidate's holdout,
    apply ``policy``, move ``champion`` if every rule passes, and record the decision."""
    policy = policy or GatePolicy()
    c = client(tracking_uri)
    cand = load_version(tracking_uri, name, candidate)
    holdout = load_holdout(tracking_uri, name, cand.version)
    cand_eval = evaluate(cand, holdout)
    current = champion_version(c, name)
    champ: LoadedModel | None = None
    champ_rows: pd.DataFrame | None = None
    champ_eval: Evaluation | None = None
    unavailable: str | None = None
    completed_from_lake: str | None = None
    if current is not None and str(current.version) == cand.version:
        return Decision(
            "refuse",
            name,
            cand.version,
            cand.version,
            [f"FAIL: version {cand.version} is already the champion"],
        )
    if current is not None:
        champ = load_version(tracking_uri, name, str(current.version))
        missing = [f for f in needed_columns(champ) if f not in holdout]
        champ_rows = holdout
        if missing:
            source = json.loads(cand.tags.get("holdout_source", "null"))
            champ_rows, account = champion_holdout(lake, holdout, missing, source)
            if champ_rows is None:
                unavailable = f"version {current.version}: {account}"
            else:
                completed_from_lake = account
        if champ_rows is not None:
            champ_eval = evaluate(champ, champ_rows)
    needed = needed_columns(cand)
    missing_inputs = [f for f in needed if f not in holdout]
    signature_ok = (
        (True, f"signature: {len(needed)} inputs, all present in the holdout")
        if needed and not missing_inputs
        else (False, f"signature inputs missing from the data: {missing_inputs}")
    )
    latency = paired_latency(
        batch_predictor(cand, holdout),
        batch_predictor(champ, champ_rows) if champ is not None and champ_eval else None,
    )
    latency = replace(latency, outputs=(_outputs(cand), _outputs(champ) if champ else 1))
    ok, reasons = decide(
        cand_eval,
        champ_eval,
        policy=policy,
        training_validated=cand.tags.get("training_validated") == "true",
        feature_version=cand.feature_version,
        signature_ok=signature_ok,
        champion_unavailable=unavailable,
        latency=latency,
    )
    if completed_from_lake:
        reasons.append(f"NOTE: {completed_from_lake}")
    d = Decision(
        "promote" if ok else "refuse",
        name,
        cand.version,
        str(current.version) if current is not None else None,
        reasons,
        {
            "candidate": cand_eval.as_dict(),
            "champion": champ_eval.as_dict() if champ_eval else None,
            "champion_unavailable": unavailable,
            "champion_inputs_from_lake": completed_from_lake,
            "latency": {**asdict(latency), "ratio": latency.ratio},
            "policy": asdict(policy),
        },
    )
    if ok:
        c.set_registered_model_alias(name, CHAMPION, cand.version)
    _record(lake, tracking_uri, d)
    return d


def rollback(tracking_uri: str, lake: Lake, name: str, reason: str) -> Decision:
    """Move ``champion`` back to the version it replaced at its promotion, and record why."""
    c = client(tracking_uri)
    current = champion_version(c, name)
    if current is None:
        raise ModelNotFoundError(f"model {name!r} has no champion to roll back")
    decisions = lake.read("model_decisions") if lake.exists("model_decisions") else pd.DataFrame()
    promoted = (
        decisions[
            (decisions["model_name"] == name)
            & (decisions["decision"] == "promote")
            & (decisions["candidate_version"] == str(current.version))
        ].sort_values("ts")
        if not decisions.empty
        else decisions
    )
    if promoted.empty or promoted.iloc[-1]["champion_version"] is None:
        raise ModelNotFoundError(
            f"version {current.version} of {name!r} did not replace an earlier champion; "
            "there is nothing to roll back to"
        )
    previous = str(promoted.iloc[-1]["champion_version"])
    c.set_registered_model_alias(name, CHAMPION, previous)
    d = Decision(
        "rollback",
        name,
        str(current.version),
        previous,
        [f"rolled back from version {current.version} to {previous}: {reason}"],
        {"reason": reason, "restored": previous},
    )
    _record(lake, tracking_uri, d)
    return d
