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
a sequence gap) is a ``dead_letter`` row with a reason (``DeadLetters``); the other tags go on.

What survives a crash (kill -9) of the adapter: each flush is one SQLite transaction holding the
readings gathered, the dead letters raised meanwhile (drained into the lake's ``dead_letter``
from there, every second) and the adapter's *marks*: what it has delivered so far (the newest
source timestamp of each OPC UA node, the sequence numbers and alias maps of the Sparkplug
nodes).  A restarted adapter resumes from its marks, so what it had delivered is not delivered
again and what it had not is read again (OPC UA history, the broker's redelivery of
unacknowledged Sparkplug messages); only then does it acknowledge its source (``committed``).
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
            self.db.execute("CREATE TABLE IF NOT EXISTS marks (k TEXT PRIMARY KEY, v TEXT)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS dead (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "received_us INTEGER NOT NULL, source TEXT NOT NULL, raw BLOB, reason TEXT, "
                "detail TEXT, asset_id TEXT, sensor_id TEXT)"
            )
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

    def put(
        self,
        records: list[tuple[str, bytes, int]],
        marks: dict[str, str] | None = None,
        dead: list[DeadRow] | None = None,
        evicted_dead: Any = None,
    ) -> list[tuple[str, bytes, int]]:
        """Append ``records`` with the adapter's ``marks`` (key -> text, replacing those of the
        same key) and ``dead`` letters, in one transaction; returns the records evicted to stay
        within ``max_bytes`` (``evicted_dead(topic, payload, n)`` gives the dead letter of each,
        kept in the same transaction)."""
        evicted: list[tuple[str, bytes, int]] = []
        dead = list(dead or ())
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO queue (topic, payload, n) VALUES (?, ?, ?)", records)
            if marks:
                self.db.executemany(
                    "INSERT OR REPLACE INTO marks (k, v) VALUES (?, ?)", list(marks.items())
                )
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
                if evicted_dead is not None:
                    dead += [evicted_dead(*r) for r in evicted]
            if dead:
                self.db.executemany(
                    "INSERT INTO dead (received_us, source, raw, reason, detail, asset_id, "
                    "sensor_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    dead,
                )
            self.db.execute("COMMIT")
        return evicted

    def marks(self, prefix: str = "") -> dict[str, str]:
        """The marks committed so far whose key starts with ``prefix``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT k, v FROM marks WHERE substr(k, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return dict(rows)

    def dead_letters(self, limit: int = 10_000) -> list[tuple[int, DeadRow]]:
        """The oldest dead letters not yet in the lake: ``(id, row)``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, received_us, source, raw, reason, detail, asset_id, sensor_id "
                "FROM dead ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [(int(r[0]), (int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]

    def drop_dead(self, upto_id: int) -> None:
        with self.lock:
            self.db.execute("DELETE FROM dead WHERE id <= ?", (upto_id,))

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
DeadRow = tuple[int, str, bytes, str, str, str | None, str | None]
"""A dead letter in the buffer: received (µs), source, raw, reason, detail, asset, sensor."""


