"""The stream's event-time bookkeeping against a plain, one-reading-at-a-time reference."""

from __future__ import annotations

import numpy as np
import pytest

from expectations.checks import Arrivals, arrival_reasons


def reference(batches: list[list[int]], lateness: int) -> list[list[str]]:
    newest, accepted, out = None, set(), []
    for batch in batches:
        reasons = []
        for t in batch:
            if newest is not None and t < newest - lateness:
                reasons.append("late")
            elif t in accepted:
                reasons.append("duplicate")
            else:
                reasons.append("ok")
                accepted.add(t)
            newest = t if newest is None else max(newest, t)
        accepted = {a for a in accepted if a >= newest - lateness}
        out.append(reasons)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_arrivals_equal_the_sequential_definition(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        batches = []
        for i in range(int(rng.integers(1, 8))):
            b = rng.integers(0, 200, int(rng.integers(1, 12)))
            batches.append((np.sort(b) if rng.random() < 0.5 else b).astype(np.int64) + i * 20)
        lateness = int(rng.integers(0, 60))
        state = Arrivals()
        fast = [arrival_reasons(b, state, lateness).tolist() for b in batches]
        assert fast == reference([b.tolist() for b in batches], lateness)
