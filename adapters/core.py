"""What every adapter shares: readings into wire messages, the store-and-forward buffer on disk,
dead letters, the status file, reconnection with backoff, and the forwarder into the stream.

An adapter turns what its protocol delivers into readings (``Adapter.emit``: asset, sensor,
timestamps, values, already scaled by its binding).  Every ``flush_ms`` the readings gathered
become one Arrow IPC message per asset (``dataplane.wire.encode_arrow``, the stream's bulk wire
format) and go into the adapter's ``DiskBuffer``: an SQLite file under the state directory,
bounded in bytes.  A ``Forwarder`` thread drains the buffer into a ``Sink`` (the stream's MQTT
broker in production: ``MqttSink``) and deletes what the sink has acknowledged, so an outage of
the stream or the broker only makes the buffer grow, up to its bound.  Past the bound the oldest
messages are evicted into ``dead_letter`` (reason ``buffer_overflow``, payload kept: they can be
replayed), counted in the status; nothing is dropped silently and the buffer never grows past
its bound.

Anything an adapter cannot turn into a reading (a value of the wrong type, a malformed payload,
a sequence gap) is a ``dead_letter`` row with a reason, written by ``DeadLetters`` straight to
the lake; the other tags go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from dataplane.wire import encode_arrow
from lake import Lake

__all__ = [
    "Adapter",
    "AdapterStatus",
    "Backoff",
    "DeadLetters",
    "DiskBuffer",
    "Forwarder",
    "Sink",
    "CountSink",
    "state_dir",
    "read_statuses",
    "now_us",
]

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


def state_dir(home: str | Path, adapter_id: str) -> Path:
    """Where adapter ``adapter_id`` keeps its buffer and status: ``<home>/adapters/<id>``."""
    return Path(home) / "adapters" / adapter_id


# -- the store-and-forward buffer -------------------------------------------------------------
class DiskBuffer:
    """A FIFO of ``(topic, payload, n_readings)`` records in an SQLite file, at most
    ``max_bytes`` of payload.  ``put`` evicts the oldest records past the bound and returns
    them (the caller records them); ``peek``/``drop`` drain it in order.  Each record keeps a
    number that only grows, also across restarts (``seq``: the buffer's creation time in µs
    plus its row id), by which the stream recognises a message it already has."""

    def __init__(self, path: str | Path, max_bytes: int):
        self.path, self.max_bytes = Path(path), int(max_bytes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY "
                "AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, "
                "n INTEGER NOT NULL)"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('base_us', ?)", (now_us(),))
            for k in ("overflow_messages", "overflow_readings"):
                self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", (k,))
            meta = dict(self.db.execute("SELECT k, v FROM meta").fetchall())
            self.base_us = int(meta["base_us"])
            self.overflow_messages = int(meta["overflow_messages"])
            self.overflow_readings = int(meta["overflow_readings"])
            row = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(n), 0) FROM queue"
            ).fetchone()
            self.messages, self.bytes, self.readings = (int(x) for x in row)

    def put(self, records: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
        """Append ``records``; returns the records evicted to stay within ``max_bytes``."""
        evicted: list[tuple[str, bytes, int]] = []
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO queue (topic, payload, n) VALUES (?, ?, ?)", records)
            self.messages += len(records)
            self.bytes += sum(len(p) for _, p, _ in records)
            self.readings += sum(n for *_, n in records)
            while self.bytes > self.max_bytes and self.messages:
                rows = self.db.execute(
                    "SELECT id, topic, payload, n FROM queue ORDER BY id LIMIT 256"
                ).fetchall()
                cut = []
                for rid, topic, payload, n in rows:
                    if self.bytes <= self.max_bytes:
                        break
                    cut.append(rid)
                    evicted.append((topic, payload, n))
                    self.messages -= 1
                    self.bytes -= len(payload)
                    self.readings -= n
                self.db.execute(f"DELETE FROM queue WHERE id <= {cut[-1]}")
            if evicted:
                self.overflow_messages += len(evicted)
                self.overflow_readings += sum(n for *_, n in evicted)
                self.db.executemany(
                    "UPDATE meta SET v = ? WHERE k = ?",
                    [
                        (self.overflow_messages, "overflow_messages"),
                        (self.overflow_readings, "overflow_readings"),
                    ],
                )
            self.db.execute("COMMIT")
        return evicted

    def peek(self, limit: int = 256) -> list[tuple[int, str, bytes, int]]:
        """The oldest records: ``(seq, topic, payload, n_readings)``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, topic, payload, n FROM queue ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(self.base_us + rid, topic, payload, n) for rid, topic, payload, n in rows]

    def drop(self, upto_seq: int) -> None:
        """Delete every record up to ``upto_seq`` (the sink has them)."""
        with self.lock:
            rid = upto_seq - self.base_us
            row = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), "
                "COALESCE(SUM(n), 0) FROM queue WHERE id <= ?",
                (rid,),
            ).fetchone()
            self.db.execute("DELETE FROM queue WHERE id <= ?", (rid,))
            self.messages -= int(row[0])
            self.bytes -= int(row[1])
            self.readings -= int(row[2])

    def file_bytes(self) -> int:
        """The buffer's size on disk (database and write-ahead log)."""
        return sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.exists()
        )

    def close(self) -> None:
        with self.lock:
            self.db.close()


