"""Assets of the control plane, one module per domain."""
