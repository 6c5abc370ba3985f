"""Writing a sensor into a plant file, keeping the rest of the file as it was (comments, order,
layout).

``add_sensor(plant_path, asset_id, entry)`` finds the file and the entry that declare the asset
(the asset itself, or the ``match`` pattern it falls under, in the plant file or one it
includes), appends ``entry`` to that entry's ``sensors:`` and writes the file atomically (a
temporary file renamed over it: a stream reloading the plant never reads half a file).  The
whole plant is validated after the rename; a file that does not validate is put back as it was
and the ``PlantError`` raised.  The edit is a splice into the text (the entry as one flow
mapping, the house style), so nothing else in the file changes; ruamel.yaml (round trip)
locates the declaration.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any

from plant.errors import PlantError
from plant.model import PLANTS_DIR, load_plant

__all__ = ["add_sensor", "entry_text"]


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    text = str(v)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def entry_text(entry: dict[str, Any]) -> str:
    """A sensor entry as one flow mapping (the house style of the bundled plant files)."""
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in entry.items()) + "}"


def _flow_end(text: str, start: int) -> int:
    """The offset just after the flow collection opening at ``start`` (quotes respected)."""
    depth, i, quote = 0, start, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced flow collection")


def _insert(text: str, node: Any, line: int, col: int, entry: dict[str, Any]) -> str | None:
    """``text`` with ``entry`` added to the sensors of the asset whose node starts at
    (``line``, ``col``) (0-based, ruamel's); None where a careful splice is not possible."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))
    flow = entry_text(entry)
    pos = offsets[line] + col
    if text[pos] == "{":  # {id: pump-01, kind: ...}: add a sensors key inside the braces
        if "sensors" in node:
            return None
        end = _flow_end(text, pos)
        return text[: end - 1].rstrip() + f",\n{' ' * (col + 1)}sensors: [{flow}]" + text[end - 1 :]
    sensors = node.get("sensors")
    if sensors is not None:  # a block sequence of sensors: the new one goes first
        if not len(sensors) or sensors.fa.flow_style():
            return None
        s_line, _ = sensors.lc.item(0)
        dash = lines[s_line].index("-")
        lines.insert(s_line, f"{' ' * dash}- {flow}\n")
        return "".join(lines)
    # no sensors yet: a sensors key after the asset's last line (its keys sit at ``col``)
    last = line
    for k in range(line + 1, len(lines)):
        body = lines[k].strip()
        if not body or body.startswith("#"):
            continue
        if len(lines[k]) - len(lines[k].lstrip()) < col:
            break
        last = k
    lines.insert(last + 1, f"{' ' * col}sensors:\n{' ' * (col + 2)}- {flow}\n")
    return "".join(lines)


def add_sensor(plant_path: str | Path, asset_id: str, entry: dict[str, Any]) -> Path:
    """Declare the sensor ``entry`` (a plant-file sensor mapping with an ``id``) on
    ``asset_id`` in the plant of ``plant_path``; returns the file that was changed."""
    from ruamel.yaml import YAML

    plant = load_plant(plant_path)
    decl = plant.asset(asset_id)
    if decl is None:
        raise PlantError(
            Path(plant_path),
            None,
            asset_id,
            f"asset {asset_id!r} is not declared in the plant; declare the asset "
            "first (a sensor is added to an asset's declaration)",
        )
    if entry["id"] in decl.sensors:
        raise PlantError(
            Path(plant_path),
            None,
            f"{asset_id}.sensors",
            f"sensor {entry['id']!r} is already declared",
        )
    target = Path(plant.asset_files[decl.asset_id])
    if target.resolve().is_relative_to(PLANTS_DIR.resolve()):
        raise PlantError(
            target,
            None,
            asset_id,
            f"{target.name} is a bundled example plant, part of the installation: "
            f"copy {PLANTS_DIR} to a directory of yours and pass its plant file "
            "with --plant (or PLANTPULSE_PLANT), then accept again",
        )
    text = target.read_text()
    y = YAML()  # round trip: it knows where every node starts
    doc = y.load(text)
    new_text = None
    for site in doc.get("sites") or ():
        assets: Any = site.get("assets") or []
        for i, a in enumerate(assets):
            if a.get("id") == decl.asset_id:
                line, col = assets.lc.item(i)
                new_text = _insert(text, a, line, col, entry)
                if new_text is None:  # unusual layout: ruamel writes the file (reformatted)
                    a.setdefault("sensors", []).append(entry)
                    buf = StringIO()
                    y.dump(doc, buf)
                    new_text = buf.getvalue()
                break
        if new_text is not None:
            break
    if new_text is None:  # load_plant found it there, so the file changed under us
        raise PlantError(target, None, decl.asset_id, "asset declaration not found")
    _write_atomic(target, new_text)
    try:  # the whole plant as it is now; a file that does not validate is put back
        load_plant(plant_path)
    except PlantError:
        _write_atomic(target, text)
        raise
    return target


def _write_atomic(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, target.stat().st_mode & 0o777)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
