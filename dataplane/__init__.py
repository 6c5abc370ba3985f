"""The stream's logic, engine-agnostic: pure functions over columnar micro-batches.

Nothing here imports Bytewax.  A streaming engine is a thin shell around three calls:

1. ``wire.as_batch(item)`` normalises what a source emits into a ``Batch`` of ``Message``s
   (one item per micro-batch, never one per message);
2. ``step.route(batch, n_shards)`` decodes the whole batch into arrays and splits it into
   ``(shard_key, Decoded)`` pieces, by asset (stateless: runs wherever the batch arrived);
3. ``step.process(state, decoded, ctx)`` is the keyed, stateful step: contract and event-time
   checks, calibration, process windows on their cadence, vibration features, scoring, alerts,
   drift and the flight recorder, for every asset of the shard at once.  It returns the new
   state and the ``SinkRows`` of each lake table, built once per batch.

The state (``step.ShardState``) is explicit and picklable, so an engine's recovery snapshots
it as it is.  ``bytewax_flows.telemetry`` is the Bytewax shell; ``docs/data-plane.md`` says what
a port to another engine touches.
"""
