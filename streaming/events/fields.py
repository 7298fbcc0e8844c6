"""Validation of received or constructed events, field by field.

Every ``from_dict()`` and ``__post_init__`` of the event schema checks its fields with these functions, so that a
wrong field raises :class:`EventValidationError` naming it (``"emotion.probs.joy"``) instead of a ``KeyError`` or a
``TypeError`` deep in a client's code.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["EventValidationError", "require", "field_path", "as_str", "as_float", "as_int", "as_bool", "check_type"]


class EventValidationError(ValueError):
    """A received or constructed event does not match the schema.

    ``field`` is the dotted path of the offending field (``"emotion.probs.joy"``), so a client or the service can
    answer with an :class:`ErrorEvent` that names it.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require(d: Mapping[str, Any], key: str, path: str) -> Any:
    """``d[key]``, or :class:`EventValidationError` naming ``path.key`` when ``d`` is no object or lacks it."""
    if not isinstance(d, Mapping):
        raise EventValidationError(path or "event", f"expected an object, got {type(d).__name__}")
    if key not in d:
        raise EventValidationError(field_path(path, key), "missing required field")
    return d[key]


def field_path(path: str, key: str) -> str:
    """The dotted path of ``key`` inside the object at ``path`` (``""``: the event itself)."""
    return f"{path}.{key}" if path else key


def as_str(v: Any, path: str, *, allow_empty: bool = True) -> str:
    """``v`` if it is a string (non-empty unless ``allow_empty``), else :class:`EventValidationError` at ``path``."""
    if not isinstance(v, str):
        raise EventValidationError(path, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v:
        raise EventValidationError(path, "must not be empty")
    return v


def as_float(v: Any, path: str, lo: float | None = None, hi: float | None = None) -> float:
    """``v`` as a plain float if it is a finite number within [``lo``, ``hi``], else :class:`EventValidationError`."""
    # bool is an int subclass: reject it explicitly, "true" is never a valid time or probability.
    # numbers.Real also admits numpy scalars (a model's float32 output), which become plain floats below.
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise EventValidationError(path, f"expected a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise EventValidationError(path, f"expected a finite number, got {f}")
    if lo is not None and f < lo:
        raise EventValidationError(path, f"must be >= {lo}, got {f}")
    if hi is not None and f > hi:
        raise EventValidationError(path, f"must be <= {hi}, got {f}")
    return f


def as_int(v: Any, path: str, lo: int | None = None) -> int:
    """``v`` as a plain int if it is an integer (not a bool) >= ``lo``, else :class:`EventValidationError`."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise EventValidationError(path, f"expected an integer, got {type(v).__name__}")
    if lo is not None and v < lo:
        raise EventValidationError(path, f"must be >= {lo}, got {v}")
    return int(v)


def as_bool(v: Any, path: str) -> bool:
    """``v`` as a plain bool if it is a bool or a numpy bool, else :class:`EventValidationError` at ``path``."""
    if not isinstance(v, bool) and type(v).__name__ != "bool_":  # numpy.bool_ is not a bool subclass
        raise EventValidationError(path, f"expected true or false, got {type(v).__name__}")
    return bool(v)


def check_type(d: Mapping[str, Any], expected: str) -> None:
    """Raise :class:`EventValidationError` unless the event ``d`` has ``"type": expected``."""
    t = require(d, "type", "")
    if t != expected:
        raise EventValidationError("type", f"expected {expected!r}, got {t!r}")
