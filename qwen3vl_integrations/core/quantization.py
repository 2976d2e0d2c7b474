"""Matryoshka truncation and scalar/binary quantization, on numpy arrays.

Order of operations (REFERENCE.md §9-§10), the only one this module supports::

    truncate(vecs, k)            # keep the first k dims, L2-normalise again (float32)
    ranges = calibrate(sample)   # int8/uint8 only: per-dimension ranges of *truncated* vectors
    quantize(vecs, precision, ranges=ranges)

Precisions (``PRECISIONS``):

- ``float32`` / ``float16``: a cast.
- ``int8`` / ``uint8``: per dimension ``i``, ``step_i = (high_i - low_i) / 255`` and
  ``code = clip(rint((x - low_i) / step_i), 0, 255)`` (round half to even, then clip: values outside the calibrated
  range saturate at the edges, they never wrap around); ``uint8`` stores ``code``, ``int8`` stores ``code - 128``.
  ``dequantize`` returns ``low_i + code * step_i`` in float32. The ranges come from ``calibrate``; there is no
  default, because ranges guessed from the batch being quantized differ from batch to batch.
- ``binary`` / ``ubinary``: bit = ``x > 0``, packed 8 per byte, first dimension in the most significant bit
  (``numpy.packbits``). ``ubinary`` is uint8; ``binary`` is the same byte minus 128 as int8. Both are byte-identical
  to sentence-transformers' ``quantize_embeddings``.

``search`` (``core.search``) finds nearest neighbours in corpora of any of these precisions.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PRECISIONS",
    "MIN_DIMENSIONS",
    "Ranges",
    "truncate",
    "calibrate",
    "quantize",
    "dequantize",
]

PRECISIONS: tuple[str, ...] = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
FLOAT_PRECISIONS = ("float32", "float16")
INT_PRECISIONS = ("int8", "uint8")
BINARY_PRECISIONS = ("binary", "ubinary")
MIN_DIMENSIONS = 64  # smallest Matryoshka dimension the models were trained for (REFERENCE.md §9)

# Working-set limit (elements). Tests shrink it to exercise the blocks.
_QUANT_ROWS_ELEMS = 1 << 22  # float64 temporary of int8 quantization


# ----------------------------------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to the CPU without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _as_2d(x: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    if x.ndim == 1:
        return x[None, :], True
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 1-D vector or a 2-D [n, dim] array, got shape {x.shape}")
    return x, False


def _float_matrix(vecs: Any, name: str) -> tuple[np.ndarray, bool]:
    x = _to_numpy(vecs)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name} must be float embeddings, got dtype {x.dtype}; dequantize() codes before re-quantizing them"
        )
    return _as_2d(x, name)


def _check_precision(precision: Any) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_finite_rows(x: np.ndarray, row_ids: np.ndarray, name: str) -> None:
    """Raise naming the first row of ``x`` (``name`` row ``row_ids[i]``) that holds NaN or an infinite value."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} row {int(row_ids[int(np.argmax(bad))])} contains NaN or infinite values")


def _row_norms(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64, copy=False)
    return np.sqrt(np.einsum("ij,ij->i", x64, x64))


# ----------------------------------------------------------------------------------------------------- truncate


def check_dimensions(dimensions: int | None, dim: int, *, min_dimensions: int = MIN_DIMENSIONS) -> int:
    """The Matryoshka size ``dimensions`` asks of ``dim``-wide vectors (``None``: all), or ``ValueError``."""
    if dimensions is None:
        return dim
    if isinstance(dimensions, bool) or not isinstance(dimensions, numbers.Integral):
        raise ValueError(f"dimensions must be an integer or None, got {dimensions!r}")
    k = int(dimensions)
    if k > dim:
        raise ValueError(f"dimensions={k} is larger than the embedding size {dim}")
    if k < min_dimensions and k != dim:
        raise ValueError(
            f"dimensions={k} is below {min_dimensions}, the smallest Matryoshka size the model supports "
            f"(valid: {min_dimensions}..{dim})"
        )
    return k


