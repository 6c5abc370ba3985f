"""The plant file as written: pydantic models of its YAML, before defaults are applied.

Every model forbids unknown keys (a typo is an error, not a silently ignored setting).  Sensor
and component fields are optional here because sensor kinds and asset kinds (templates) may
supply them; ``plant.model`` merges the layers and checks what must be present.

Over 500 lines on purpose: it is one job, the file's schema, one model per section of the YAML
with the docstring a user reads in the errors it raises; splitting it by section would scatter
the one place a plant author looks up a key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from plant.yamlio import LineDict

__all__ = [
    "BearingSpec",
    "ComponentSpec",
    "SensorSpec",
    "RelationshipSpec",
    "HealthIndicatorSpec",
    "ServingSpec",
    "AssetKindSpec",
    "AssetSpec",
    "SiteSpec",
    "EdgeSpec",
    "ReplaySpec",
    "OpcuaBinding",
    "ModbusBinding",
    "SparkplugBinding",
    "OpcuaAdapter",
    "ModbusAdapter",
    "SparkplugAdapter",
    "AdapterSpec",
    "MODBUS_TYPES",
    "PlantFile",
    "CONTRACT_FIELDS",
    "OutboundSpec",
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
    watched_as: Literal["auto", "level", "slope"] | None = None
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
    ``reason`` (required) says why this feature is the asset's health indicator.

    ``sensors``: further sensors whose same ``feature`` may feed the indicator (the RUL model
    learns from the run-to-failure histories how much each one follows wear; ``sensor`` is
    always one and sets the indicator's cadence).  ``age_is_wear``: the asset's first window
    is the start of its life (a fleet of new engines, not pumps that ran long before the stream
    saw them), so its age is an input of the model.  ``early_cost_s`` / ``late_cost_s``: the
    cost of an estimate ``d`` seconds too low or too high, ``exp(-d/early)-1`` and
    ``exp(d/late)-1`` (PHM08's shape): when set, the served estimate is shifted to the one of
    least expected cost over its out-of-fold errors."""

    sensor: Id
    feature: str
    reason: str = Field(min_length=1)
    direction: Literal["rising", "falling"] = "rising"
    rul_cap_s: float = Field(gt=0)
    baseline_windows: int = Field(30, ge=3)
    sensors: list[Id] = []
    age_is_wear: bool = False
    early_cost_s: float | None = Field(None, gt=0)
    late_cost_s: float | None = Field(None, gt=0)


class AssetKindSpec(_Node):
    """Defaults for every asset of a kind: its parts, sensors and relationships.
    ``alerts_per_day`` overrides the plant file's false-alarm budget for these assets."""

    description: str = ""
    nominal_speed_rpm: float | None = Field(None, gt=0)
    components: list[ComponentSpec] = []
    sensor_defaults: SensorSpec | None = None  # for every sensor of the asset (e.g. its rate)
    sensors: list[SensorSpec] = []
    relationships: list[RelationshipSpec] = []
    health_indicator: HealthIndicatorSpec | None = None
    alerts_per_day: float | None = Field(default=None, gt=0)


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


# -- protocol adapters (``adapters/``): a connection and its bindings -------------------------


class _Binding(_Node):
    """Where one sensor's values come from: the reading is ``raw * scale + offset``, in
    ``unit`` (optional; when given it must be the sensor's unit, a check that the scaling
    delivers what the contract expects)."""

    asset: Id
    sensor: Id
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0


class OpcuaBinding(_Binding):
    """An OPC UA variable (``node``: a NodeId string such as ``ns=2;s=Pump01.Temp``)."""

    node: str = Field(min_length=1)


MODBUS_TYPES = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
"""Modbus data types and the number of 16-bit registers each takes."""


class ModbusBinding(_Binding):
    """A holding or input register (``register``: the 0-based address of its first word);
    ``type`` says how many words and how to read them, ``word_order`` which word comes first
    (``big``: the most significant, the Modbus convention)."""

    address: int = Field(alias="register", ge=0, le=65_535)  # ("register" is ABCMeta's)
    table: Literal["holding", "input"] = "holding"
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"] = (
        "uint16"
    )
    word_order: Literal["big", "little"] = "big"


class SparkplugBinding(_Binding):
    """A Sparkplug B metric (by ``metric`` name) of edge node ``node`` (any node if absent),
    device ``device`` (the node's own metrics if absent; ``*`` any device).  ``asset`` may be
    ``{device}`` or ``{node}``: the asset id is then the device's (node's) id."""

    asset: str = Field(min_length=1)  # type: ignore[assignment]
    node: str | None = None
    device: str | None = None
    metric: str = Field(min_length=1)