class DeadLetters:
    """``dead_letter`` rows: gathered in memory (``add``), made durable with the next flush's
    transaction in the adapter's buffer (``take``), then appended to the lake from there in one
    commit per ``flush`` (a commit per bad value would be thousands of commits in a bad
    minute) and deleted from the buffer once the lake has them."""

    def __init__(self, lake: Lake | None, source: str, buffer: DiskBuffer | None = None):
        self.lake, self.source, self.buffer = lake, source, buffer
        self.rows: list[DeadRow] = []
        self.count = 0
        self.by_reason: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def row(
        self,
        raw: bytes,
        reason: str,
        detail: str,
        asset_id: str | None = None,
        sensor_id: str | None = None,
    ) -> DeadRow:
        self.count += 1
        self.by_reason[reason] += 1
        log.warning("%s: dead letter %s: %s", self.source, reason, detail[:300])
        return (now_us(), self.source, raw, reason, detail[:2000], asset_id, sensor_id)

    def add(
        self,
        raw: bytes,
        reason: str,
        detail: str,
        asset_id: str | None = None,
        sensor_id: str | None = None,
    ) -> None:
        with self.lock:
            self.rows.append(self.row(raw, reason, detail, asset_id, sensor_id))

    def take(self) -> list[DeadRow]:
        """The rows gathered since the last ``take`` (for the buffer's next transaction)."""
        with self.lock:
            rows, self.rows = self.rows, []
        return rows

    def flush(self) -> int:
        """Dead letters into the lake: those made durable in the buffer (or, without a
        buffer, those gathered); returns how many were written."""
        if self.lake is None:
            return 0
        if self.buffer is None:
            pending = [(0, r) for r in self.take()]
        else:
            pending = self.buffer.dead_letters()
        if not pending:
            return 0
        rows = []
        for _, (us, source, raw, reason, detail, asset, sensor) in pending:
            ts = datetime.fromtimestamp(us / 1e6, UTC)
            rows.append(
                {
                    "received_ts": ts,
                    "source": source,
                    "raw": raw,
                    "reason": reason,
                    "detail": detail,
                    "asset_id": asset,
                    "sensor_id": sensor,
                    "date": ts.date(),
                }
            )
        try:
            self.lake.append("dead_letter", pa.Table.from_pylist(rows))
        except Exception:  # noqa: BLE001 - the lake is back next time; keep the rows
            log.exception("%s: cannot write %d dead letters yet", self.source, len(rows))
            if self.buffer is None:
                with self.lock:
                    self.rows[:0] = [r for _, r in pending]
            return 0
        if self.buffer is not None:
            self.buffer.drop_dead(pending[-1][0])
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
    redelivered: int = 0  # messages the source sent again that were already durable (read once)
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
        self.dead = DeadLetters(lake, f"{self.kind}:{spec.id}", self.buffer)
        self.status = AdapterStatus(
            spec.id, self.kind, spec.endpoint, buffer_bound_bytes=self.buffer.max_bytes
        )
        self.forwarder = Forwarder(spec.id, self.buffer, sink, self.status)
        self._cols: dict[str, list[tuple[list[str] | str, Any, Any]]] = defaultdict(list)
        self._pending = 0
        self._marks: dict[str, str] = {}
        # held while a protocol's message is turned into readings (subclasses take it too):
        # a flush sees every message wholly or not at all
        self._lock = threading.RLock()

    # -- readings in ----------------------------------------------------------------------
    def emit(
        self,
        asset_id: str,
        sensor_id: Any,
        ts_us: Any,
        values: Any,
        marks: dict[str, str] | None = None,
    ) -> None:
        """Readings of ``asset_id``: ``sensor_id`` one id or a list of one per reading,
        ``ts_us`` and ``values`` lists (or arrays); thread-safe.  Arrays are built at flush,
        once per asset, not per call.  ``marks`` (what delivering them means for the
        adapter's resumption) are committed with them."""
        n = len(ts_us)
        if marks:
            with self._lock:
                self._marks.update(marks)
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

    def checkpoint(self) -> tuple[dict[str, str], Any]:
        """Called under the adapter's lock at each flush: further marks to commit with the
        readings gathered so far, and what to hand to ``committed`` once they are durable."""
        return {}, None

    def committed(self, token: Any) -> None:
        """The flush that ``checkpoint`` returned ``token`` for is durable (a subclass
        acknowledges its source here)."""

    def flush(self) -> int:
        """Gathered readings into the buffer, one Arrow message per asset, with the marks and
        dead letters, in one transaction; returns how many readings."""
        with self._lock:
            cols, self._cols, n = self._cols, defaultdict(list), self._pending
            self._pending = 0
            more, token = self.checkpoint()
            marks, self._marks = {**self._marks, **more}, {}
            dead = self.dead.take()
        if not n and not marks and not dead:
            self.committed(token)
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

        def overflow(topic: str, payload: bytes, count: int) -> DeadRow:
            return self.dead.row(
                payload,
                "buffer_overflow",
                f"store-and-forward buffer of {self.spec.id} over its bound of "
                f"{self.buffer.max_bytes} bytes: its oldest message ({count} readings) "
                f"evicted here; replayable",
                topic.split("/")[1],
                None,
            )

        self.buffer.put(records, marks, dead, overflow)
        self.committed(token)
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
