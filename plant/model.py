"""The resolved plant: assets, their sensors' contracts, bearings, relationships and topology.

``load_plant(path)`` reads a plant file (YAML, see ``plant/plants/demo.yaml``), validates it and
applies the defaults: ``SensorContract`` defaults < the sensor kind's (``sensor_kinds``) < the
asset kind's sensor of that id (``asset_kinds``) < the asset's own declaration.  Any problem is
one ``PlantError`` naming the file, the line and the field.  ``default_plant()`` is the plant
named by ``PLANTPULSE_PLANT`` (default: the bundled demo plant), loaded once.

Look-ups are per (asset, sensor): ``plant.contract("pump-02", "bearing_temp")``.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from physics.bearing import BearingGeometry
from physics.registry import feature_names
from plant.contract import Relationship, SensorContract
from plant.errors import PlantError
from plant.schema import (
    CONTRACT_FIELDS,
    AssetKindSpec,
    AssetSpec,
    ComponentSpec,
    PlantFile,
    SensorSpec,
)
from plant.yamlio import line_of, load_yaml

__all__ = [
    "PlantError",
    "Component",
    "Sensor",
    "Asset",
    "HealthIndicator",
    "Edge",
    "Plant",
    "load_plant",
    "default_plant",
    "set_default_plant",
    "PLANTS_DIR",
    "bundled_plant",
]

log = logging.getLogger(__name__)

PLANTS_DIR = Path(__file__).parent / "plants"
"""The bundled example plants: ``demo`` (the simulated fleet and every data set), and one per
reference data set (``cmapss``, ``cwru``, ``skab``, ``nab``)."""

ADAPTER_KINDS = ("modbus", "opcua", "sparkplug")
_ENDPOINT_SCHEMES = {"opcua": "opc.tcp://", "modbus": "tcp://", "sparkplug": "mqtt://"}

_CONTRACT_DEFAULTS = {f.name: f.default for f in fields(SensorContract)}


@dataclass(frozen=True)
class Component:
    component_id: str
    kind: str
    bearing_name: str | None = None
    bearing: BearingGeometry | None = None
    shaft: str | None = None
    speed_ratio: float = 1.0
    description: str = ""


@dataclass(frozen=True)
class Sensor:
    """A sensor of one asset: its plant tag, where it sits, and its resolved contract."""

    contract: SensorContract
    tag: str | None = None
    component: str | None = None
    column: str | None = None
    watched_as_reason: str | None = None

    @property
    def sensor_id(self) -> str:
        return self.contract.sensor_id


@dataclass(frozen=True)
class HealthIndicator:
    """The feature that tracks an asset's degradation (``plant.schema.HealthIndicatorSpec``):
    ``feature`` of the windows of ``sensor``; ``sign`` is +1 when it rises with wear, -1 when
    it falls."""

    sensor_id: str
    feature: str
    reason: str
    sign: float
    rul_cap_s: float
    baseline_windows: int


@dataclass(frozen=True)
class Asset:
    asset_id: str
    site: str
    kind: str | None
    sensors: dict[str, Sensor]
    components: tuple[Component, ...] = ()
    relationships: tuple[Relationship, ...] = ()
    nominal_speed_rpm: float | None = None
    tag: str | None = None
    match: str | None = None
    description: str = ""
    health_indicator: HealthIndicator | None = None

    def bearing(self, sensor_id: str | None = None) -> BearingGeometry | None:
        """The bearing ``sensor_id`` is mounted on, else the asset's first bearing."""
        if sensor_id is not None and sensor_id in self.sensors:
            part = self.sensors[sensor_id].component
            for c in self.components:
                if c.component_id == part and c.bearing is not None:
                    return c.bearing
        return next((c.bearing for c in self.components if c.bearing is not None), None)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # feeds | drives
    description: str = ""


