"""Resolution of a plant file into a ``Plant``: read and validate the YAML (one ``PlantError``
naming the file, the line and the field for any problem), merge each sensor's layers
(``SensorContract`` defaults < the sensor kind's ``sensor_kinds`` < the asset kind's sensor of
that id ``asset_kinds`` < the asset's own declaration), resolve components, relationships and
health indicators, fold in included files, and check the topology and the bindings."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from physics.bearing import BearingGeometry
from physics.registry import feature_names
from plant.bindings import ADAPTER_KINDS, check_adapters, check_replay
from plant.contract import Relationship, SensorContract
from plant.errors import PlantError
from plant.resolved import Asset, Component, HealthIndicator, Plant, Sensor
from plant.schema import (
    CONTRACT_FIELDS,
    AssetKindSpec,
    AssetSpec,
    ComponentSpec,
    PlantFile,
    SensorSpec,
)
from plant.topology import resolve_topology
from plant.yamlio import line_of, load_yaml

__all__ = ["resolve_file"]

_CONTRACT_DEFAULTS = {f.name: f.default for f in fields(SensorContract)}


def _pydantic_error(path: Path, raw: Any, exc: ValidationError) -> PlantError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    field_path = ""
    for part in loc:
        if isinstance(part, int):
            field_path += f"[{part}]"
        elif part in ("cmapss", "skab", "nab", "cwru") and field_path == "replay":
            continue  # the discriminated union's tag
        elif (
            part in ADAPTER_KINDS
            and field_path.startswith("adapters[")
            and (field_path.endswith("]"))
        ):
            continue
        else:
            field_path += ("." if field_path else "") + str(part)
    if err["type"] == "extra_forbidden":
        *parent, key = field_path.rsplit(".", 1) if "." in field_path else ("", field_path)
        return PlantError(
            path, line_of(raw, loc), parent[0] if parent else "", f"unknown key {key!r}"
        )
    message = err["msg"]
    if err["type"] == "missing":
        message = "required field missing"
    elif err["type"].startswith("union_tag") and field_path.startswith("adapters"):
        message = f"kind must be one of {', '.join(ADAPTER_KINDS)}"
    elif err["type"].startswith("union_tag"):
        message = "adapter must be one of cmapss, cwru, nab, skab"
    return PlantError(path, line_of(raw, loc), field_path, message)


def _read(path: Path) -> PlantFile:
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise PlantError(path, 1, "", "a plant file is a YAML mapping (plant:, sites:, ...)")
    try:
        return PlantFile.model_validate(raw)
    except ValidationError as exc:
        raise _pydantic_error(path, raw, exc) from None


def _layers(*specs: SensorSpec | None) -> list[SensorSpec]:
    return [s for s in specs if s is not None]


def _resolve_sensor(
    path: Path,
    where: str,
    asset_id: str,
    layers: list[SensorSpec],
    sensor_kinds: dict[str, SensorSpec],
    cache: dict[tuple[int, ...], tuple[SensorContract, dict[str, Any]]],
) -> Sensor:
    """Merge the layers of one sensor (lowest first) over its kind's defaults.  Assets of one
    kind without their own declarations share the merge (``cache``, keyed by the layers)."""
    key = tuple(id(spec) for spec in layers)
    if key not in cache:
        cache[key] = _merge_layers(path, where, layers, sensor_kinds)
    contract, values = cache[key]
    sensor_id = contract.sensor_id
    tag = values.get("tag")
    return Sensor(
        contract,
        tag=None if tag is None else tag.format(asset_id=asset_id, sensor_id=sensor_id),
        component=values.get("component"),
        column=values.get("column"),
        watched_as_reason=values.get("watched_as_reason"),
    )


def _merge_layers(
    path: Path, where: str, layers: list[SensorSpec], sensor_kinds: dict[str, SensorSpec]
) -> tuple[SensorContract, dict[str, Any]]:
    top = layers[-1]
    sensor_id = top.id or ""
    kind = next((s.kind for s in reversed(layers) if s.kind is not None), None)
    if kind is None:
        raise PlantError(path, top.line(), where, f"sensor {sensor_id!r} has no kind")
    stack = ([sensor_kinds[kind]] if kind in sensor_kinds else []) + layers
    values: dict[str, Any] = {}
    origin: dict[str, SensorSpec] = {}
    for spec in stack:
        for name in spec.model_fields_set:
            values[name] = getattr(spec, name)
            origin[name] = spec
    for needed in ("unit", "range", "rate_hz"):
        if values.get(needed) is None:
            raise PlantError(
                path,
                top.line(),
                where,
                f"sensor {sensor_id!r} has no {needed} (declare it, or in sensor_kinds.{kind})",
            )
    low, high = values["range"]
    if not low < high:
        spec = origin["range"]
        raise PlantError(
            path, spec.line("range"), f"{where}.range", f"low {low:g} must be below high {high:g}"
        )
    if values.get("watched_as") in ("level", "slope") and not values.get("watched_as_reason"):
        spec = origin["watched_as"]
        raise PlantError(
            path,
            spec.line("watched_as"),
            f"{where}.watched_as",
            "a declared watched_as needs its physical reason in watched_as_reason "
            "(leave it out and the detector decides from the asset's warm-up)",
        )
    kwargs = {CONTRACT_FIELDS[k]: v for k, v in values.items() if k in CONTRACT_FIELDS}
    kwargs["kind"] = kind
    if "description" in kwargs and kwargs["description"] is None:
        kwargs["description"] = ""
    for k, v in list(kwargs.items()):  # an explicit null restores the contract's default
        if v is None and k != "stuck_after_s" and k != "max_rate_of_change":
            kwargs[k] = _CONTRACT_DEFAULTS[k]
    contract = SensorContract(sensor_id=sensor_id, low=float(low), high=float(high), **kwargs)
    return contract, values


def _by_id(items: list[Any], path: Path, where: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        if item.id is None:
            raise PlantError(path, item.line(), f"{where}[{i}]", f"{what} needs an id")
        if item.id in out:
            raise PlantError(
                path, item.line("id"), f"{where}[{i}].id", f"duplicate {what} id {item.id!r}"
            )
        out[item.id] = item
    return out


def _resolve_asset(
    path: Path,
    where: str,
    site: str,
    spec: AssetSpec,
    doc: PlantFile,
    bearings: dict[str, BearingGeometry],
    cache: dict[tuple[int, ...], tuple[SensorContract, dict[str, Any]]],
) -> Asset:
    template = AssetKindSpec()
    if spec.kind is not None:
        if spec.kind not in doc.asset_kinds:
            raise PlantError(
                path,
                spec.line("kind"),
                f"{where}.kind",
                f"unknown asset kind {spec.kind!r}; declared: "
                f"{', '.join(doc.asset_kinds) or 'none'}",
            )
        template = doc.asset_kinds[spec.kind]
    own_parts = _by_id(spec.components, path, f"{where}.components", "component")
    parts: dict[str, tuple[str, ComponentSpec]] = {
        c.id: (f"asset_kinds.{spec.kind}.components[{i}]", c)
        for i, c in enumerate(template.components)
    }
    for i, c in enumerate(own_parts.values()):
        parts[c.id] = (f"{where}.components[{i}]", c)
    components = []
    for cwhere, c in parts.values():
        geometry = None
        if c.bearing is not None:
            if c.bearing not in bearings:
                raise PlantError(
                    path,
                    c.line("bearing"),
                    f"{cwhere}.bearing",
                    f"unknown bearing {c.bearing!r}; declared: "
                    f"{', '.join(sorted(bearings)) or 'none'}",
                )
            geometry = bearings[c.bearing]
        components.append(
            Component(c.id, c.kind, c.bearing, geometry, c.shaft, c.speed_ratio, c.description)
        )
    kind_sensors = _by_id(template.sensors, path, f"asset_kinds.{spec.kind}.sensors", "sensor")
    own_sensors = _by_id(spec.sensors, path, f"{where}.sensors", "sensor")
    order = list(kind_sensors) + [s for s in own_sensors if s not in kind_sensors]
    sensors: dict[str, Sensor] = {}
    own_index = {s: i for i, s in enumerate(own_sensors)}
    kind_index = {s: i for i, s in enumerate(kind_sensors)}
    for sid in order:
        swhere = (
            f"{where}.sensors[{own_index[sid]}]"
            if sid in own_index
            else f"asset_kinds.{spec.kind}.sensors[{kind_index[sid]}]"
        )
        sensor = _resolve_sensor(
            path,
            swhere,
            spec.id,
            _layers(
                template.sensor_defaults,
                spec.sensor_defaults,
                kind_sensors.get(sid),
                own_sensors.get(sid),
            ),
            doc.sensor_kinds,
            cache,
        )
        if sensor.component is not None and sensor.component not in parts:
            layer = own_sensors.get(sid) or kind_sensors[sid]
            raise PlantError(
                path,
                layer.line("component"),
                f"{swhere}.component",
                f"unknown component {sensor.component!r} of asset {spec.id!r}",
            )
        sensors[sid] = sensor
    relationships = []
    for rwhere, rels in (
        (f"asset_kinds.{spec.kind}.relationships", template.relationships),
        (f"{where}.relationships", spec.relationships),
    ):
        for i, r in enumerate(rels):
            for name in (r.target, *r.inputs):
                if name not in sensors:
                    raise PlantError(
                        path,
                        r.line(),
                        f"{rwhere}[{i}]",
                        f"sensor {name!r} is not a sensor of asset {spec.id!r}",
                    )
            relationships.append(Relationship(r.target, tuple(r.inputs), r.description))
    speed = (
        spec.nominal_speed_rpm
        if "nominal_speed_rpm" in spec.model_fields_set
        else (template.nominal_speed_rpm)
    )
    hi_spec, hi_where = (
        (spec.health_indicator, f"{where}.health_indicator")
        if spec.health_indicator is not None
        else (template.health_indicator, f"asset_kinds.{spec.kind}.health_indicator")
    )
    health = None
    if hi_spec is not None:
        if hi_spec.sensor not in sensors:
            raise PlantError(
                path,
                hi_spec.line("sensor"),
                f"{hi_where}.sensor",
                f"sensor {hi_spec.sensor!r} is not a sensor of asset {spec.id!r}",
            )
        source = "vibration" if sensors[hi_spec.sensor].contract.frames else "process"
        if hi_spec.feature not in feature_names(source):
            raise PlantError(
                path,
                hi_spec.line("feature"),
                f"{hi_where}.feature",
                f"{hi_spec.feature!r} is not a {source} feature; known: "
                f"{', '.join(feature_names(source))}",
            )
        for i, other in enumerate(hi_spec.sensors):
            if other not in sensors or sensors[other].contract.frames != (source == "vibration"):
                raise PlantError(
                    path,
                    hi_spec.line("sensors"),
                    f"{hi_where}.sensors[{i}]",
                    f"sensor {other!r} is not a {source} sensor of asset {spec.id!r}",
                )
        health = HealthIndicator(
            hi_spec.sensor,
            hi_spec.feature,
            hi_spec.reason,
            1.0 if hi_spec.direction == "rising" else -1.0,
            hi_spec.rul_cap_s,
            hi_spec.baseline_windows,
            tuple(dict.fromkeys([hi_spec.sensor, *hi_spec.sensors])),
            hi_spec.age_is_wear,
            hi_spec.early_cost_s,
            hi_spec.late_cost_s,
        )
    return Asset(
        asset_id=spec.id,
        site=site,
        kind=spec.kind,
        sensors=sensors,
        components=tuple(components),
        relationships=tuple(dict.fromkeys(relationships)),
        nominal_speed_rpm=speed,
        tag=spec.tag,
        match=spec.match,
        description=spec.description or template.description,
        health_indicator=health,
        alerts_per_day=spec.alerts_per_day or template.alerts_per_day or doc.alerts_per_day,
    )


def _build(path: Path, doc: PlantFile, seen: tuple[Path, ...]) -> Plant:
    bearings: dict[str, BearingGeometry] = {}
    for name, b in doc.bearings.items():
        try:
            bearings[name] = BearingGeometry(
                b.n_balls, b.ball_diameter, b.pitch_diameter, b.contact_angle_deg
            )
        except ValueError as exc:
            raise PlantError(path, b.line(), f"bearings.{name}", str(exc)) from None
    plant = Plant(
        doc.plant,
        str(path),
        doc.description,
        bearings=bearings,
        replay=doc.replay,
        files=(str(path),),
        adapters=tuple(doc.adapters),
        outbound=doc.outbound,
        serving=doc.serving,
    )
    asset_lines: dict[str, int] = {}
    cache: dict[tuple[int, ...], tuple[SensorContract, dict[str, Any]]] = {}
    site_ids: set[str] = set()
    for i, site in enumerate(doc.sites):
        if site.id in plant.sites or site.id in site_ids:
            raise PlantError(
                path, site.line("id"), f"sites[{i}].id", f"duplicate site id {site.id!r}"
            )
        site_ids.add(site.id)
        plant.sites[site.id] = site.description
        for j, spec in enumerate(site.assets):
            where = f"sites[{i}].assets[{j}]"
            if spec.id in plant.assets:
                first = asset_lines.get(spec.id)
                raise PlantError(
                    path,
                    spec.line("id"),
                    f"{where}.id",
                    f"duplicate asset id {spec.id!r}"
                    + (f" (first at line {first})" if first else ""),
                )
            plant.assets[spec.id] = _resolve_asset(path, where, site.id, spec, doc, bearings, cache)
            asset_lines[spec.id] = spec.line("id")
            plant.asset_files[spec.id] = str(path)
    for inc in doc.include:
        inc_path = (path.parent / inc).resolve()
        if inc_path in seen:
            raise PlantError(path, doc.line("include"), "include", f"{inc} includes itself")
        if not inc_path.is_file():
            raise PlantError(path, doc.line("include"), "include", f"no plant file {inc_path}")
        plant = _merge(path, doc, plant, resolve_file(inc_path, (*seen, inc_path)))
    tags: dict[str, str] = {}
    for a, s in plant.iter_sensors():
        if s.tag is not None:
            other = tags.setdefault(s.tag, f"{a.asset_id}/{s.sensor_id}")
            if other != f"{a.asset_id}/{s.sensor_id}":
                raise PlantError(
                    path,
                    asset_lines.get(a.asset_id),
                    a.asset_id,
                    f"duplicate tag {s.tag!r} ({other} and {a.asset_id}/{s.sensor_id})",
                )
    plant.topology = resolve_topology(path, doc.topology, plant.assets, plant.topology)
    if doc.replay is not None:
        check_replay(path, doc.replay, plant)
    check_adapters(path, doc.adapters, plant)
    return plant


def _merge(path: Path, doc: PlantFile, plant: Plant, other: Plant) -> Plant:
    """``plant`` with the sites, assets, bearings and topology of an included plant."""
    for kind, mine, theirs in (
        ("site", plant.sites, other.sites),
        ("asset", plant.assets, other.assets),
    ):
        clash = sorted(set(mine) & set(theirs))
        if clash:
            raise PlantError(
                path,
                doc.line("include"),
                "include",
                f"duplicate {kind} id {clash[0]!r} (also in {other.path})",
            )
        mine.update(theirs)  # type: ignore[arg-type]
    for name, b in other.bearings.items():
        if plant.bearings.setdefault(name, b) != b:
            raise PlantError(
                path, doc.line("include"), "include", f"bearing {name!r} differs in {other.path}"
            )
    plant.asset_files.update(other.asset_files)
    return replace(
        plant,
        topology=plant.topology + other.topology,
        _resolved={},
        files=plant.files + other.files,
        adapters=plant.adapters + other.adapters,
    )


def resolve_file(path: Path, seen: tuple[Path, ...]) -> Plant:
    """The plant file at ``path`` resolved (``seen``: the files including it, to refuse a loop)."""
    return _build(path, _read(path), seen)
