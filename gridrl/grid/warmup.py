"""Ahead-of-use preparation: every shipped feeder built into the feeder cache and the power-flow
kernel compiled into numba's on-disk cache, so that a user's first command starts at once.

Without it, the first use of a feeder builds it (seconds for the IEEE cases, up to a minute for
the SimBench MV+LV grid) and the first power flow of an install compiles the kernel (tens of
seconds). ``gridrl warmup`` runs :func:`warm_up`; ``make setup`` calls it. Both caches are
private and rebuildable; running it again only checks them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["warm_up"]


def warm_up(feeders: Sequence[str] | None = None, *,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Build ``feeders`` (default: every shipped one) and compile the power-flow kernel.

    Returns one row per step: ``what``, ``state`` (``"built"``, ``"compiled"`` or
    ``"cached"``: there already) and ``seconds``. ``progress`` gets a line before each step.
    """
    from gridrl.grid.feeder import cache_path, list_feeders, load_feeder, resolve_spec
    from gridrl.grid.powerflow import BatchedPowerFlow, kernel_compiled

    say = progress or (lambda msg: None)
    rows = []
    names = list(feeders) if feeders is not None else list_feeders()
    for name in names:
        was_cached = cache_path(resolve_spec(name)).exists()
        say(f"feeder {name}")
        start = time.perf_counter()
        load_feeder(name)
        rows.append({"what": f"feeder {name}", "state": "cached" if was_cached else "built",
                     "seconds": time.perf_counter() - start})
    say("power-flow kernel")
    was_compiled = kernel_compiled()
    start = time.perf_counter()
    net = load_feeder(names[0] if names else "ieee33").net
    pf = BatchedPowerFlow(net)
    pf.solve(np.zeros((1, len(net.load))), np.zeros((1, len(net.load))),
             np.zeros((1, len(net.sgen))), np.zeros((1, len(net.sgen))))
    rows.append({"what": "power-flow kernel", "state": "cached" if was_compiled else "compiled",
                 "seconds": time.perf_counter() - start})
    return rows
