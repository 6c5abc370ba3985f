"""Checks of a plant's bindings to the outside world: the protocol adapters (ids unique,
endpoints with their protocol's scheme, each binding reading one source into a declared sensor in
its unit, Modbus registers not overlapping) and the replay adapter (it names a declared asset and
sensors it declares)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plant.errors import PlantError
from plant.resolved import Plant

__all__ = ["ADAPTER_KINDS", "check_adapters", "check_replay"]

ADAPTER_KINDS = ("modbus", "opcua", "sparkplug")
_ENDPOINT_SCHEMES = {"opcua": "opc.tcp://", "modbus": "tcp://", "sparkplug": "mqtt://"}


def _source_key(kind: str, b: Any) -> tuple[Any, ...]:
    if kind == "opcua":
        return (b.node,)
    if kind == "sparkplug":
        return (b.node, b.device, b.metric)
    return (b.table, b.address)


def check_adapters(path: Path, specs: list[Any], plant: Plant) -> None:
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


def check_replay(path: Path, spec: Any, plant: Plant) -> None:
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