@dataclass
class Plant:
    """A resolved plant model.  Exact asset ids win over ``match`` patterns; patterns are
    tried in declaration order.  Look-ups are dictionary reads (cached per asset id)."""

    name: str
    path: str
    description: str = ""
    sites: dict[str, str] = field(default_factory=dict)  # site id -> description
    assets: dict[str, Asset] = field(default_factory=dict)
    topology: tuple[Edge, ...] = ()
    bearings: dict[str, BearingGeometry] = field(default_factory=dict)
    replay: Any = None  # the file's replay adapter (plant.schema.*Replay), if any
    files: tuple[str, ...] = ()  # this file and every file it includes
    asset_files: dict[str, str] = field(default_factory=dict)  # asset id -> declaring file
    # the protocol adapters (plant.schema.OpcuaAdapter, ModbusAdapter, SparkplugAdapter)
    adapters: tuple[Any, ...] = ()
    outbound: Any = None  # the file's outbound section (plant.schema.OutboundSpec), if any
    serving: Any = None  # the file's serving limits (plant.schema.ServingSpec), if any
    _resolved: dict[str, Asset | None] = field(default_factory=dict, repr=False)

    # -- look-ups --------------------------------------------------------------------------

    def asset(self, asset_id: str) -> Asset | None:
        """The declaration ``asset_id`` falls under (itself, or the first matching pattern)."""
        try:
            return self._resolved[asset_id]
        except KeyError:
            pass
        found = self.assets.get(asset_id)
        if found is None:
            found = next(
                (
                    a
                    for a in self.assets.values()
                    if a.match is not None and fnmatch.fnmatchcase(asset_id, a.match)
                ),
                None,
            )
        self._resolved[asset_id] = found
        return found

    def contract(self, asset_id: str, sensor_id: str) -> SensorContract | None:
        """The contract of ``sensor_id`` on ``asset_id``; None if the plant does not declare it."""
        a = self.asset(asset_id)
        if a is None:
            return None
        s = a.sensors.get(sensor_id)
        return None if s is None else s.contract

    def bearing(self, asset_id: str, sensor_id: str | None = None) -> BearingGeometry | None:
        """The bearing geometry under ``sensor_id`` of ``asset_id`` (else the asset's first)."""
        a = self.asset(asset_id)
        return None if a is None else a.bearing(sensor_id)

    def nominal_speed_rpm(self, asset_id: str) -> float | None:
        a = self.asset(asset_id)
        return None if a is None else a.nominal_speed_rpm

    def relationships(self, asset_id: str) -> tuple[Relationship, ...]:
        a = self.asset(asset_id)
        return () if a is None else a.relationships

    def health_indicator(self, asset_id: str) -> HealthIndicator | None:
        """The declared health indicator of ``asset_id`` (None: no remaining life for it)."""
        a = self.asset(asset_id)
        return None if a is None else a.health_indicator

    def upstream(self, asset_id: str) -> list[Edge]:
        """Edges into ``asset_id``: what feeds or drives it."""
        return [e for e in self.topology if e.target == asset_id]

    def downstream(self, asset_id: str) -> list[Edge]:
        return [e for e in self.topology if e.source == asset_id]

    def iter_sensors(self) -> Iterator[tuple[Asset, Sensor]]:
        for a in self.assets.values():
            for s in a.sensors.values():
                yield a, s

    # -- the world-wide views of the code before plant files ---------------------------------

    def contracts_by_sensor(self) -> dict[str, SensorContract]:
        """One contract per sensor id over all assets (what ``expectations.contracts.SENSORS``
        is).  Where assets declare the same id differently the first declaration stands
        here; ``contract(asset_id, sensor_id)`` gives each asset its own."""
        out: dict[str, SensorContract] = {}
        for a, s in self.iter_sensors():
            c = s.contract
            if out.setdefault(c.sensor_id, c) != c:
                log.debug(
                    "sensor %s of %s differs from its first declaration", c.sensor_id, a.asset_id
                )
        return out

    def all_relationships(self) -> tuple[Relationship, ...]:
        """Every distinct relationship, in declaration order."""
        return tuple(dict.fromkeys(r for a in self.assets.values() for r in a.relationships))

    def to_dict(self) -> dict[str, Any]:
        """The resolved plant as plain JSON-able data (``plantpulse plant show --json``)."""
        return {
            "plant": self.name,
            "path": self.path,
            "description": self.description,
            "sites": self.sites,
            "bearings": {k: vars(b) for k, b in self.bearings.items()},
            "assets": [
                {
                    "asset_id": a.asset_id,
                    "site": a.site,
                    "kind": a.kind,
                    "match": a.match,
                    "tag": a.tag,
                    "nominal_speed_rpm": a.nominal_speed_rpm,
                    "components": [
                        {k: v for k, v in vars(c).items() if k != "bearing"} for c in a.components
                    ],
                    "sensors": [
                        {
                            **vars(s.contract),
                            "tag": s.tag,
                            "component": s.component,
                            "column": s.column,
                            "watched_as_reason": s.watched_as_reason,
                        }
                        for s in a.sensors.values()
                    ],
                    "relationships": [
                        vars(r) | {"inputs": list(r.inputs)} for r in a.relationships
                    ],
                    "health_indicator": None
                    if a.health_indicator is None
                    else vars(a.health_indicator),
                }
                for a in self.assets.values()
            ],
            "topology": [vars(e) for e in self.topology],
        }


