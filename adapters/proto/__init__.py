"""The Sparkplug B payload schema (``sparkplug_b_pb2``, generated from ``sparkplug_b.proto``)
and the specification's metric data type codes, shared by the inbound adapter and the outbound
publisher (one generated module: two would register ``sparkplug_b.proto`` twice)."""

from enum import IntEnum


class DataType(IntEnum):
    """``Payload.Metric.datatype`` codes of the Sparkplug B specification."""

    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
