"""Checks of constructor and call options: a bad value fails at once, naming the option, not later as some item's
error or as a silent coercion (``"false"`` read as True, ``2.5`` cut to 2)."""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np


def flag(name: str, value: Any) -> bool:
    """A real bool (numpy's too). Strings are refused: ``allow_remote="false"`` must not mean True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def flag_or_folder(name: str, value: Any) -> bool | Path:
    """True, False, or an existing folder (a str or path), resolved: links in its name cannot lead elsewhere later."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be True, False or a folder, got {value!r}")
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{name} must be True, False or an existing folder, got {value!r} (no such folder)")
    return folder.resolve()


def whole_number(name: str, value: Any, minimum: int) -> int:
    """An integer (not a bool, not a float) of at least `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any) -> float:
    """A finite number above zero."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def dtype_name(value: Any) -> Any:
    """A dtype as its name (``torch.bfloat16`` -> ``"bfloat16"``), so that configurations holding one serialise to
    JSON; names and None pass through."""
    if value is None or isinstance(value, str):
        return value
    text = str(value)
    return text[len("torch."):] if text.startswith("torch.") else text


def dtype_names_in(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with its ``dtype``/``torch_dtype`` values as names (a copy)."""
    return {key: dtype_name(value) if key in ("dtype", "torch_dtype") else value for key, value in options.items()}
