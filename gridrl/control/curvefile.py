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

**Per-inverter curve files** (``gridrl export --format curves`` writes them; ``droop:curves=FILE``
and ``gridrl evaluate --curve FILE`` read them) give every inverter its own IEEE 1547-2018
volt-var curve under the standard's names, as a JSON file (with provenance) and a CSV file (one
row per inverter, :data:`INVERTER_COLUMNS`)::

    {"format": "gridrl-volt-var-curves", "version": 1, "units": {...},
     "inverters": [{"sgen": 2, "bus": 21, "agent": "bus22", "s_rated_mva": 1.8575, "q_rating_pct": 44.0,
                    "VRef": 1.0, "V1": 0.92, "Q1": 44.0, "V2": 0.98, "Q2": 0.0, "V3": 1.02, "Q3": 0.0,
                    "V4": 1.08, "Q4": -44.0}, ...],
     "fit": {...}}

``V1``–``V4`` and ``VRef`` are in p.u. of nominal voltage, ``Q1``–``Q4`` in % of the inverter's
nameplate apparent power ``s_rated_mva`` (positive injects). A zero-width deadband has
``V2 = V3``. Inverters of one agent act on their sum (see :mod:`gridrl.control.droop`), so
they must carry the same curve. :func:`read_agent_curves` gives the per-agent curve mapping
droop takes (``{"agents": {AGENT: {v_pu, q, reference}}, "fit": ...}``).
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
from gridrl.control.droop import AGENTS, DroopCurve, agent_curves, resolve_curve

__all__ = ["CURVES_FORMAT", "INVERTER_COLUMNS", "POINTS", "curve_mapping", "curve_points", "points_curve",
           "read_agent_curves", "read_curve_file", "write_agent_curves", "write_curve_file"]

CURVES_FORMAT = "gridrl-volt-var-curves"
#: IEEE 1547-2018's names of a volt-var curve's settings
POINTS = ("VRef", "V1", "Q1", "V2", "Q2", "V3", "Q3", "V4", "Q4")
INVERTER_COLUMNS = ("sgen", "bus", "agent", "s_rated_mva", "q_rating_pct", *POINTS)
CURVE_UNITS = {"V1-V4, VRef": "p.u. of nominal voltage",
               "Q1-Q4, q_rating_pct": "% of the inverter's nameplate apparent power s_rated_mva; positive injects "
                                      "reactive power (raises the voltage)",
               "s_rated_mva": "MVA"}


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


# --------------------------------------------------------------------------------------------
# per-inverter IEEE 1547 curves
# --------------------------------------------------------------------------------------------


def curve_points(curve: DroopCurve) -> dict[str, float]:
    """A three- or four-point ``s_max`` curve under IEEE 1547's names (``V`` in p.u., ``Q`` in %
    of nameplate apparent power; a three-point curve has ``V2 = V3``, ``VRef`` the deadband's centre)."""
    if curve.reference != "s_max" or len(curve.v_pu) not in (3, 4):
        raise CurveError(f"an IEEE 1547 volt-var curve has 3 or 4 breakpoints in fractions of s_max, got "
                         f"{len(curve.v_pu)} in fractions of {curve.reference}")
    v, q = list(curve.v_pu), list(curve.q)
    if len(v) == 3:
        v.insert(2, v[1])
        q.insert(2, q[1])
    out = {"VRef": round((v[1] + v[2]) / 2, 6)}
    for k in range(4):
        out[f"V{k + 1}"] = round(v[k], 6)
        out[f"Q{k + 1}"] = round(100.0 * q[k], 4)
    return {name: out[name] for name in POINTS}


def points_curve(points: Mapping[str, Any]) -> dict[str, Any]:
    """The droop curve mapping (``v_pu``, ``q`` in fractions of ``s_max``) of IEEE 1547 settings
    ``V1``–``V4``, ``Q1``–``Q4`` (``Q`` in %); ``V2 = V3`` merges the two points."""
    v = [float(points[f"V{k}"]) for k in range(1, 5)]
    q = [float(points[f"Q{k}"]) / 100.0 for k in range(1, 5)]
    if v[2] == v[1] and q[2] == q[1]:
        del v[2], q[2]
    return {"v_pu": v, "q": q, "reference": "s_max"}


def write_agent_curves(json_path: str | os.PathLike, csv_path: str | os.PathLike, inverters: list[dict[str, Any]],
                       fit: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write a per-inverter curve file pair (rows with :data:`INVERTER_COLUMNS`) atomically: each
    file is complete or untouched, and neither is renamed into place before both are written."""
    import csv
    import io

    from gridrl.io import atomic_write

    doc = {"format": CURVES_FORMAT, "version": 1, "units": CURVE_UNITS,
           "inverters": [{k: r[k] for k in INVERTER_COLUMNS} for r in inverters], "fit": dict(fit or {})}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(INVERTER_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in inverters:
        writer.writerow({k: r[k] for k in INVERTER_COLUMNS})
    text_json = json.dumps(doc, indent=2, default=str) + "\n"

    def write_json(tmp: Path) -> None:
        tmp.write_text(text_json, encoding="utf-8")
        # the CSV goes into place only once the JSON is complete; the JSON follows at once
        atomic_write(csv_path, lambda t: t.write_text(buf.getvalue(), encoding="utf-8"))

    atomic_write(json_path, write_json)
    return Path(json_path), Path(csv_path)


def read_agent_curves(path: str | os.PathLike) -> dict[str, Any]:
    """The per-agent curve mapping of a per-inverter curve file (``.json`` or ``.csv``), checked:
    one :class:`CurveError` naming the file lists what is wrong."""
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CurveError(f"cannot read the curve file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    fit: dict[str, Any] = {}
    try:
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != CURVES_FORMAT:
                raise CurveError(f"{path} is not a {CURVES_FORMAT} file (written by `gridrl export --format curves`)")
            rows, fit = doc.get("inverters"), doc.get("fit") or {}
    except ValueError as exc:
        raise CurveError(f"{path} is damaged ({str(exc)[:120]}); export the curves again") from None
    if not isinstance(rows, list) or not rows:
        raise CurveError(f"{path} lists no inverters; export the curves again")
    missing = sorted({c for r in rows for c in ("agent", *POINTS) if not isinstance(r, dict) or r.get(c) in (None, "")})
    if missing:
        raise CurveError(f"{path}: inverter rows lack {', '.join(missing)} (columns: {', '.join(INVERTER_COLUMNS)})")
    agents: dict[str, dict[str, Any]] = {}
    problems = []
    for r in rows:
        try:
            curve = points_curve(r)
        except (TypeError, ValueError):
            problems.append(f"inverter {r.get('sgen', '?')}: settings are not numbers")
            continue
        seen = agents.setdefault(str(r["agent"]), curve)
        if seen != curve:
            problems.append(f"agent {r['agent']!r}: its inverters carry different curves (an agent acts on their sum)")
    if problems:
        raise CurveError(f"{path}: " + "; ".join(problems))
    mapping = {AGENTS: agents, **({"fit": dict(fit)} if fit else {})}
    try:
        agent_curves(mapping)
    except CurveError as exc:
        raise CurveError(f"{path}: {exc}") from None
    return mapping
