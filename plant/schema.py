"""The plant file as written: pydantic models of its YAML, before defaults are applied.

Every model forbids unknown keys (a typo is an error, not a silently ignored setting).  Sensor
and component fields are optional here because sensor kinds and asset kinds (templates) may
supply them; ``plant.model`` merges the layers and checks what must be present.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from plant.yamlio import LineDict

__all__ = [
    "BearingSpec",
    "ComponentSpec",
    "SensorSpec",
    "RelationshipSpec",
    "HealthIndicatorSpec",
    "AssetKindSpec",
    "AssetSpec",
    "SiteSpec",
    "EdgeSpec",
    "ReplaySpec",
    "PlantFile",
    "CONTRACT_FIELDS",
]

Id = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Node(BaseModel):
    """A mapping of the file; remembers the lines of itself and of its keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    _line: int = PrivateAttr(0)
    _key_lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_lines(cls, data: Any, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, LineDict):
            model._line, model._key_lines = data.line, data.key_lines
        return model

    def line(self, key: str | None = None) -> int:
        """The line of ``key`` in this mapping (of the mapping itself if absent or None)."""
        return self._key_lines.get(key, self._line) if key else self._line


class BearingSpec(_Node):
    """A rolling-element bearing's geometry, in any one length unit (``unit`` says which)."""

    n_balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0
    unit: str = "in"
    description: str = ""


class ComponentSpec(_Node):
    """A part of an asset: a bearing (``bearing`` names an entry of ``bearings``), a shaft, a
    motor, an impeller... ``shaft`` is the shaft it turns with; ``speed_ratio`` its speed over
    the asset's nominal speed (1 for a direct drive)."""

    id: Id
    kind: str = "part"
    bearing: str | None = None
    shaft: str | None = None
    speed_ratio: float = Field(1.0, gt=0)
    description: str = ""


class SensorSpec(_Node):
    """A sensor as declared: on an asset, in an asset kind, or as a sensor kind's defaults.

    ``range`` is ``[low, high]`` of physically plausible values, ``rate_hz`` the nominal
    sample rate, ``lateness_s`` how much older than the newest reading one may arrive,
    ``column`` the data set column an adapter reads it from, ``component`` the part it is
    mounted on.  The other fields are those of ``plant.SensorContract``.
    """

    id: Id | None = None
    tag: str | None = None
    kind: str | None = None
    unit: str | None = None
    range: tuple[float, float] | None = None
    rate_hz: float | None = Field(None, gt=0)
    frames: bool | None = None
    resolution: float | None = Field(None, ge=0)
    lateness_s: float | None = Field(None, ge=0)
    watched_as: Literal["level", "slope"] | None = None
    watched_as_reason: str | None = None
    window_every_s: float | None = Field(None, gt=0)
    description: str | None = None
    component: str | None = None
    column: str | None = None
    rate_tolerance: float | None = Field(None, ge=0)
    max_gap_s: float | None = Field(None, gt=0)
    max_null_rate: float | None = Field(None, ge=0, le=1)
    max_rate_of_change: float | None = Field(None, gt=0)
    min_frame_samples: int | None = Field(None, ge=1)
    stuck_after_s: float | None = Field(None, gt=0)
    max_spike_rate: float | None = Field(None, ge=0, le=1)
    max_clock_error_ppm: float | None = Field(None, ge=0)
    max_psi: float | None = Field(None, ge=0)
    min_completeness: float | None = Field(None, ge=0, le=1)


# SensorSpec field -> SensorContract field, for the fields that are contract fields
CONTRACT_FIELDS: dict[str, str] = {
    "kind": "kind",
    "unit": "unit",
    "rate_hz": "sample_rate_hz",
    "frames": "frames",
    "resolution": "resolution",
    "lateness_s": "allowed_lateness_s",
    "watched_as": "watched_as",
    "window_every_s": "window_every_s",
    "description": "description",
    "rate_tolerance": "rate_tolerance",
    "max_gap_s": "max_gap_s",
    "max_null_rate": "max_null_rate",
    "max_rate_of_change": "max_rate_of_change",
    "min_frame_samples": "min_frame_samples",
    "stuck_after_s": "stuck_after_s",
    "max_spike_rate": "max_spike_rate",
    "max_clock_error_ppm": "max_clock_error_ppm",
    "max_psi": "max_psi",
    "min_completeness": "min_completeness",
}


class RelationshipSpec(_Node):
    """``target`` is a smooth function of ``inputs`` (sensor ids of the same asset)."""

    target: Id
    inputs: list[Id] = Field(min_length=1)
    description: str = ""


