"""The data plane: Bytewax sources, the telemetry dataflow, Delta sinks."""