def truncate(
    vecs: Any, dimensions: int | None, normalize: bool = True, *, min_dimensions: int = MIN_DIMENSIONS
) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dimensions`` values, then L2-normalise again (float32).

    Accepts a 1-D vector or a 2-D ``[n, D]`` array (torch tensors too) and returns the same rank. ``dimensions=None``
    keeps all ``D`` values. Raises ``ValueError`` when ``dimensions < min_dimensions`` (64, the smallest size the
    models were trained for) or ``dimensions > D``; ``dimensions == D`` is always accepted. Zero vectors stay zero.
    Re-normalising does not depend on whether the input was normalised:
    ``normalize(x[:k]) == normalize(normalize(x)[:k])`` up to float32 rounding.
    """
    x, was_1d = _float_matrix(vecs, "vecs")
    k = check_dimensions(dimensions, x.shape[1], min_dimensions=min_dimensions)
    out = np.array(x[:, :k], dtype=np.float32, copy=True)
    if normalize:
        norms = _row_norms(out)
        np.divide(out, norms[:, None].astype(np.float32), out=out, where=norms[:, None] > 0)
    return out[0] if was_1d else out


# ----------------------------------------------------------------------------------------------------- ranges


@dataclass(eq=False)
class Ranges:
    """Per-dimension calibration ranges for int8/uint8: ``low[i] <= high[i]``, float32, one pair per dimension.

    Keep it next to the index: the same ranges must quantize the corpus, dequantize it, and (optionally) quantize
    queries. ``save(path)`` writes JSON, or a ``[2, dim]`` float32 ``.npy`` (the layout sentence-transformers calls
    ``ranges``) when the path ends in ``.npy``; ``Ranges.load(path)`` reads either.
    """

    low: np.ndarray
    high: np.ndarray
    percentile: tuple[float, float] | None = None  # how the ranges were clipped, if they were
    count: int | None = None  # calibration sample size
    extra: dict = field(default_factory=dict)  # free-form metadata kept by JSON round trips

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float32)
        high = np.asarray(self.high, dtype=np.float32)
        if low.ndim != 1 or high.ndim != 1:
            raise ValueError(f"Ranges needs 1-D low and high (one value per dimension), got shapes {low.shape} and "
                             f"{high.shape}; a [2, dim] array goes to Ranges.from_array")
        if low.shape != high.shape or low.size == 0:
            raise ValueError(f"Ranges needs low and high of the same non-zero length, got {low.shape} and {high.shape}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("Ranges must be finite")
        if np.any(low > high):
            raise ValueError("Ranges must have low <= high in every dimension")
        self.low, self.high = low, high
        if self.count is not None:
            self.count = _check_int(self.count, "Ranges count", 1)
        if self.percentile is not None:
            # The ignore: a record only (a JSON list becomes a tuple of floats); calibrate makes and checks the pairs.
            self.percentile = tuple(float(p) for p in self.percentile)  # type: ignore[assignment]

    @property
    def dim(self) -> int:
        return int(self.low.size)

    @property
    def step(self) -> np.ndarray:
        """float64 quantization step per dimension, ``(high - low) / 255`` (0 for a constant dimension)."""
        return (self.high.astype(np.float64) - self.low.astype(np.float64)) / 255.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ranges):
            return NotImplemented
        return bool(np.array_equal(self.low, other.low) and np.array_equal(self.high, other.high))

    def __repr__(self) -> str:
        return f"Ranges(dim={self.dim}, percentile={self.percentile}, count={self.count})"

    def to_array(self) -> np.ndarray:
        """``[2, dim]`` float32: row 0 the lows, row 1 the highs (sentence-transformers' ``ranges`` layout)."""
        return np.stack([self.low, self.high]).astype(np.float32)

    @classmethod
    def from_array(cls, array: Any) -> Ranges:
        a = np.asarray(array)
        if a.ndim != 2 or a.shape[0] != 2:
            raise ValueError(f"ranges array must have shape [2, dim], got {a.shape}")
        return cls(low=a[0], high=a[1])

    def to_dict(self) -> dict:
        # float32 -> Python float (float64) is exact, and so is the way back: JSON round trips are bit-exact.
        return {
            "format": "qwen3vl-quantization-ranges",
            "version": 1,
            "dim": self.dim,
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "percentile": list(self.percentile) if self.percentile is not None else None,
            "count": self.count,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Ranges:
        if not isinstance(data, dict):
            raise ValueError(f"ranges dict expected, got {type(data).__name__}")
        low = data.get("low", data.get("min"))
        high = data.get("high", data.get("max"))
        if low is None or high is None:
            raise ValueError("ranges dict needs 'low' and 'high' lists")
        pct = data.get("percentile")
        if data.get("dim") is not None and data["dim"] != np.size(low):
            raise ValueError(f"ranges dict says dim={data['dim']} but holds {np.size(low)} lows")
        return cls(low=low, high=high, percentile=tuple(pct) if pct is not None else None,
                   count=data.get("count"), extra=dict(data.get("extra") or {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() == ".npy":
            with path.open("wb") as file:  # np.save(path) would append ".npy" to a ".NPY" name
                np.save(file, self.to_array())
        else:
            path.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Ranges:
        path = Path(path)
        if path.suffix.lower() == ".npy":
            return cls.from_array(np.load(path, allow_pickle=False))
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _coerce_ranges(ranges: Any, dim: int, precision: str) -> Ranges:
    if ranges is None:
        raise ValueError(
            f"{precision} quantization needs per-dimension ranges: calibrate them once on a sample of your corpus "
            f"embeddings (after truncation), e.g. `ranges = calibrate(sample)`, save them with the index "
            f"(`ranges.save('ranges.json')`) and pass `ranges=ranges`"
        )
    if isinstance(ranges, Ranges):
        r = ranges
    elif isinstance(ranges, dict):
        r = Ranges.from_dict(ranges)
    elif isinstance(ranges, (str, Path)):
        r = Ranges.load(ranges)
    else:
        r = Ranges.from_array(ranges)
    if r.dim != dim:
        raise ValueError(
            f"ranges cover {r.dim} dimensions but the vectors have {dim}; calibrate on vectors truncated to {dim}"
        )
    return r


def calibrate(sample: Any, percentile: float | tuple[float, float] | None = None) -> Ranges:
    """Per-dimension ranges for int8/uint8 from a sample of float embeddings ``[n >= 2, dim]``.

    Calibrate on vectors already truncated (and re-normalised) to the dimension you will store. ``percentile=None``
    takes the min and max; ``percentile=p`` clips to the ``p``-th and ``(100 - p)``-th percentiles (e.g. ``0.1``), and
    a pair ``(lo, hi)`` sets both; values outside the range saturate when quantized.
    """
    x, _ = _float_matrix(sample, "sample")
    if x.shape[0] < 2:
        raise ValueError(f"calibrate needs at least 2 sample vectors, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("calibration sample contains NaN or infinite values")
    if percentile is None:
        low, high, pct = x.min(axis=0), x.max(axis=0), None
    else:
        # float spelled out for type checkers, which do not count it as a numbers.Real (numpy scalars are only that)
        if isinstance(percentile, (float, numbers.Real)):
            pct = (float(percentile), 100.0 - float(percentile))
        else:
            pair = tuple(float(p) for p in percentile)
            if len(pair) != 2:
                raise ValueError(f"percentile must be a number or a (low, high) pair, got {percentile!r}")
            pct = pair[0], pair[1]
        if not (0.0 <= pct[0] < pct[1] <= 100.0):
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {pct}")
        low, high = np.percentile(x.astype(np.float64), pct, axis=0)
    return Ranges(low=low, high=high, percentile=pct, count=int(x.shape[0]))


# ----------------------------------------------------------------------------------------------------- quantize


def _int_codes(x: np.ndarray, r: Ranges) -> np.ndarray:
    """uint8 codes 0..255 by round-to-nearest (half to even) then clip, computed in float64, in row chunks."""
    n, dim = x.shape
    low = r.low.astype(np.float64)
    step = r.step
    inv = np.where(step > 0, 1.0 / np.where(step > 0, step, 1.0), 0.0)  # constant dimension -> code 0
    out = np.empty((n, dim), dtype=np.uint8)
    rows = max(1, _QUANT_ROWS_ELEMS // max(dim, 1))
    for s in range(0, n, rows):
        t = x[s : s + rows].astype(np.float64)
        _check_finite_rows(t, np.arange(s, s + len(t)), "vecs")
        t -= low
        t *= inv
        np.rint(t, out=t)
        np.clip(t, 0.0, 255.0, out=t)
        out[s : s + rows] = t
    return out


def quantize(vecs: Any, precision: str, ranges: Any = None) -> np.ndarray:
    """Quantize float embeddings (1-D or 2-D; returns the same rank).

    ``float32``/``float16`` cast; ``int8``/``uint8`` need ``ranges`` (a ``Ranges``, its dict, a ``[2, dim]`` array or
    a saved file; see ``calibrate``), round to nearest and clip; ``binary``/``ubinary`` pack ``x > 0`` into
    ``ceil(dim / 8)`` bytes per vector. Call ``truncate`` first for Matryoshka dimensions.
    """
    precision = _check_precision(precision)
    x, was_1d = _float_matrix(vecs, "vecs")
    out: np.ndarray
    if precision == "float32":
        out = x.astype(np.float32)
    elif precision == "float16":
        out = x.astype(np.float16)
    elif precision in INT_PRECISIONS:
        r = _coerce_ranges(ranges, x.shape[1], precision)
        codes = _int_codes(x, r)
        out = codes if precision == "uint8" else (codes ^ np.uint8(0x80)).view(np.int8)  # code - 128
    else:
        _check_finite_rows(x, np.arange(len(x)), "vecs")  # as a bit, NaN would read as an ordinary "not > 0"
        packed = np.packbits(x > 0, axis=-1)
        out = packed if precision == "ubinary" else (packed ^ np.uint8(0x80)).view(np.int8)  # byte - 128
    return out[0] if was_1d else out


def _dequantize_int(codes: np.ndarray, precision: str, r: Ranges) -> np.ndarray:
    c = codes.view(np.uint8) ^ np.uint8(0x80) if precision == "int8" else codes
    return (r.low.astype(np.float64) + c.astype(np.float64) * r.step).astype(np.float32)


def dequantize(q: Any, precision: str, ranges: Any = None, *, dim: int | None = None) -> np.ndarray:
    """Float32 approximation of quantized vectors (1-D or 2-D).

    ``int8``/``uint8``: ``low + code * step`` with the same ``ranges``. ``binary``/``ubinary``: ``+1``/``-1`` per bit
    (so ``a @ b == n_bits - 2 * hamming``), ``8 * bytes`` values, or the first ``dim`` of them.
    """
    precision = _check_precision(precision)
    if dim is not None and precision not in BINARY_PRECISIONS:
        raise ValueError(f"dim= applies to binary and ubinary codes (their padding bits), not to {precision}")
    x, was_1d = _as_2d(_to_numpy(q), "q")
    if precision in FLOAT_PRECISIONS:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{precision} vectors must have a float dtype, got {x.dtype}")
        out = x.astype(np.float32)
    elif precision in INT_PRECISIONS:
        if x.dtype != np.dtype(precision):
            raise ValueError(f"{precision} codes must have dtype {precision}, got {x.dtype}")
        out = _dequantize_int(x, precision, _coerce_ranges(ranges, x.shape[1], precision))
    else:
        expected = np.int8 if precision == "binary" else np.uint8
        if x.dtype != expected:
            raise ValueError(f"{precision} codes must have dtype {np.dtype(expected)}, got {x.dtype}")
        u = x.view(np.uint8) ^ np.uint8(0x80) if precision == "binary" else x
        bits = np.unpackbits(u, axis=-1)
        if dim is not None:
            dim = _check_int(dim, "dim", 1)
            if dim > bits.shape[1]:
                raise ValueError(f"dim must be in 1..{bits.shape[1]}, got {dim}")
            bits = bits[:, :dim]
        out = bits.astype(np.float32) * 2.0 - 1.0
    return out[0] if was_1d else out