# -- dead letters -------------------------------------------------------------------------------
class DeadLetters:
    """``dead_letter`` rows gathered and appended to the lake in one commit per ``flush``
    (a commit per bad value would be thousands of commits in a bad minute)."""

    def __init__(self, lake: Lake | None, source: str):
        self.lake, self.source = lake, source
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self.by_reason: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def add(
        self,
        raw: bytes,
        reason: str,
        detail: str,
        asset_id: str | None = None,
        sensor_id: str | None = None,
    ) -> None:
        ts = datetime.now(UTC)
        with self.lock:
            self.rows.append(
                {
                    "received_ts": ts,
                    "source": self.source,
                    "raw": raw,
                    "reason": reason,
                    "detail": detail[:2000],
                    "asset_id": asset_id,
                    "sensor_id": sensor_id,
                    "date": ts.date(),
                }
            )
            self.count += 1
            self.by_reason[reason] += 1
        log.warning("%s: dead letter %s: %s", self.source, reason, detail[:300])

    def flush(self) -> int:
        with self.lock:
            rows, self.rows = self.rows, []
        if not rows or self.lake is None:
            return 0
        try:
            self.lake.append("dead_letter", pa.Table.from_pylist(rows))
        except Exception:  # noqa: BLE001 - the lake is back next time; keep the rows
            log.exception("%s: cannot write %d dead letters yet", self.source, len(rows))
            with self.lock:
                self.rows[:0] = rows
            return 0
        return len(rows)


# -- status -------------------------------------------------------------------------------------
@dataclass
class AdapterStatus:
    """What ``plantpulse adapters status`` shows of one adapter (its ``status.json``)."""

    adapter_id: str
    kind: str
    endpoint: str
    pid: int = field(default_factory=os.getpid)
    connected: bool = False
    connected_since_us: int | None = None
    reconnects: int = 0
    last_error: str | None = None
    readings_in: int = 0
    readings_forwarded: int = 0
    messages_forwarded: int = 0
    last_reading_ts_us: int | None = None  # event time of the newest reading
    last_received_us: int | None = None  # when it arrived
    lag_s: float | None = None  # arrival - event time of the newest reading
    forward_lag_s: float | None = None  # age of the oldest message still in the buffer
    sink_connected: bool = False
    buffer_messages: int = 0
    buffer_readings: int = 0
    buffer_bytes: int = 0
    buffer_file_bytes: int = 0
    buffer_bound_bytes: int = 0
    overflow_messages: int = 0
    overflow_readings: int = 0
    dead_letters: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    backfilled: int = 0
    rebirths_requested: int = 0
    updated_us: int = 0


