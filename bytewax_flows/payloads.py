"""The wire formats, as the Bytewax shell's sources and tests know them: defined once in
``dataplane.wire`` (engine-agnostic), re-exported here."""

from dataplane.wire import (  # noqa: F401
    ARROW_MAGIC,
    FRAME_MAGIC,
    MAX_MESSAGE_BYTES,
    Batch,
    Frame,
    Message,
    PayloadError,
    Progress,
    ScalarBatch,
    decode,
    decode_batch,
    encode_arrow,
    encode_frame,
    encode_multi,
    encode_scalars,
)