class _Connection(_Node):
    """One adapter: an ``id``, the server it reads (``endpoint``), the name of its credentials
    (``credentials``: looked up in the environment or the state directory, never written in
    the plant file), the bound of its store-and-forward buffer on disk (``buffer_mb``) and the
    longest wait between reconnection attempts (``reconnect_max_s``)."""

    id: Id
    endpoint: str = Field(min_length=1)
    credentials: Id | None = None
    buffer_mb: float = Field(64.0, gt=0)
    reconnect_max_s: float = Field(5.0, gt=0)
    flush_ms: float = Field(100.0, gt=0)
    description: str = ""


SecurityMode = Literal["SignAndEncrypt", "Sign", "None"]
"""OPC UA message security with the Basic256Sha256 policy (``None``: no policy at all)."""


def _needs_reason(insecure: list[str], reason: str | None) -> None:
    """A plant file that turns security off says why (``insecure_reason``)."""
    if insecure and not (reason or "").strip():
        raise PydanticCustomError(
            "insecure_without_reason",
            "{what} turns security off: say why in insecure_reason",
            {"what": " and ".join(insecure)},
        )


class OpcuaAdapter(_Connection):
    """OPC UA subscriptions (data change): the server samples every ``sampling_ms`` and
    publishes every ``publishing_ms``; after an outage, the gap is read back from the server's
    history (``backfill``, at most ``backfill_max_s``).  The session is secured with
    Basic256Sha256 in ``security`` mode (``SignAndEncrypt`` unless the file says ``Sign``, or
    ``None`` with an ``insecure_reason``); the server's certificate must be in the trust list
    (``trust``: certificate files or folders, beside the state directory's ``opcua/trusted/``)."""

    kind: Literal["opcua"]
    security: SecurityMode = "SignAndEncrypt"
    trust: list[str] = []
    insecure_reason: str | None = None
    sampling_ms: float = Field(100.0, ge=0)
    publishing_ms: float = Field(500.0, gt=0)
    queue_size: int = Field(10, ge=1)
    backfill: bool = True
    backfill_max_s: float = Field(3600.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)  # a request unanswered this long: the session is lost
    bindings: list[OpcuaBinding] = Field(min_length=1)

    @model_validator(mode="after")
    def _security_reason(self) -> OpcuaAdapter:
        _needs_reason(["security None"] if self.security == "None" else [], self.insecure_reason)
        return self


