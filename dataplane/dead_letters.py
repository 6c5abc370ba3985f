"""Dead letters: every rejected input of a micro-batch, with its raw payload (or the one
reading or tag of it that was rejected) and a reason code, as one ``dead_letter`` table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dataplane.columns import Decoded
from dataplane.rows import Out
from expectations.contracts import SensorContract
from lake.catalogue import TS, table_spec

__all__ = ["DeadLetters", "REASON", "reading_detail"]

# reading-level reason codes (an int8 per reading of the scalar path)
OK, BAD_TS, NON_FINITE, OUT_OF_RANGE, LATE, DUPLICATE = range(6)
REASON = ("ok", "bad_timestamp", "non_finite", "out_of_range", "late", "duplicate")


class DeadLetters:
    def __init__(self, d: Decoded):
        self.d = d
        self.msg: list[int] = []
        self.raw: list[bytes] = []
        self.reason: list[str] = []
        self.detail: list[str] = []
        self.asset: list[str | None] = []
        self.sensor: list[str | None] = []

    def add(
        self,
        i: int,
        reason: str,
        detail: str,
        asset: str | None,
        sensor: str | None,
        raw: bytes | None = None,
    ) -> None:
        self.msg.append(i)
        self.raw.append(self.d.messages[i].payload if raw is None else raw)
        self.reason.append(reason)
        self.detail.append(detail)
        self.asset.append(asset)
        self.sensor.append(sensor)

    def emit(self, out: Out) -> None:
        if not self.msg:
            return
        spec = table_spec("dead_letter")
        received = np.fromiter(
            (self.d.messages[i].received_us for i in self.msg), np.int64, len(self.msg)
        )
        rows = pa.Table.from_arrays(
            [
                pa.array(received).view(TS),
                pa.array([self.d.messages[i].source for i in self.msg], pa.string()),
                pa.array(self.raw, pa.binary()),
                pa.array(self.reason, pa.string()),
                pa.array(self.detail, pa.string()),
                pa.array(self.asset, pa.string()),
                pa.array(self.sensor, pa.string()),
            ],
            schema=spec.input_schema,
        )
        out.add_table("dead_letter", rows, np.asarray(self.msg, np.intp))


def reading_detail(code: int, value: float, contract: SensorContract) -> str:
    if code == OUT_OF_RANGE:
        return f"value {value:.6g} outside [{contract.low:g}, {contract.high:g}]"
    if code == NON_FINITE:
        return "value is null, NaN or infinite"
    if code == BAD_TS:
        return "timestamp outside 1990..2100"
    if code == DUPLICATE:
        return "timestamp already accepted for this sensor"
    return "older than the newest reading of this sensor minus the allowed lateness"
