"""Declared `verifier_parm` parameters of the verifiers, read and checked in one place.

The Orsta `verifier_parm` struct only knows the detection keys; every other key lands in `VerifierParm.extra`.
A verifier lists its parameters as `Param`s (name, kind, default, bounds, help text) and `read_params` turns the
row's `extra` into a plain dict of typed values, or raises `Unverifiable` naming the dotted field. Declaring them
gives three things at once: typos are caught before training (an unknown key is an error, not silently ignored),
defaults live next to their documentation, and docs/rewards.md can be checked against the code.

A key whose value is null counts as absent: a parquet file mixing verifiers has one struct column holding the union
of all keys, null where a row's verifier does not use them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triune_trl.rewards.registry import Unverifiable
from triune_trl.rewards.spec import RewardSpec

__all__ = ["PARM_FIELD", "Param", "read_params"]

PARM_FIELD = "reward_model.verifier_parm"
KINDS = ("number", "integer", "bool", "choice", "text", "text_list", "weights")


@dataclass(frozen=True)
class Param:
    """One parameter: `kind` is one of number, integer, bool, choice, text, text_list, weights (name -> number).

    `low` / `high` bound numbers and integers (inclusive); `choices` lists a choice's values; `nullable` lets an
    explicit default of None stand for "not set" (for example no upper length bound).
    """

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # the names a `weights` parameter may use

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: unknown kind {self.kind!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _bounded(param: Param, value: float, path: str) -> None:
    if param.low is not None and value < param.low:
        raise Unverifiable(f"must be >= {param.low:g}, got {value!r}", field=path)
    if param.high is not None and value > param.high:
        raise Unverifiable(f"must be <= {param.high:g}, got {value!r}", field=path)


def _number(param: Param, value: Any, path: str) -> float:
    if not _is_real(value) or not math.isfinite(float(value)):
        raise Unverifiable(f"expected a finite number, got {value!r:.80}", field=path)
    number = float(value)
    _bounded(param, number, path)
    return number


def _convert(param: Param, value: Any, path: str) -> Any:
    """The typed value of one parameter, or Unverifiable naming `path`."""
    if param.kind == "number":
        return _number(param, value, path)
    if param.kind == "integer":
        if not _is_real(value) or not math.isfinite(float(value)) or float(value) != int(value):
            raise Unverifiable(f"expected a whole number, got {value!r:.80}", field=path)
        number = int(value)
        _bounded(param, number, path)
        return number
    if param.kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise Unverifiable(f"expected true or false, got {value!r:.80}", field=path)
        return bool(value)
    if param.kind == "choice":
        if value not in param.choices:
            raise Unverifiable(f"expected one of {', '.join(param.choices)}, got {value!r:.80}", field=path)
        return value
    if param.kind == "text":
        if not isinstance(value, str):
            raise Unverifiable(f"expected a string, got {value!r:.80}", field=path)
        return value
    if param.kind == "text_list":
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise Unverifiable(f"expected a list of strings, got {value!r:.80}", field=path)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise Unverifiable(f"expected a string, got {item!r:.80}", field=f"{path}[{index}]")
        return tuple(value)
    # weights: {name: number >= 0}, unknown names rejected, absent or null names count as 0
    if not isinstance(value, Mapping):
        raise Unverifiable(f"expected {{{', '.join(param.keys)}}} with numbers, got {value!r:.80}", field=path)
    weights = {}
    for key, weight in value.items():
        if key not in param.keys:
            raise Unverifiable(f"unknown key; expected one of {', '.join(param.keys)}", field=f"{path}.{key}")
        weights[key] = 0.0 if weight is None else _number(param, weight, f"{path}.{key}")
    return {key: weights.get(key, 0.0) for key in param.keys}


def read_params(spec: RewardSpec, params: Sequence[Param], verifier: str) -> dict[str, Any]:
    """`spec.verifier_parm.extra` as typed values with defaults filled in; raises Unverifiable on the first problem."""
    extra = spec.verifier_parm.extra
    known = {param.name for param in params}
    unknown = sorted(str(key) for key, value in extra.items() if key not in known and value is not None)
    if unknown:
        expected = ", ".join(param.name for param in params) or "none"
        raise Unverifiable(
            f"unknown parameter of the {verifier} verifier; it takes: {expected}", field=f"{PARM_FIELD}.{unknown[0]}"
        )
    out = {}
    for param in params:
        value = extra.get(param.name)
        out[param.name] = param.default if value is None else _convert(param, value, f"{PARM_FIELD}.{param.name}")
    return out
