"""The daily partitions of the lake's time tables, and the shape every daily validation asset
shares: one partition per UTC day, the ``validation`` group, owned by data engineering, with its
asset checks declared on itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import dagster as dg

__all__ = ["DAILY", "Check", "daily_validation_asset"]

DAILY = dg.DailyPartitionsDefinition(start_date="2013-01-01", timezone="UTC", end_offset=1)
"""Daily partitions (UTC), including today's so live data can be validated as it grows; they
reach back to 2013 so replays of the reference data sets (NAB starts in 2013-12) fit."""


class Check(NamedTuple):
    """An asset check a validation asset reports on itself; a ``blocking`` one that fails
    stops what depends on the asset in the same run."""

    name: str
    description: str
    blocking: bool = False


def daily_validation_asset(
    upstream: dg.AssetSpec | dg.AssetsDefinition, kinds: set[str], checks: Sequence[Check] = ()
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``@dg.asset`` for a daily validation asset over ``upstream``, named after the function."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        return dg.asset(
            name=fn.__name__,
            deps=[upstream],
            partitions_def=DAILY,
            group_name="validation",
            kinds=kinds,
            owners=["team:data-engineering"],
            check_specs=[
                dg.AssetCheckSpec(
                    c.name, asset=fn.__name__, blocking=c.blocking, description=c.description
                )
                for c in checks
            ],
        )(fn)

    return decorate
