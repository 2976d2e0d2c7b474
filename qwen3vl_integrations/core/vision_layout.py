"""The layout of a micro-batch's images and videos in the vision tower, computed on the host.

From each image's or video's grid (`*_grid_thw`) the vision tower derives its attention chunks, the rotary
positions of its patches and the interpolation of its learned position embeddings. Inside the forward pass these
come from the grids already on the GPU: a Python loop per image, `repeat_interleave` and `.tolist()`, six host
read-backs (GPU synchronisations) and a few tiny kernels per image, all before the tower's first layer can start.

transformers 5.x vision towers accept them precomputed (`image_cu_seqlens`, `image_position_ids`, ..., see
`transformers.vision_utils`). Here transformers' own helpers compute them from the CPU copies of the grids, with the
tower's own settings, in the worker thread that prepares the batch, ahead of the model. The values are the same.

The per-patch parts (interpolation taps and weights, rotary positions) depend on each image's own grid only, and
the helpers build a batch's as the concatenation of its images': they are computed once per grid size and joined,
which for a micro-batch of 32 images of one size takes a fraction of a millisecond instead of 6 to 9.
"""
from __future__ import annotations

import inspect
import sys
import weakref
from types import ModuleType
from typing import Any

import torch

from .caching import BoundedCache, owner_cache
from .vision_levers import chunk_runs

# (modality prefix of the precomputed inputs, the batch's grid key)
MODALITIES = (("image", "image_grid_thw"), ("video", "video_grid_thw"))
# What `vision_layout` adds per modality present, after its prefix: tensors to the batch, Python values to its
# host inputs.
LAYOUT_PARTS = ("interp_indices", "interp_weights", "position_ids", "cu_seqlens")
HOST_LAYOUT_PARTS = ("chunk_runs", "max_seqlen")
LAYOUT_KEYS = frozenset(f"{modality}_{part}" for modality, _ in MODALITIES for part in LAYOUT_PARTS)
HOST_LAYOUT_KEYS = frozenset(f"{modality}_{part}" for modality, _ in MODALITIES for part in HOST_LAYOUT_PARTS)
# transformers' layout helpers, called by name in the vision tower's forward
HELPERS = ("get_vision_interpolation_indices_and_weights", "get_vision_position_ids", "get_vision_attention_seqlens")
TOWER_SETTINGS = ("num_grid_per_side", "interpolation_mode", "interpolation_align_corners", "spatial_merge_size")


def layout_helpers(visual: Any) -> ModuleType | None:
    """The modeling module whose layout helpers `visual`'s forward calls, when it takes their results precomputed;
    None for towers (or transformers releases) that do not."""
    if visual is None or not all(hasattr(visual, name) for name in TOWER_SETTINGS):
        return None
    try:
        from transformers.utils.generic import accepts_precomputed_kwargs  # noqa: F401  (strips the "image_" prefix)
    except ImportError:
        return None
    module = sys.modules.get(type(visual).__module__)
    code = getattr(inspect.unwrap(type(visual).forward), "__code__", None)
    if module is None or code is None:
        return None
    if not all(name in code.co_names and callable(getattr(module, name, None)) for name in HELPERS):
        return None
    return module


# Per-grid layouts kept per tower, emptied when they hold this many patches (about 64 bytes each): a corpus of
# repeated image sizes, or a video's, finds its grids there.
GRID_CACHE_PATCHES = 1 << 18
# False computes every batch's layout whole, as the helpers do (for comparison).
KEEP_GRID_LAYOUTS = True
_grids: weakref.WeakKeyDictionary[Any, BoundedCache] = weakref.WeakKeyDictionary()


def grid_layout(module: ModuleType, visual: Any, thw: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Interpolation indices, interpolation weights and rotary positions of one image or video of grid `thw`:
    the tower's helpers on a one-row grid, computed once per tower and grid. Read-only (the tensors are shared)."""
    cache = owner_cache(_grids, visual, GRID_CACHE_PATCHES, weight=lambda layout: len(layout[0]))
    return cache.get_or_make(thw, lambda: layout_of(module, visual, torch.tensor([thw])))


def layout_of(module: ModuleType, visual: Any, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Interpolation indices, interpolation weights and rotary positions of the grids `grid` [N, 3]: the same
    calls, with the same settings, as the tower's forward makes."""
    indices, weights = module.get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
    return indices, weights, module.get_vision_position_ids(grid, visual.spatial_merge_size)


def vision_layout(backbone: Any, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The vision tower's precomputed inputs for `batch`: (CPU tensors for the model's device, Python values).

    The values are the chunk runs of our grouped vision attention (`vision_levers.py`) and, under FlashAttention, the
    longest chunk. Both empty for a batch without media or a tower that computes its own layout."""
    visual = getattr(backbone, "visual", None)
    module = layout_helpers(visual) if any(key in batch for _, key in MODALITIES) else None
    if module is None or visual is None:  # (no helpers for a model without a tower either)
        return {}, {}
    on_device: dict[str, torch.Tensor] = {}
    on_host: dict[str, Any] = {}
    for modality, key in MODALITIES:
        grid = batch.get(key)
        if grid is None:
            continue
        if KEEP_GRID_LAYOUTS:
            # Joined by torch.cat, which copies even a single entry: the batch never holds the cache's own tensors.
            indices, weights, positions = (torch.cat(parts) for parts in zip(
                *(grid_layout(module, visual, tuple(thw)) for thw in grid.tolist())))
        else:
            indices, weights, positions = layout_of(module, visual, grid)
        cu_seqlens, max_seqlen = module.get_vision_attention_seqlens(grid, visual.config)
        layout = (indices, weights, positions, cu_seqlens)
        on_device.update(zip((f"{modality}_{part}" for part in LAYOUT_PARTS), layout))
        runs, longest = (f"{modality}_{part}" for part in HOST_LAYOUT_PARTS)
        on_host[runs] = chunk_runs(cu_seqlens)
        if max_seqlen is not None:  # FlashAttention's longest chunk, a Python int
            on_host[longest] = max_seqlen
    return on_device, on_host
