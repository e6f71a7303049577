"""Loading TOML tables into frozen, keyword-only config dataclasses.

Every configurable component of gridrl is one frozen dataclass whose fields are documented in its
docstring. :func:`from_dict` fills one from a (TOML) mapping and reports *every* problem at once —
unknown keys, missing required fields, wrong types, values outside a ``Literal`` — naming the
file and the dotted field path, so a user fixes a spec in one pass.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from gridrl.errors import SpecError

T = TypeVar("T")

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or unreadable file or a syntax error becomes a :class:`SpecError`
    naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise SpecError(str(path), ["is a folder; give the path of a .toml file"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read it ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise SpecError(str(path), ["not a text file (TOML is UTF-8 text)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), [f"not valid TOML ({exc})"]) from None


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str) -> T:
    """Build ``cls`` from ``data``; raise one :class:`SpecError` listing every problem."""
    problems: list[str] = []
    value = _build(cls, data, "", problems)
    if problems:
        raise SpecError(source, problems)
    return value


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    where = path or "top level"
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected a table, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    for key in unknown:  # the allowed keys once per table, not once per unknown key
        allowed = f" (allowed: {', '.join(sorted(fields))})" if key == unknown[0] else ""
        problems.append(f"{_join(path, key)}: unknown key{allowed}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        dotted = _join(path, name)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                problems.append(f"{dotted}: required field is missing")
            continue
        kwargs[name] = _coerce(hints[name], data[name], dotted, problems)
    before = len(problems)
    if before:
        return None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ checks of cross-field rules
        problems.append(f"{path}: {exc}" if path else str(exc))
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            problems.append(f"{path}: {value!r} is not allowed (allowed: {', '.join(map(repr, allowed))})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        trial: list[str] = []
        for arg in args:
            trial.clear()
            out = _coerce(arg, value, path, trial)
            if not trial:
                return out
        problems.extend(trial)
        return None
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected a list, got {value!r}")
            return None
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a table, got {value!r}")
            return None
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected a number, got {value!r}")
            return None
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            problems.append(f"{path}: expected {_TYPE_NAMES[tp]}, got {value!r}")
            return None
        return value
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain TOML-ready mapping (``None`` fields dropped)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


# --------------------------------------------------------------------------------------------
# which kind of file
# --------------------------------------------------------------------------------------------

#: gridrl's kinds of TOML file: a name, the top-level keys that only that kind has, and what to do
#: with it (``{path}``: the file; ``{script}``: the experiment script the file names in its header).
FILE_KINDS = {
    "comparison": ("a comparison config", {"controllers"}, "run it with `gridrl compare --config {path}`"),
    "experiment": ("an experiment of several training runs", {"algos", "variants", "baselines", "per_feeder"},
                   "run it with `python {script} --config {path}`"),
    "feeder": ("a feeder spec", {"source", "pv", "profiles", "base_case"},
               "give it where a feeder name goes, e.g. `gridrl feeders show {path}`"),
    "curve": ("a droop curve file", {"v_pu"}, "give it to `gridrl evaluate --feeder FEEDER --curve {path}`"),
    "training": ("a training config", {"algo", "learner", "validation_days", "compare", "band_margin_pu"},
                 "run it with `gridrl train FEEDER --config {path}`"),
}


def file_kind(data: Mapping[str, Any]) -> str | None:
    """Which of :data:`FILE_KINDS` a parsed TOML file is, by the keys only that kind has (``None``:
    none of them, or more than one)."""
    kinds = [k for k, (_, keys, _) in FILE_KINDS.items() if keys & set(data)]
    return kinds[0] if len(kinds) == 1 else None


def wrong_kind(path: str | Path, data: Mapping[str, Any], expected: str) -> str | None:
    """One line saying what ``path`` is and what to do with it, when it is recognisably another
    kind of gridrl file than ``expected`` (a key of :data:`FILE_KINDS`); else ``None``."""
    kind = file_kind(data)
    if kind is None or kind == expected:
        return None
    what, _, advice = FILE_KINDS[kind]
    script = "experiments/SCRIPT.py"
    if kind == "experiment":  # its script names itself in the file's header
        import re

        try:
            found = re.search(r"python (experiments/[\w.-]+\.py) --config", Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            found = None
        script = found.group(1) if found else script
    return f"{path} is {what}, not {FILE_KINDS[expected][0]}; {advice.format(path=path, script=script)}"
