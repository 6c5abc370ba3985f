"""The resolved plant: assets, their parts and sensors with resolved contracts, bearings,
relationships and topology, with the look-ups both planes use (``plant.contract(asset_id,
sensor_id)``, ``plant.bearing(...)``, ``plant.upstream(...)``).  ``plant.resolve`` builds it from
a plant file; ``plant.model`` loads it."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from physics.bearing import BearingGeometry
from plant.contract import Relationship, SensorContract
from plant.topology import Edge

__all__ = ["Component", "Sensor", "HealthIndicator", "Asset", "Edge", "Plant"]

log = logging.getLogger(__name__)


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
    it falls.  ``sensors``: every sensor that may feed the indicator, ``sensor_id`` first."""

    sensor_id: str
    feature: str
    reason: str
    sign: float
    rul_cap_s: float
    baseline_windows: int
    sensors: tuple[str, ...] = ()
    age_is_wear: bool = False
    early_cost_s: float | None = None
    late_cost_s: float | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The sensors feeding the indicator, ``sensor_id`` first (itself alone by default)."""
        return self.sensors or (self.sensor_id,)


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
    alerts_per_day: float | None = None  # the false-alarm budget of its detector

    def bearing(self, sensor_id: str | None = None) -> BearingGeometry | None:
        """The bearing ``sensor_id`` is mounted on, else the asset's first bearing."""
        if sensor_id is not None and sensor_id in self.sensors:
            part = self.sensors[sensor_id].component
            for c in self.components:
                if c.component_id == part and c.bearing is not None:
                    return c.bearing
        return next((c.bearing for c in self.components if c.bearing is not None), None)


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

    def alerts_per_day(self, asset_id: str) -> float | None:
        """The false-alarm budget of ``asset_id``'s detector, alerts per day (None: undeclared)."""
        a = self.asset(asset_id)
        return None if a is None else a.alerts_per_day

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
