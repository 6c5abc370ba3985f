"""The control plane: Dagster assets, checks, sensors, schedules and resources."""
