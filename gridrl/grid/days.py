"""The days of a feeder's split that a run asks for, checked at the door.

:func:`check_days` turns "these days of this split" (or "every day of it") into a list, and
refuses days outside the split with :class:`DaysNotInSplit`; evaluations, comparisons and the
train driver's evaluations on whole days all check their days here.
"""

from __future__ import annotations

from collections.abc import Sequence

from gridrl.errors import GridrlError

__all__ = ["DaysNotInSplit", "check_days"]


class DaysNotInSplit(GridrlError, ValueError):
    """Requested days that are not days of the split."""

    def __init__(self, feeder: str, split: str, bad: Sequence[int], allowed: Sequence[int]):
        shown = _short(allowed)
        super().__init__(f"day(s) {', '.join(map(str, bad))} are not {split} days of feeder {feeder!r} "
                         f"({split} days: {shown})")


def _short(xs: Sequence[int], n: int = 6) -> str:
    xs = list(xs)
    if len(xs) <= n:
        return ", ".join(map(str, xs))
    return ", ".join(map(str, xs[: n - 1])) + f", …, {xs[-1]} ({len(xs)} days)"


def check_days(feeder, split: str, days: Sequence[int] | None) -> list[int]:
    """The days to run: all days of ``split``, or ``days`` after checking they belong to it."""
    allowed = feeder.days(split)
    if days is None:
        return list(allowed)
    days = [int(d) for d in days]
    bad = [d for d in days if d not in set(allowed)]
    if bad:
        raise DaysNotInSplit(feeder.name, split, bad, allowed)
    if not days:
        raise GridrlError("the list of days is empty")
    return list(dict.fromkeys(days))
