"""Droop curve files: the TOML that ``gridrl evaluate --controller droop --curve FILE`` reads,
``gridrl tune-droop`` writes and ``droop:tuned`` caches.

A curve file holds one volt-var curve (see :class:`~gridrl.control.droop.DroopCurve`)::

    v_pu = [0.95, 0.99, 1.03, 1.05]      # breakpoints, strictly increasing
    q = [0.3, 0.05, 0.05, -0.6]          # fraction of the reference at each, + injects
    reference = "s_max"                  # or "q_avail"

    [fit]                                # optional: where a fitted curve came from
    feeder = "ieee33"
    spec_hash = "…"                      # the feeder spec's content hash at fitting time
    key = "…"                            # feeder, scenario, search settings and code version
    …                                    # scenario, training days, objective, figures

The curve keys may also sit under a ``[curve]`` table (as in a comparison config). ``fit`` is
provenance only: it never changes how the curve acts, but lets a reader (and gridrl) see which
feeder, operating point and training days produced it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gridrl.control.base import CurveError
from gridrl.control.droop import DroopCurve, resolve_curve

__all__ = ["curve_mapping", "read_curve_file", "write_curve_file"]


def read_curve_file(path: str | os.PathLike) -> dict[str, Any]:
    """The curve mapping (``v_pu``, ``q``, ``reference`` and, when present, ``fit``) of a curve
    file, checked: every problem raises one :class:`CurveError` naming the file."""
    from gridrl.config import read_toml

    data = read_toml(path)
    table = data["curve"] if isinstance(data.get("curve"), dict) else data
    try:
        resolve_curve(None, table)
    except CurveError as exc:
        raise CurveError(f"{path}: {exc}") from None
    return dict(table)


def curve_mapping(curve: DroopCurve, fit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A curve (and its provenance) as the mapping a curve file and a comparison config hold."""
    out: dict[str, Any] = {"v_pu": list(curve.v_pu), "q": list(curve.q), "reference": curve.reference}
    if fit:
        out["fit"] = dict(fit)
    return out


def write_curve_file(path: str | os.PathLike, curve: DroopCurve, fit: Mapping[str, Any] | None = None) -> Path:
    """Write a curve file atomically (a comment, the curve, then ``[fit]`` if given)."""
    from gridrl.io import write_text

    head = ("# gridrl droop curve: reactive power q (fraction of the reference, + injects) at each voltage "
            "v_pu,\n# linear between breakpoints, flat beyond the ends; read by "
            "`gridrl evaluate --controller droop --curve FILE`.\n")
    return write_text(path, head + _toml(curve_mapping(curve, fit)) + "\n")


# A small TOML writer for the plain data of curve files. tomli-w, the usual writer, puts every
# array element on its own line; a curve reads best as `v_pu = [0.92, 0.98, 1.02, 1.08]`.
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(table: Mapping[str, Any], prefix: str = "") -> str:
    """``table`` as TOML: plain keys first, then each sub-table under its dotted header."""
    lines, subs = [], []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            subs.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    out = "\n".join(lines)
    for key, value in subs:
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        body = _toml(value, name)
        # a table of tables only needs its sub-tables' headers
        out += ("\n\n" + body) if body.startswith("[") else f"\n\n[{name}]\n{body}"
    return out.strip("\n")


def _key(key: Any) -> str:
    key = str(key)
    return key if _BARE.match(key) else json.dumps(key, ensure_ascii=False)


def _value(v: Any) -> str:
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        v = v.item()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to a curve file")