# -- loading -----------------------------------------------------------------------------


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
        health = HealthIndicator(
            hi_spec.sensor,
            hi_spec.feature,
            hi_spec.reason,
            1.0 if hi_spec.direction == "rising" else -1.0,
            hi_spec.rul_cap_s,
            hi_spec.baseline_windows,
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
    )


def _check_acyclic(path: Path, plant: Plant, lines: list[int | None]) -> None:
    graph: dict[str, list[tuple[str, int]]] = {}
    for i, e in enumerate(plant.topology):
        graph.setdefault(e.source, []).append((e.target, i))
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt, i in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], node, nxt] if nxt in trail else [node, nxt]
                raise PlantError(
                    path,
                    lines[i],
                    f"topology[{i}]",
                    f"topology cycle {' -> '.join(dict.fromkeys(cycle[:-1]))} -> {nxt}",
                )
            if state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for start in list(graph):
        if state.get(start) is None:
            visit(start, [])


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
        plant = _merge(path, doc, plant, _load(inc_path, (*seen, inc_path)))
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
    edges = list(plant.topology)
    lines: list[int | None] = [None] * len(edges)
    for i, e in enumerate(doc.topology):
        for end, key in ((e.source, "from"), (e.target, "to")):
            if end not in plant.assets:
                raise PlantError(
                    path, e.line(key), f"topology[{i}].{key}", f"unknown asset {end!r}"
                )
        edges.append(Edge(e.source, e.target, e.kind, e.description))
        lines.append(e.line())
    plant.topology = tuple(edges)
    _check_acyclic(path, plant, lines)
    if doc.replay is not None:
        _check_replay(path, doc.replay, plant)
    _check_adapters(path, doc.adapters, plant)
    return plant


def _source_key(kind: str, b: Any) -> tuple[Any, ...]:
    if kind == "opcua":
        return (b.node,)
    if kind == "sparkplug":
        return (b.node, b.device, b.metric)
    return (b.table, b.address)