class ModbusAdapter(_Connection):
    """Modbus TCP (``endpoint`` ``tcp://host:port``), polled every ``poll_ms`` from unit
    ``unit_id``."""

    kind: Literal["modbus"]
    unit_id: int = Field(1, ge=0, le=255)
    poll_ms: float = Field(100.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    bindings: list[ModbusBinding] = Field(min_length=1)


class SparkplugAdapter(_Connection):
    """Sparkplug B over MQTT (``endpoint`` ``mqtt://host:port``): the edge nodes of ``group``;
    a sequence gap or an unknown alias asks the node to rebirth (NCMD).  With ``tls`` the
    connection is TLS, the broker verified against ``tls_ca`` (default: the CA the set-up
    generated, ``<state dir>/mosquitto/tls/ca.crt``)."""

    kind: Literal["sparkplug"]
    group: str = Field(min_length=1, pattern=r"^[^/+#]+$")
    host_id: str = Field("plantpulse", pattern=r"^[^/+#]+$")
    tls: bool = False
    tls_ca: str | None = None
    receive_maximum: int = Field(2000, ge=1, le=65535)  # QoS 1 messages in flight to it
    # the edge nodes this adapter reads (all of the group when empty): several adapters, each
    # in its own process, share a group's nodes
    nodes: list[Annotated[str, Field(min_length=1, pattern=r"^[^/+#]+$")]] = []
    bindings: list[SparkplugBinding] = Field(min_length=1)


AdapterSpec = Annotated[
    OpcuaAdapter | ModbusAdapter | SparkplugAdapter, Field(discriminator="kind")
]
# -- outbound: decisions out to SCADA and maintenance (the ``outbound`` package) -------------


class OutboundMqttSpec(_Node):
    """Per-asset state on an MQTT broker: a retained JSON message on ``topic`` (``{plant}``,
    ``{site}`` and ``{asset_id}`` are filled in) and, with ``sparkplug``, Sparkplug B births and
    data for SCADA that speak it.  Credentials come from ``PLANTPULSE_OUTBOUND_MQTT_USERNAME``
    and ``PLANTPULSE_OUTBOUND_MQTT_PASSWORD`` (never from the plant file)."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic: str = "plantpulse-out/{site}/{asset_id}/state"
    qos: Literal[0, 1, 2] = 1
    min_interval_s: float = Field(1.0, ge=0)
    sparkplug: bool = True
    sparkplug_group: str | None = None  # default: the plant's name
    sparkplug_node: Id = "plantpulse-outbound"
    tls: bool = False  # TLS to the broker, verified against tls_ca
    tls_ca: str | None = None


class OutboundOpcUaSpec(_Node):
    """An OPC UA server with a namespace per plant (``namespace``, default
    ``urn:plantpulse:<plant>``) and an object per asset, read-only to its clients.  Secured by
    default: Basic256Sha256 in the ``security`` modes, sessions only for the ``users`` named
    here (their passwords are generated at set-up in the state directory, never written in the
    file).  ``None`` among the modes, or ``allow_anonymous``, only with an
    ``insecure_reason``."""

    endpoint: str = "opc.tcp://127.0.0.1:4841/plantpulse"
    namespace: str | None = None
    security: list[SecurityMode] = Field(["SignAndEncrypt", "Sign"], min_length=1)
    users: list[Id] = ["scada"]
    allow_anonymous: bool = False
    insecure_reason: str | None = None

    @model_validator(mode="after")
    def _security_reason(self) -> OutboundOpcUaSpec:
        insecure = ["security None"] if "None" in self.security else []
        _needs_reason(
            insecure + (["allow_anonymous"] if self.allow_anonymous else []), self.insecure_reason
        )
        return self


class OutboundWebhookSpec(_Node):
    """Work orders POSTed as JSON to a CMMS at ``url``, for the alert changes in ``on``; each
    retried up to ``max_attempts`` times with exponential backoff from ``backoff_s`` (capped at
    ``max_backoff_s``).  ``headers_env`` maps a header to the environment variable holding its
    value (a token stays out of the file).  ``frames_link`` is the link to the alert's frames
    put in the work order (``{alert_id}``, ``{asset_id}`` filled in)."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    on: list[Literal["open", "escalate", "close"]] = ["open", "escalate", "close"]
    timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    headers_env: dict[str, str] = {}
    frames_link: str | None = None


class OutboundSpec(_Node):
    """Where the stream's decisions go (``outbound`` tails the lake's ``alerts`` and ``scores``
    every ``poll_s``).  Any of the three targets may be left out."""

    poll_s: float = Field(0.2, gt=0)
    mqtt: OutboundMqttSpec | None = None
    opcua: OutboundOpcUaSpec | None = None
    webhook: OutboundWebhookSpec | None = None


ALERTS_PER_DAY = 1.0
"""The default false-alarm budget: alerts per asset and day an operator accepts on a healthy
machine (``PlantFile.alerts_per_day``)."""


class ServingSpec(_Node):
    """Limits the plant puts on the models the stream serves (``models.gate``): a candidate
    whose prediction of 1,000 rows takes longer than ``latency_ceiling_ms`` is never promoted,
    whatever the champion does (without one, the gate judges latency only relative to the
    champion's, measured together).  ``reason`` says where the limit comes from."""

    latency_ceiling_ms: float | None = Field(None, gt=0)
    reason: str = Field(min_length=1)


class PlantFile(_Node):
    """A whole plant file.  ``alerts_per_day`` is the false-alarm budget of its assets (an asset
    kind or an asset may declare its own): how many alerts a day an operator accepts from a
    healthy asset; each asset's detector sets its alarm level from its own warm-up so that its
    normal would cross it that often (``dataplane.detectors``)."""

    plant: Id
    description: str = ""
    alerts_per_day: float = Field(default=ALERTS_PER_DAY, gt=0)
    include: list[str] = []
    bearings: dict[Id, BearingSpec] = {}
    sensor_kinds: dict[Id, SensorSpec] = {}
    asset_kinds: dict[Id, AssetKindSpec] = {}
    sites: list[SiteSpec] = []
    topology: list[EdgeSpec] = []
    replay: ReplaySpec | None = None
    adapters: list[AdapterSpec] = []
    outbound: OutboundSpec | None = None
    serving: ServingSpec | None = None

    @field_validator("sensor_kinds")
    @classmethod
    def _kinds_have_no_id(cls, kinds: dict[str, SensorSpec]) -> dict[str, SensorSpec]:
        for name, spec in kinds.items():
            if spec.id is not None:
                raise ValueError(f"sensor kind {name!r} holds defaults; it takes no 'id'")
        return kinds
