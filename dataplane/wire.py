"""The stream's wire, in one place for its users: the formats (``dataplane.formats``: messages,
the four payload shapes, their encoders) and their decoding (``dataplane.decode`` for one
message, ``dataplane.batch_decode`` for a micro-batch into ``dataplane.columns.Decoded``)."""

from __future__ import annotations

from dataplane.batch_decode import decode_batch
from dataplane.columns import Decoded
from dataplane.decode import decode
from dataplane.formats import (
    ARROW_MAGIC,
    FRAME_MAGIC,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    TS_MAX,
    TS_MIN,
    Batch,
    Frame,
    Message,
    PayloadError,
    Progress,
    ScalarBatch,
    as_batch,
    encode_arrow,
    encode_frame,
    encode_multi,
    encode_scalars,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_ID_CHARS",
    "FRAME_MAGIC",
    "ARROW_MAGIC",
    "TS_MIN",
    "TS_MAX",
    "Message",
    "Progress",
    "Batch",
    "as_batch",
    "ScalarBatch",
    "Frame",
    "PayloadError",
    "encode_scalars",
    "encode_multi",
    "encode_frame",
    "encode_arrow",
    "decode",
    "Decoded",
    "decode_batch",
]
