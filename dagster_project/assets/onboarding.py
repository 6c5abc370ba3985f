"""Onboarding sensors the plant model does not declare: the stream lands their readings in
``unknown_readings``; ``sensor_proposals`` profiles each one and proposes its contract (a
plant-file sensor entry), shown in the UI; ``plantpulse sensors accept`` takes it."""

import json
import time

import dagster as dg

from dagster_project.assets.plant import _md
from dagster_project.resources import LakeResource
from lake.onboarding import proposal_rows, proposals
from plant import default_plant, load_plant
from plant.errors import PlantError
from plant.onboarding import proposal_yaml

__all__ = ["unknown_readings", "sensor_proposals", "build_unknown_sensors_sensor", "onboarding_job"]

unknown_readings = dg.AssetSpec(
    "unknown_readings",
    description="Readings of sensors the plant model does not declare, kept with their raw "
    "input by the Bytewax telemetry flow (schema on read) until `plantpulse sensors accept` "
    "declares them and replays them into `readings`.",
    group_name="lake",
    kinds={"delta", "bytewax"},
    owners=["team:data-plane"],
)


class ProposalsConfig(dg.Config):
    """``plant``: the plant file to judge against (default: the default plant)."""

    plant: str = ""


def _g(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


@dg.asset(
    deps=[unknown_readings],
    group_name="plant",
    kinds={"delta", "yaml"},
    owners=["team:reliability"],
)
def sensor_proposals(config: ProposalsConfig, lake: LakeResource) -> dg.MaterializeResult:
    """A proposed contract for every sensor the stream has seen but the plant does not declare:
    its profile (range, reading rate, resolution, gaps, stuck stretches, non-finite values), a
    guess of its kind among the plant's sensor kinds, and the plant-file entry to accept with
    `plantpulse sensors accept ASSET SENSOR`.  Rebuilt whole on every run."""
    try:
        plant = load_plant(config.plant) if config.plant else default_plant()
    except PlantError as exc:
        raise dg.Failure(description=str(exc)) from None
    store = lake.lake()
    found = proposals(store, plant)
    store.replace("sensor_proposals", proposal_rows(found, time.time_ns() // 1000))
    table = _md(
        [
            "asset",
            "sensor",
            "readings",
            "min",
            "max",
            "rate Hz",
            "resolution",
            "gaps",
            "stuck",
            "non-finite",
            "kind",
            "why",
        ],
        [
            [
                p.asset_id,
                p.sensor_id,
                p.n_readings,
                _g(p.min),
                _g(p.max),
                _g(p.rate_hz),
                _g(p.resolution),
                p.gaps,
                p.stuck_stretches,
                p.non_finite,
                p.kind or "?",
                p.kind_reason,
            ]
            for p, _ in found
        ],
    )
    entries = "\n\n".join(
        f"**{p.asset_id} / {p.sensor_id}** - accept with `plantpulse sensors accept "
        f"{p.asset_id} {p.sensor_id}`\n\n```yaml\n{proposal_yaml(e)}```"
        for p, e in found
    )
    return dg.MaterializeResult(
        metadata={
            "unknown_sensors": len(found),
            "plant": dg.MetadataValue.path(plant.path),
            "profiles": dg.MetadataValue.md(table),
            "proposed_entries": dg.MetadataValue.md(entries or "no undeclared sensors"),
            "proposals": dg.MetadataValue.json(
                {f"{p.asset_id}/{p.sensor_id}": e for p, e in found}
            ),
        }
    )


onboarding_job = dg.define_asset_job(
    "propose_sensor_contracts",
    selection=[sensor_proposals],
    description="Profile the sensors the plant does not declare and propose their contracts.",
    executor_def=dg.in_process_executor,
)


def new_landed_pairs(pairs: list[str], cursor: dict) -> tuple[list[str], dict]:
    """Which landed (asset/sensor) pairs are new since the cursor's."""
    seen = set(cursor.get("seen", []))
    new = sorted(set(pairs) - seen)
    return new, {"seen": sorted(seen | set(pairs))}


def build_unknown_sensors_sensor(job=onboarding_job) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Proposes contracts when a sensor the plant does not declare lands its "
        "first readings in unknown_readings.",
    )
    def unknown_sensors_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource
    ) -> dg.SensorResult | dg.SkipReason:
        from lake.onboarding import landed_sensors

        store = lake.lake()
        if not store.exists("unknown_readings"):
            return dg.SkipReason("no unknown_readings table yet")
        t = landed_sensors(store)
        pairs = [
            f"{a}/{s}"
            for a, s in zip(t["asset_id"].to_pylist(), t["sensor_id"].to_pylist(), strict=True)
        ]
        cursor = json.loads(context.cursor) if context.cursor else {}
        new, next_cursor = new_landed_pairs(pairs, cursor)
        if not new:
            return dg.SkipReason("no new undeclared sensors")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"onboard:{','.join(new)}",
                    tags={"plantpulse/new_sensors": ",".join(new)[:200]},
                )
            ],
            cursor=json.dumps(next_cursor),
        )

    return unknown_sensors_sensor
