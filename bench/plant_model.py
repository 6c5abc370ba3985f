"""Plant model load time: a generated plant of 500 assets x 20 sensors, parsed, validated and
resolved (``plant.load_plant``), written two ways: with asset-kind templates (each asset one
line) and fully explicit (every sensor of every asset written out with its tag, unit, range and
rate).  Also the per-(asset, sensor) contract look-ups per second the stream would make.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Timer, parser, report
from plant import load_plant

KINDS = [  # (kind, unit, low, high, rate_hz)
    ("temperature", "degC", -40.0, 200.0, 1.0),
    ("pressure", "bar", 0.0, 40.0, 10.0),
    ("current", "A", 0.0, 400.0, 10.0),
    ("speed", "rpm", 0.0, 20000.0, 10.0),
    ("flow", "m3/h", 0.0, 900.0, 2.0),
]


def _sensor_ids(n_sensors: int) -> list[tuple[str, tuple[str, str, float, float, float]]]:
    return [
        (f"s{j:02d}_{KINDS[j % len(KINDS)][0]}", KINDS[j % len(KINDS)]) for j in range(n_sensors)
    ]


def _header() -> list[str]:
    lines = [
        "plant: generated",
        "bearings:",
        "  SKF_6205: {n_balls: 9, ball_diameter: 0.3126, pitch_diameter: 1.537}",
        "sensor_kinds:",
    ]
    lines += [
        f"  {k}: {{unit: {u}, range: [{lo}, {hi}], rate_hz: {r}}}" for k, u, lo, hi, r in KINDS
    ]
    return lines


def templated_plant(n_assets: int, n_sensors: int) -> str:
    """Every asset is of one asset kind that declares the sensors; assets are one line each."""
    lines = _header() + [
        "asset_kinds:",
        "  pump:",
        "    nominal_speed_rpm: 1480.0",
        "    components: [{id: de, kind: bearing, bearing: SKF_6205}]",
        "    sensors:",
    ]
    lines += [
        f'      - {{id: {sid}, kind: {kind[0]}, tag: "{{asset_id}}-{j:02d}", component: de}}'
        for j, (sid, kind) in enumerate(_sensor_ids(n_sensors))
    ]
    lines += ["sites:", "  - id: site-1", "    assets:"]
    lines += [
        f"      - {{id: pump-{i:04d}, kind: pump, nominal_speed_rpm: {1400 + i % 100}.0}}"
        for i in range(n_assets)
    ]
    lines += _topology(n_assets)
    return "\n".join(lines) + "\n"


def explicit_plant(n_assets: int, n_sensors: int) -> str:
    """No templates: every sensor of every asset written out."""
    lines = _header() + ["sites:", "  - id: site-1", "    assets:"]
    for i in range(n_assets):
        lines += [
            f"      - id: pump-{i:04d}",
            "        nominal_speed_rpm: 1480.0",
            "        components: [{id: de, kind: bearing, bearing: SKF_6205}]",
            "        sensors:",
        ]
        lines += [
            f"          - {{id: {sid}, tag: P{i:04d}-{j:02d}, kind: {k}, unit: {u}, "
            f"range: [{lo}, {hi}], rate_hz: {r}, component: de}}"
            for j, (sid, (k, u, lo, hi, r)) in enumerate(_sensor_ids(n_sensors))
        ]
    lines += _topology(n_assets)
    return "\n".join(lines) + "\n"


def _topology(n_assets: int) -> list[str]:
    # pumps in trains of 10: each feeds the next (an acyclic graph of n_assets - n_assets/10 edges)
    edges = [
        f"  - {{from: pump-{i:04d}, to: pump-{i + 1:04d}, kind: feeds}}"
        for i in range(n_assets - 1)
        if (i + 1) % 10
    ]
    return ["topology:", *edges]


def load_seconds(path: Path, repeats: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of one load (CPU time is the uncontended cost on a machine
    other work shares)."""
    times, cpu, n = [], [], 0
    for _ in range(repeats):
        c0 = time.process_time()
        with Timer() as t:
            plant = load_plant(path)
        cpu.append(time.process_time() - c0)
        times.append(t.seconds)
        n = sum(1 for _ in plant.iter_sensors())
    return statistics.median(times), statistics.median(cpu), n


def lookups_per_s(path: Path, seconds: float) -> float:
    plant = load_plant(path)
    keys = [(a.asset_id, s.sensor_id) for a, s in plant.iter_sensors()]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for asset_id, sensor_id in keys:
            plant.contract(asset_id, sensor_id)
        done += len(keys)
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    args = parser("plant_model", __doc__.splitlines()[0]).parse_args(argv)
    n_assets, n_sensors = 500, 20
    repeats = 1 if args.quick else 7
    with tempfile.TemporaryDirectory(prefix="plantpulse-bench-plant-") as tmp:
        templated = Path(tmp) / "templated.yaml"
        templated.write_text(templated_plant(n_assets, n_sensors))
        explicit = Path(tmp) / "explicit.yaml"
        explicit.write_text(explicit_plant(n_assets, n_sensors))
        t_templated, cpu_templated, n1 = load_seconds(templated, repeats)
        t_explicit, cpu_explicit, n2 = load_seconds(explicit, repeats)
        rate = lookups_per_s(templated, 0.2 if args.quick else 2.0)
        sizes = {p.name: len(p.read_text().splitlines()) for p in (templated, explicit)}
    assert n1 == n2 == n_assets * n_sensors, (n1, n2)
    metrics = {
        "templated_load_s": t_templated,
        "templated_load_cpu_s": cpu_templated,
        "explicit_load_s": t_explicit,
        "explicit_load_cpu_s": cpu_explicit,
        "sensors_resolved": float(n1),
        "templated_file_lines": float(sizes["templated.yaml"]),
        "explicit_file_lines": float(sizes["explicit.yaml"]),
        "contract_lookups_per_s": rate,
        "load_average_1min": os.getloadavg()[0],
    }
    targets = {"templated_load_s": "<= 1", "explicit_load_s": "<= 1"}
    return report(
        "plant_model",
        metrics,
        targets,
        quick=args.quick,
        out=args.out,
        title=f"bench.plant_model: {n_assets} assets x {n_sensors} sensors, "
        f"median of {repeats} loads" + (" (quick)" if args.quick else ""),
    )


if __name__ == "__main__":
    main()
