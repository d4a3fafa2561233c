"""Checks of parameters every model shares: an error that names the parameter."""

from __future__ import annotations

import numpy as np

from cellformer._errors import ParameterError

__all__ = ["check_positive", "check_probability"]


def check_positive(**values) -> None:
    """Refuse counts below 1 (``None`` means a default): an error that names the parameter."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ParameterError(f"{name} must be a whole number of at least 1, got {value!r}.")


def check_probability(closed: bool = False, **values) -> None:
    """Refuse shares outside ``[0, 1)`` (``[0, 1]`` when ``closed``): an error naming them."""
    for name, value in values.items():
        if value is None:
            continue
        bad = isinstance(value, bool) or not isinstance(value, int | float | np.number)
        if bad or not (0 <= value <= 1 if closed else 0 <= value < 1):
            raise ParameterError(
                f"{name} must be a number in [0, 1{']' if closed else ')'}, got {value!r}."
            )
