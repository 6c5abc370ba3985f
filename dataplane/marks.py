"""The marks by which a publisher into the stream's broker names itself and numbers its
messages: MQTT v5 user properties, read by the stream's MQTT source (``bytewax_flows.mqtt``) and
set by every publisher (``bytewax_flows.mqtt.Publisher``, the adapters' ``adapters.sinks``).

With them a message redelivered after a crash is recognised as already written: the number is
the message's offset under its publisher and asset, and must rise, also across the publisher's
restarts.
"""

from __future__ import annotations

__all__ = ["PUBLISHER", "SEQ"]

PUBLISHER = "pp-publisher"
"""User property: the publisher's name (printable, 1..128 characters)."""

SEQ = "pp-seq"
"""User property: the message's number, a decimal integer below 10**19, rising."""
