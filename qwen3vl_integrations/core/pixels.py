"""Image patches cut from the 8-bit pixels, and rescaled and normalised on the model's device instead of the host.

The image processor turns each image into patches of float32 values: for a 448x448 image, 6 MB written and read
several times over on the host (the temporal patch repeats every image twice), then copied to the GPU: about half
of an image's preprocessing, which bounds a GPU's images per second. With NORMALIZE_ON_DEVICE the processor only
cuts the patches, of the 8-bit pixels and with one temporal slice (an eighth of the bytes), and the model's device
rescales and normalises them with the processor's own normalisation (its `normalize`, with its fused mean and std),
then repeats the slice: the same float32 arithmetic on the same values, so the same pixel values.

The patches themselves are cut here too (`cut_patches`), from each RGB image's pixels in one copy: the processor's
own call converts the image once more, makes a channels-first copy, then a patch-ordered copy, through a few hundred
microseconds of keyword checks that hold the GIL, which the preprocessing worker threads share.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

NORMALIZE_ON_DEVICE = True
# Patches cut here from RGB images (`cut_patches`); False leaves every image to the processor's call (for comparison).
CUT_PATCHES = True
# Devices where it applies: on a CPU the device is the host, and the work would move from the preprocessing workers
# to the thread that runs the model.
DEVICE_TYPES = frozenset({"cuda"})
# The image processor's keywords that leave the 8-bit pixels as they are and cut each patch from one temporal slice
# (an image's patches hold the same frame `temporal_patch_size` times; the device repeats it).
RAW_IMAGE_KWARGS = {"do_rescale": False, "do_normalize": False, "temporal_patch_size": 1}


def normalizes_on_device(image_processor: Any, device: torch.device) -> bool:
    """Whether images for a model on `device` are sent as 8-bit patches and normalised there.

    Only for the Qwen2-VL image processor (Qwen3-VL's) of transformers' torchvision backend, the default: its
    rescale-and-normalise step is torch code, which runs on any device, and `normalize_pixels` knows its patch layout.
    Other processors keep the host path."""
    if not NORMALIZE_ON_DEVICE or device.type not in DEVICE_TYPES:
        return False
    return is_qwen2vl_torchvision(image_processor)


def is_qwen2vl_torchvision(image_processor: Any) -> bool:
    """Whether `image_processor` is the Qwen2-VL image processor (Qwen3-VL's) of transformers' torchvision backend,
    whose patch layout and normalisation this module reproduces."""
    try:
        from transformers.image_processing_backends import TorchvisionBackend
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    except ImportError:
        return False
    return isinstance(image_processor, Qwen2VLImageProcessor) and isinstance(image_processor, TorchvisionBackend)


def cut_patches(image_processor: Any, image: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The 8-bit patches of one temporal slice [N, C x P x P] and the grid [[1, H / P, W / P]] that the processor
    cuts from `image` with RAW_IMAGE_KWARGS and no resizing, or None where only the processor can: images that are
    not PIL RGB images, or that carry a transparent colour, which its RGB conversion paints white.

    The processor reorders the pixels into (block row, block column, row in block, column in block, channel, row
    in patch, column in patch), blocks being `merge_size` patches square; this is that order, as one NumPy copy
    (which runs without the GIL) from the image's rows of RGB pixels."""
    from PIL import Image

    if not CUT_PATCHES or not isinstance(image, Image.Image) or image.mode != "RGB" \
            or image.info.get("transparency") is not None:
        return None
    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    width, height = image.size
    if width % (patch * merge) or height % (patch * merge):
        return None  # the processor's error, not ours
    grid_h, grid_w = height // patch, width // patch
    rgb = np.asarray(image)  # [H, W, 3]
    blocks = rgb.reshape(grid_h // merge, merge, patch, grid_w // merge, merge, patch, 3)
    patches = blocks.transpose(0, 3, 1, 4, 6, 2, 5).copy()  # C order: a writable array torch can take as it is
    return (torch.from_numpy(patches).view(grid_h * grid_w, 3 * patch * patch),
            torch.tensor([[1, grid_h, grid_w]]))


# The processor's fused mean and std, per processor and device, made once. transformers keeps them in one cache of 10
# entries shared by every processor object in the process (each worker thread has its copies), and making them again
# on a GPU copies them there, a copy that waits for every queued batch.
_mean_std: weakref.WeakKeyDictionary[Any, dict[torch.device, tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary())


def _fused_mean_std(image_processor: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std the processor normalises with on `device`, the rescale factor folded in as it folds it."""
    per_device = _mean_std.setdefault(image_processor, {})
    if device not in per_device:
        def hashable(value: Any) -> Any:  # the processor's cache keys on these arguments
            return tuple(value) if isinstance(value, list) else value

        mean, std, _ = image_processor._fuse_mean_std_and_rescale_factor(
            do_normalize=image_processor.do_normalize, image_mean=hashable(image_processor.image_mean),
            image_std=hashable(image_processor.image_std), do_rescale=image_processor.do_rescale,
            rescale_factor=image_processor.rescale_factor, device=device)
        # Unfused (no rescale) they are Python numbers, which normalising would copy to the device each call.
        per_device[device] = (torch.as_tensor(mean, dtype=torch.float32, device=device),
                              torch.as_tensor(std, dtype=torch.float32, device=device))
    return per_device[device]


def normalize_pixels(image_processor: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """8-bit image patches of one temporal slice [N, C x P x P] (RAW_IMAGE_KWARGS) as the processor's float patches
    [N, C x T x P x P] (channels outermost): rescaled and normalised as the processor does it, on the tensor's
    device, then each slice repeated T times. Other dtypes are returned as they are."""
    if pixel_values.dtype != torch.uint8:
        return pixel_values
    patch, temporal = int(image_processor.patch_size), int(image_processor.temporal_patch_size)
    rows, width = pixel_values.shape
    channels = width // (patch * patch)
    # Channels in front, as in an image: the processor's per-channel mean and std broadcast over dim -3.
    images = pixel_values.view(rows, channels, patch, patch)
    # The steps of the processor's `rescale_and_normalize`, with its fused mean and std kept on the device.
    if image_processor.do_normalize:
        mean, std = _fused_mean_std(image_processor, images.device)
        normalized = image_processor.normalize(images.to(torch.float32), mean, std, inplace=True)
    elif image_processor.do_rescale:
        normalized = image_processor.rescale(images, image_processor.rescale_factor)
    else:
        normalized = images
    # The processor normalises each frame, then repeats it in its patches: repeating here gives the same values.
    return normalized.unsqueeze(2).expand(rows, channels, temporal, patch, patch).reshape(rows, -1)
