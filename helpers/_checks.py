"""Argument checks shared by every ``helpers`` module: one policy, one wording.

- A value of the wrong type (``bool`` included: ``True`` is not a count or a fraction) raises
  ``TypeError``; a value of the right type outside its range raises ``ValueError``.
- Both messages name the argument and its allowed range, and show the value given:
  ``"num_epochs must be an integer >= 1, got 0"``.
- A layer is named by its dotted path in ``model.named_modules()``; an unknown name raises
  ``ValueError`` listing the model's layers.
"""
from __future__ import annotations

import math
import numbers

from torch import nn


def _integer_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an ``int`` (not ``bool``) in ``[minimum, maximum]`` (``None``: unbounded)."""
    allowed = _integer_range(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if it is a finite real number (not ``bool``) in the interval from ``low`` to ``high``.

    The interval is closed unless ``low_open`` / ``high_open``; the message writes it as ``(0, 1]``
    and so on (``"a positive number"`` for ``(0, inf)``).
    """
    if low == 0 and low_open and high == math.inf:
        allowed = "a positive, finite number"
    elif low == -math.inf and high == math.inf:
        allowed = "a finite number"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    inside = ((value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not math.isfinite(value) or not inside:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_fraction(name: str, value, *, allow_zero: bool = True, allow_one: bool = False) -> float:
    """A fraction: ``check_number`` on ``[0, 1)`` by default (``(0, ...`` without zero, ``..., 1]`` with one)."""
    return check_number(name, value, 0, 1, low_open=not allow_zero, high_open=not allow_one)


def get_submodule(model: nn.Module, name: str, argument: str = "name", types: tuple[type, ...] = ()) -> nn.Module:
    """The submodule called ``name`` (a dotted path), or ``ValueError`` listing the model's layers.

    ``types`` narrows what is accepted and what the message lists (e.g. ``(nn.Conv2d, nn.Linear)``).
    """
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a layer name (str), got {name!r}")
    modules = {n: m for n, m in model.named_modules() if n and (not types or isinstance(m, types))}
    if name not in modules:
        raise ValueError(f"{argument} {name!r} is not a layer of the model; layers: {list(modules)}")
    return modules[name]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` with ``module`` (its parent must exist)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
