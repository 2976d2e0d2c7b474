"""Matryoshka truncation, int8/binary quantization and exact rescored search (numpy; FAISS when installed).

Importing this module does not import torch. See `qwen3vl_integrations.core.quantization` for the exact maths.
"""
from .core.quantization import PRECISIONS, Ranges, calibrate, dequantize, quantize, search, truncate

__all__ = ["truncate", "calibrate", "quantize", "dequantize", "search", "Ranges", "PRECISIONS"]
