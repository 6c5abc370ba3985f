"""Great Expectations suites derived from the sensor contracts, for batch validation.

One suite validates a whole partition of ``readings`` in one GX run (per-sensor expectations
use GX row conditions), so GX computes its metrics over the batch instead of row by row.
The stream's vectorised checks come from the same contracts (``expectations.checks``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # this machine may be offline

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.row_conditions import Column  # noqa: E402

from expectations.contracts import SENSORS  # noqa: E402
from plant import Plant, SensorContract  # noqa: E402

__all__ = [
    "GxResult",
    "readings_expectations",
    "plant_expectations",
    "features_expectations",
    "run_suite",
    "READINGS_COLUMNS",
]

READINGS_COLUMNS = [
    "asset_id",
    "sensor_id",
    "ts",
    "value",
    "raw_value",
    "quality",
    "ingest_ts",
    "date",
]


@dataclass(frozen=True)
class GxResult:
    """One GX expectation result, flattened."""

    expectation: str
    sensor_id: str | None
    column: str | None
    success: bool
    observed: dict[str, Any]


def _context() -> Any:
    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def readings_expectations(
    present: list[str] | None = None, plant: Plant | None = None
) -> list[gxe.Expectation]:
    """The contract expectations for a partition of ``readings``.

    Table: the declared columns; ``asset_id``/``sensor_id``/``ts`` never null; every sensor
    declared.  Per sensor in ``present`` (default: every scalar sensor; pass the sensors of the
    partition, it is much faster): values within the physical range and at most
    ``max_null_rate`` null.  Contracts come from ``SENSORS`` (the default plant by sensor id),
    or with ``plant`` from that plant's own declarations (``plant_expectations`` for per-asset
    ones).
    """
    by_id = SENSORS if plant is None else plant.contracts_by_sensor()
    declared = [c for c in by_id.values() if not c.frames]
    contracts = declared if present is None else [by_id[s] for s in present if s in by_id]
    out: list[gxe.Expectation] = [
        *_table_expectations(sorted(c.sensor_id for c in declared)),
    ]
    for c in contracts:
        out.extend(
            _contract_expectations(
                c, Column("sensor_id") == c.sensor_id, {"sensor_id": c.sensor_id}
            )
        )
    return out


def plant_expectations(
    plant: Plant, present: list[tuple[str, str]] | None = None
) -> list[gxe.Expectation]:
    """The contract expectations for a partition of ``readings`` under ``plant``, per
    (asset, sensor): each asset's scalar sensors checked against that asset's own contract.
    ``present`` lists the (asset_id, sensor_id) pairs of the partition (default: every
    declared pair of the plant's exactly named assets)."""
    pairs = (
        present
        if present is not None
        else [(a.asset_id, s.sensor_id) for a, s in plant.iter_sensors() if a.match is None]
    )
    sensor_ids = sorted({s.sensor_id for _, s in plant.iter_sensors() if not s.contract.frames})
    out: list[gxe.Expectation] = [*_table_expectations(sensor_ids)]
    for asset_id, sensor_id in pairs:
        c = plant.contract(asset_id, sensor_id)
        if c is None or c.frames:
            continue
        condition = (Column("asset_id") == asset_id) & (Column("sensor_id") == sensor_id)
        out.extend(
            _contract_expectations(c, condition, {"asset_id": asset_id, "sensor_id": sensor_id})
        )
    return out


def _table_expectations(sensor_ids: list[str]) -> list[gxe.Expectation]:
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=READINGS_COLUMNS, exact_match=True),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=column)
            for column in ("asset_id", "sensor_id", "ts")
        ),
        gxe.ExpectColumnValuesToBeInSet(column="sensor_id", value_set=sensor_ids),
    ]


def _contract_expectations(
    c: SensorContract, condition: Any, meta: dict[str, str]
) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="value", min_value=c.low, max_value=c.high, row_condition=condition, meta=meta
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="value", mostly=1.0 - c.max_null_rate, row_condition=condition, meta=meta
        ),
    ]


def features_expectations(
    feature_version: int, feature_columns: list[str]
) -> list[gxe.Expectation]:
    """Expectations for a partition of ``features``: the current feature version only, every
    feature column present, amplitudes non-negative, and the shaft speed known for most frames
    (otherwise the envelope features are NaN and the models go blind to bearing defects)."""
    out: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeInSet(column="feature_version", value_set=[feature_version]),
        *(gxe.ExpectColumnToExist(column=c) for c in feature_columns),
        gxe.ExpectColumnValuesToNotBeNull(column="vib_rms"),
    ]
    for column in ("vib_rms", "vib_peak"):
        out.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0.0))
    out.append(gxe.ExpectColumnMeanToBeBetween(column="vib_speed_ok", min_value=0.9, max_value=1.0))
    return out


def process_expectations(feature_version: int) -> list[gxe.Expectation]:
    """Expectations for the process windows of scalar sensors in ``features``: the current
    feature version, and a level for every window."""
    return [
        gxe.ExpectColumnValuesToBeInSet(column="feature_version", value_set=[feature_version]),
        gxe.ExpectColumnValuesToNotBeNull(column="proc_level"),
    ]


def run_suite(
    df: pd.DataFrame, expectations: list[gxe.Expectation], name: str = "suite"
) -> list[GxResult]:
    """Validate ``df`` against ``expectations`` as one GX suite in one run (one ephemeral
    context per run, nothing written to disk); one ``GxResult`` per expectation."""
    context = _context()
    batch = context.data_sources.add_pandas("lake").add_dataframe_asset("partition")
    definition = batch.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation.copy(update={"id": None}))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="run", data=definition, suite=suite)
    )
    result = validation.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    out = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = cfg.kwargs
        observed = {
            k: r.result.get(k)
            for k in (
                "element_count",
                "unexpected_count",
                "unexpected_percent",
                "observed_value",
                "partial_unexpected_list",
            )
            if k in r.result
        }
        out.append(
            GxResult(
                cfg.type,
                (cfg.meta or {}).get("sensor_id"),
                kwargs.get("column"),
                bool(r.success),
                observed,
            )
        )
    return out
