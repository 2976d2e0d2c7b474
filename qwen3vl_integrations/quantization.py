"""Matryoshka truncation, int8/binary quantization and exact rescored search (numpy; FAISS when installed).

Importing this module does not import torch. See `qwen3vl_integrations.core.quantization` (codes) and
`qwen3vl_integrations.core.search` (search) for the exact maths.
"""
from .core.quantization import PRECISIONS, Ranges, calibrate, dequantize, quantize, truncate
from .core.search import search

__all__ = ["truncate", "calibrate", "quantize", "dequantize", "search", "Ranges", "PRECISIONS"]