def read_statuses(home: str | Path) -> list[dict[str, Any]]:
    """Every adapter's last status under ``home`` (``<home>/adapters/*/status.json``)."""
    out = []
    for path in sorted(Path(home, "adapters").glob("*/status.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


# -- reconnection ----------------------------------------------------------------------------
@dataclass
class Backoff:
    """Exponential backoff with jitter: ``first`` s, doubling up to ``cap`` s; ``reset`` after
    a session that worked."""

    first: float = 0.2
    cap: float = 5.0
    _next: float = 0.0

    def next(self) -> float:
        self._next = self.first if self._next == 0 else min(self.cap, self._next * 2)
        return self._next * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next = 0.0


# -- the sink -----------------------------------------------------------------------------------
class Sink(Protocol):
    """Where buffered messages go.  ``send`` returns once the receiver has them all (or raises
    ``ConnectionError``: they stay in the buffer and are sent again)."""

    connected: bool

    def send(self, adapter_id: str, records: list[tuple[int, str, bytes, int]]) -> None: ...

    def close(self) -> None: ...


class CountSink:
    """Takes every message and only counts it (what the benchmark measures adapters with, so
    the figure is the adapter's, not the stream's decoding in the same process)."""

    def __init__(self) -> None:
        self.connected = True
        self.available = True
        self.readings = self.messages = 0

    def send(self, adapter_id: str, records: list[tuple[int, str, bytes, int]]) -> None:
        if not self.available:
            raise ConnectionError("the stream is down")
        self.readings += sum(r[3] for r in records)
        self.messages += len(records)

    def close(self) -> None:
        pass


class Forwarder(threading.Thread):
    """Drains a ``DiskBuffer`` into a ``Sink``, oldest first, in chunks of ``chunk``; a record
    is deleted only once the sink has acknowledged it."""

    def __init__(
        self,
        adapter_id: str,
        buffer: DiskBuffer,
        sink: Sink,
        status: AdapterStatus,
        chunk: int = 256,
    ):
        super().__init__(name=f"forward-{adapter_id}", daemon=True)
        self.adapter_id, self.buffer, self.sink, self.status = adapter_id, buffer, sink, status
        self.chunk = chunk
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        backoff = Backoff(cap=2.0)
        while not self.stopping.is_set():
            records = self.buffer.peek(self.chunk)
            if not records:
                self.wake.wait(0.05)
                self.wake.clear()
                continue
            try:
                self.sink.send(self.adapter_id, records)
            except Exception as exc:  # noqa: BLE001 - not sent: they stay, sent again later
                if not isinstance(exc, ConnectionError | OSError | TimeoutError):
                    log.exception("%s: forwarding failed", self.adapter_id)
                self.status.sink_connected = False
                self.status.last_error = f"forwarding: {exc}"
                self.stopping.wait(backoff.next())
                continue
            backoff.reset()
            self.status.sink_connected = True
            self.buffer.drop(records[-1][0])
            self.status.readings_forwarded += sum(r[3] for r in records)
            self.status.messages_forwarded += len(records)

    def stop(self, drain_s: float = 0.0) -> None:
        deadline = time.monotonic() + drain_s
        while self.buffer.messages and time.monotonic() < deadline and self.sink.connected:
            time.sleep(0.05)
        self.stopping.set()
        self.join(10)


# -- the adapter ------------------------------------------------------------------------------
class Adapter:
    """Base of the protocol adapters: ``session`` (one connection, until it fails or ``stop``
    is set) runs again after a failure with backoff; readings gathered with ``emit`` are
    flushed into the buffer every ``spec.flush_ms``; the status file is rewritten every
    second."""

    kind = ""

    def __init__(self, spec: Any, home: str | Path, lake: Lake | None, sink: Sink):
        self.spec = spec
        self.dir = state_dir(home, spec.id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.buffer = DiskBuffer(self.dir / "buffer.sqlite", int(spec.buffer_mb * 1024 * 1024))
        self.dead = DeadLetters(lake, f"{self.kind}:{spec.id}")
        self.status = AdapterStatus(
            spec.id, self.kind, spec.endpoint, buffer_bound_bytes=self.buffer.max_bytes
        )
        self.forwarder = Forwarder(spec.id, self.buffer, sink, self.status)
        self._cols: dict[str, list[tuple[list[str] | str, Any, Any]]] = defaultdict(list)
        self._pending = 0
        self._lock = threading.Lock()

    # -- readings in ----------------------------------------------------------------------
    def emit(self, asset_id: str, sensor_id: Any, ts_us: Any, values: Any) -> None:
        """Readings of ``asset_id``: ``sensor_id`` one id or a list of one per reading,
        ``ts_us`` and ``values`` lists (or arrays); thread-safe.  Arrays are built at flush,
        once per asset, not per call."""
        n = len(ts_us)
        if n == 0:
            return
        newest = max(ts_us)
        with self._lock:
            self._cols[asset_id].append((sensor_id, ts_us, values))
            self._pending += n
            s = self.status
            s.readings_in += n
            if s.last_reading_ts_us is None or newest > s.last_reading_ts_us:
                s.last_reading_ts_us = int(newest)
            s.last_received_us = now_us()
            s.lag_s = (s.last_received_us - int(newest)) / 1e6

    def flush(self) -> int:
        """Gathered readings into the buffer, one Arrow message per asset; returns how many."""
        with self._lock:
            cols, self._cols, n = self._cols, defaultdict(list), self._pending
            self._pending = 0
        if not n:
            return 0
        records = []
        for asset, parts in cols.items():
            sensors: list[str] = []
            ts: list[int] = []
            values: list[float] = []
            for s, t, v in parts:
                sensors.extend(s if isinstance(s, list) else [s] * len(t))
                ts.extend(t.tolist() if isinstance(t, np.ndarray) else t)
                values.extend(v.tolist() if isinstance(v, np.ndarray) else v)
            records.append(
                (
                    f"plantpulse/{asset}/{self.spec.id}",
                    encode_arrow(
                        asset,
                        np.array(sensors, object),
                        np.array(ts, np.int64),
                        np.array(values, np.float64),
                    ),
                    len(ts),
                )
            )
        for topic, payload, count in self.buffer.put(records):
            asset = topic.split("/")[1]
            self.dead.add(
                payload,
                "buffer_overflow",
                f"store-and-forward buffer of {self.spec.id} over its bound of "
                f"{self.buffer.max_bytes} bytes: its oldest message ({count} "
                f"readings) evicted here ({self.buffer.overflow_messages} messages, "
                f"{self.buffer.overflow_readings} readings so far); replayable",
                asset,
                None,
            )
        self.forwarder.wake.set()
        return n

    def write_status(self) -> None:
        s, b = self.status, self.buffer
        s.buffer_messages, s.buffer_readings, s.buffer_bytes = b.messages, b.readings, b.bytes
        s.buffer_file_bytes = b.file_bytes()
        s.overflow_messages, s.overflow_readings = b.overflow_messages, b.overflow_readings
        s.dead_letters, s.dead_letters_by_reason = self.dead.count, dict(self.dead.by_reason)
        oldest = b.peek(1)
        s.forward_lag_s = None
        if oldest:
            with contextlib.suppress(Exception):
                # the buffer's oldest message: its newest reading's age
                ts = pa.ipc.open_stream(pa.py_buffer(oldest[0][2])[4:]).read_all()["ts"]
                s.forward_lag_s = (now_us() - int(pa.compute.max(ts).as_py())) / 1e6
        s.updated_us = now_us()
        tmp = self.dir / "status.json.tmp"
        tmp.write_text(json.dumps(asdict(s), default=str))
        tmp.replace(self.dir / "status.json")

    def reject(
        self,
        raw: bytes,
        reason: str,
        detail: str,
        asset_id: str | None = None,
        sensor_id: str | None = None,
    ) -> None:
        self.dead.add(raw, reason, detail, asset_id, sensor_id)

    # -- the connection ---------------------------------------------------------------------
    async def session(self, stop: asyncio.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def connected(self) -> None:
        """A session is up (called by the subclass once it receives)."""
        self.status.connected = True
        self.status.connected_since_us = now_us()
        self.status.last_error = None

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop``, reconnecting with backoff; the flush and status tasks."""
        self.forwarder.start()
        tasks = [
            asyncio.create_task(self._every(self.spec.flush_ms / 1000, self.flush, stop)),
            asyncio.create_task(self._every(1.0, self._housekeeping, stop)),
        ]
        backoff = Backoff(cap=self.spec.reconnect_max_s)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self.session(stop)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                    self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning(
                        "%s %s: %s; reconnecting", self.kind, self.spec.id, self.status.last_error
                    )
                if self.status.connected:
                    self.status.connected = False
                    self.status.reconnects += 1
                if stop.is_set():
                    break
                if time.monotonic() - started > 10:
                    backoff.reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next())
        finally:
            if stop.is_set():  # the periodic tasks end by themselves (none mid-write)
                await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                t.cancel()
            self.flush()
            self.forwarder.stop(drain_s=2.0)
            self.dead.flush()
            self.write_status()
            self.buffer.close()

    def _housekeeping(self) -> None:
        self.dead.flush()
        self.write_status()

    @staticmethod
    async def _every(period: float, fn: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            try:
                await asyncio.to_thread(fn)
            except Exception:  # noqa: BLE001 - keep flushing
                log.exception("periodic %s failed", getattr(fn, "__name__", fn))
