"""Outbound: the stream's decisions out to operators and maintenance.

``python -m outbound`` (started by ``plantpulse up`` when the plant file has an ``outbound:``
section) tails the lake's ``alerts`` and ``scores`` tables and shows each asset's health,
anomaly score, RUL and alert state on MQTT (a retained JSON topic per asset, and Sparkplug B),
on an OPC UA server, and sends CMMS work orders through a webhook; every delivery of an alert
state is a row of the ``deliveries`` table.  Engine-agnostic: no Bytewax here.  See
docs/outbound.md.
"""