def _check_adapters(path: Path, specs: list[Any], plant: Plant) -> None:
    """Adapter ids are unique, endpoints have their protocol's scheme, each binding reads a
    source once and feeds a declared sensor of a declared asset (in the sensor's unit), and
    Modbus bindings do not overlap."""
    from plant.schema import MODBUS_TYPES

    ids: dict[str, int] = {}
    for i, spec in enumerate(specs):
        where = f"adapters[{i}]"
        if spec.id in ids:
            raise PlantError(
                path,
                spec.line("id"),
                f"{where}.id",
                f"duplicate adapter id {spec.id!r} (first at line {ids[spec.id]})",
            )
        ids[spec.id] = spec.line("id")
        scheme = _ENDPOINT_SCHEMES[spec.kind]
        rest = spec.endpoint[len(scheme) :] if spec.endpoint.startswith(scheme) else None
        if not rest or (spec.kind != "opcua" and not _host_port(rest)):
            form = f"{scheme}host" + ("[:port][/path]" if spec.kind == "opcua" else ":port")
            raise PlantError(
                path,
                spec.line("endpoint"),
                f"{where}.endpoint",
                f"{spec.endpoint!r} is not a {spec.kind} endpoint ({form})",
            )
        sources: dict[tuple[Any, ...], int] = {}
        targets: dict[tuple[str, str], int] = {}
        words: dict[tuple[str, int], int] = {}
        for j, b in enumerate(spec.bindings):
            bwhere = f"{where}.bindings[{j}]"
            key = _source_key(spec.kind, b)
            if key in sources:
                raise PlantError(
                    path,
                    b.line(),
                    bwhere,
                    f"source {'/'.join(map(str, key))} is "
                    f"bound twice (first at line {sources[key]})",
                )
            sources[key] = b.line()
            templated = "{" in b.asset
            if templated:
                if b.asset not in ("{device}", "{node}"):
                    raise PlantError(
                        path,
                        b.line("asset"),
                        f"{bwhere}.asset",
                        f"{b.asset!r}: an asset is an id, '{{device}}' or '{{node}}'",
                    )
            else:
                target = (b.asset, b.sensor)
                if target in targets:
                    raise PlantError(
                        path,
                        b.line(),
                        bwhere,
                        f"sensor {b.asset}/{b.sensor} is bound twice (first at "
                        f"line {targets[target]})",
                    )
                targets[target] = b.line()
                asset = plant.asset(b.asset)
                if asset is None:
                    raise PlantError(
                        path, b.line("asset"), f"{bwhere}.asset", f"unknown asset {b.asset!r}"
                    )
                sensor = asset.sensors.get(b.sensor)
                if sensor is None:
                    raise PlantError(
                        path,
                        b.line("sensor"),
                        f"{bwhere}.sensor",
                        f"{b.sensor!r} is not a sensor of asset {b.asset!r}",
                    )
                if b.unit is not None and b.unit != sensor.contract.unit:
                    raise PlantError(
                        path,
                        b.line("unit"),
                        f"{bwhere}.unit",
                        f"{b.unit!r} is not the unit of {b.asset}/{b.sensor} "
                        f"({sensor.contract.unit!r}); convert with scale/offset",
                    )
            if spec.kind == "modbus":
                for w in range(b.address, b.address + MODBUS_TYPES[b.type]):
                    if (b.table, w) in words:
                        raise PlantError(
                            path,
                            b.line("register"),
                            f"{bwhere}.register",
                            f"{b.table} register {w} is already read by the "
                            f"binding at line {words[(b.table, w)]}",
                        )
                    words[(b.table, w)] = b.line()


def _host_port(text: str) -> bool:
    host, _, port = text.partition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65_536


def _check_replay(path: Path, spec: Any, plant: Plant) -> None:
    """The replay adapter names a declared asset and sensors it declares."""
    asset = plant.assets.get(spec.asset)
    if asset is None:
        raise PlantError(path, spec.line("asset"), "replay.asset", f"unknown asset {spec.asset!r}")
    if spec.adapter in ("skab", "cmapss"):
        if not any(s.column for s in asset.sensors.values()):
            raise PlantError(
                path,
                spec.line("asset"),
                "replay.asset",
                f"asset {spec.asset!r} has no sensor with a 'column' to read",
            )
        return
    keys = ("sensor",) if spec.adapter == "nab" else ("vibration_sensor", "speed_sensor")
    for key in keys:
        if getattr(spec, key) not in asset.sensors:
            raise PlantError(
                path,
                spec.line(key),
                f"replay.{key}",
                f"{getattr(spec, key)!r} is not a sensor of asset {spec.asset!r}",
            )


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


def _load(path: Path, seen: tuple[Path, ...]) -> Plant:
    return _build(path, _read(path), seen)


def load_plant(path: str | Path) -> Plant:
    """Read, validate and resolve the plant file at ``path`` (``PlantError`` if it is bad).

    >>> p = load_plant(PLANTS_DIR / "demo.yaml")
    >>> p.contract("pump-02", "bearing_temp").high
    200.0
    >>> round(p.nominal_speed_rpm("pump-03"))
    1747
    """
    p = Path(path)
    return _load(p, (p.resolve(),))


def bundled_plant(name: str) -> Path:
    """The path of a bundled example plant (``demo``, ``cmapss``, ``cwru``, ``skab``, ``nab``)."""
    return PLANTS_DIR / f"{name}.yaml"


@functools.cache
def _cached(path: str) -> Plant:
    return load_plant(path)


def set_default_plant(path: str | Path) -> Plant:
    """Make the plant file at ``path`` this process's default plant (validated first; sets
    ``PLANTPULSE_PLANT``, so child processes inherit it)."""
    plant = _cached(str(path))
    os.environ["PLANTPULSE_PLANT"] = str(path)
    return plant


def default_plant() -> Plant:
    """The plant named by ``PLANTPULSE_PLANT`` (default: the bundled demo plant), loaded once
    per path."""
    return _cached(os.environ.get("PLANTPULSE_PLANT") or str(bundled_plant("demo")))