class HealthIndicatorSpec(_Node):
    """Which feature of which sensor tracks an asset's degradation, for remaining useful life
    (``dataplane.prognostics``): ``feature`` is a ``features`` column of ``sensor``'s windows
    (``vib_rms``, ``proc_level``, ...), ``direction`` whether it rises or falls as the asset
    wears, ``rul_cap_s`` the horizon beyond which it says nothing (RUL targets are capped
    there), ``baseline_windows`` how many of an asset's first windows define its healthy level.
    ``reason`` (required) says why this feature is the asset's health indicator."""

    sensor: Id
    feature: str
    reason: str = Field(min_length=1)
    direction: Literal["rising", "falling"] = "rising"
    rul_cap_s: float = Field(gt=0)
    baseline_windows: int = Field(30, ge=3)


class AssetKindSpec(_Node):
    """Defaults for every asset of a kind: its parts, sensors and relationships."""

    description: str = ""
    nominal_speed_rpm: float | None = Field(None, gt=0)
    components: list[ComponentSpec] = []
    sensor_defaults: SensorSpec | None = None  # for every sensor of the asset (e.g. its rate)
    sensors: list[SensorSpec] = []
    relationships: list[RelationshipSpec] = []
    health_indicator: HealthIndicatorSpec | None = None


class AssetSpec(AssetKindSpec):
    """One asset.  ``match`` (a glob such as ``engine-*``) makes it stand for every asset
    whose id matches: a fleet of identical machines, or the runs of a test rig."""

    id: Id
    kind: str | None = None
    tag: str | None = None
    match: str | None = None


class SiteSpec(_Node):
    id: Id
    description: str = ""
    assets: list[AssetSpec] = []


class EdgeSpec(_Node):
    """``source`` feeds (process flow) or drives (mechanical power) ``target``."""

    model_config = ConfigDict(populate_by_name=True)
    source: Id = Field(alias="from")
    target: Id = Field(alias="to")
    kind: Literal["feeds", "drives"]
    description: str = ""


class _Adapter(_Node):
    root: str | None = None  # the data set's folder under the data directory; default: its name


class CmapssReplay(_Adapter):
    """C-MAPSS: one engine per asset; ``split`` and ``subset`` name the file
    (``train_FD001.txt``); one cycle every ``cycle_s`` of event time."""

    adapter: Literal["cmapss"]
    asset: Id
    subset: str = "FD001"
    split: Literal["train", "test"] = "train"
    cycle_s: float = Field(3600.0, gt=0)
    batch_cycles: int = Field(10, ge=1)
    asset_id: str = "engine-{unit:03d}"


class SkabReplay(_Adapter):
    """SKAB: every CSV of ``folder`` (``valve1``, ``valve2``, ``other``; ``""`` the top level)
    is one run, replayed as one asset named by ``asset_id``."""

    adapter: Literal["skab"]
    asset: Id
    folder: str = "valve1"
    files: str = "*.csv"
    batch_s: float = Field(10.0, gt=0)
    asset_id: str = "skab-{folder}-{stem}"


class NabReplay(_Adapter):
    """NAB: one series (``series``.csv), its values reported by ``sensor`` of ``asset``, one
    message per reading in file order (NAB files may step backwards; the stream must see it)."""

    adapter: Literal["nab"]
    asset: Id
    sensor: Id
    series: str


class CwruReplay(_Adapter):
    """CWRU: every recording matching ``recordings`` is one asset (``cwru-<name>``): the
    recording's shaft speed on ``speed_sensor``, then each frame on ``vibration_sensor``."""

    adapter: Literal["cwru"]
    asset: Id
    recordings: str = "*"
    frame_len: int = Field(12_000, ge=64)
    vibration_sensor: Id = "vib_de"
    speed_sensor: Id = "shaft_speed"
    asset_id: str = "cwru-{name}"


ReplaySpec = Annotated[
    CmapssReplay | SkabReplay | NabReplay | CwruReplay, Field(discriminator="adapter")
]


class PlantFile(_Node):
    """A whole plant file."""

    plant: Id
    description: str = ""
    include: list[str] = []
    bearings: dict[Id, BearingSpec] = {}
    sensor_kinds: dict[Id, SensorSpec] = {}
    asset_kinds: dict[Id, AssetKindSpec] = {}
    sites: list[SiteSpec] = []
    topology: list[EdgeSpec] = []
    replay: ReplaySpec | None = None

    @field_validator("sensor_kinds")
    @classmethod
    def _kinds_have_no_id(cls, kinds: dict[str, SensorSpec]) -> dict[str, SensorSpec]:
        for name, spec in kinds.items():
            if spec.id is not None:
                raise ValueError(f"sensor kind {name!r} holds defaults; it takes no 'id'")
        return kinds
