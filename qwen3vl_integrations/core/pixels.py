"""Image pixels rescaled and normalised on the model's device instead of the host.

The image processor turns each image into patches of float32 values: for a 448x448 image, 6 MB written and read
several times over on the host (the temporal patch repeats every image twice), then copied to the GPU: about half
of an image's preprocessing, which bounds a GPU's images per second. With NORMALIZE_ON_DEVICE the processor only
cuts the patches, of the 8-bit pixels and with one temporal slice (an eighth of the bytes), and the model's device
rescales and normalises them with the processor's own method, then repeats the slice: the same float32 arithmetic on
the same values, so the same pixel values.
"""
from __future__ import annotations

from typing import Any

import torch

NORMALIZE_ON_DEVICE = True
# Devices where it applies: on a CPU the device is the host, and the work would move from the preprocessing workers
# to the thread that runs the model.
DEVICE_TYPES = frozenset({"cuda"})
# The image processor's keywords that leave the 8-bit pixels as they are and cut each patch from one temporal slice
# (an image's patches hold the same frame `temporal_patch_size` times; the device repeats it).
RAW_IMAGE_KWARGS = {"do_rescale": False, "do_normalize": False, "temporal_patch_size": 1}


def normalizes_on_device(image_processor: Any, device: torch.device) -> bool:
    """Whether images for a model on `device` are sent as 8-bit patches and normalised there.

    Only for processors whose rescale-and-normalise step is torch code (transformers' torchvision backend, the
    default), which runs on any device; others keep the host path."""
    if not NORMALIZE_ON_DEVICE or device.type not in DEVICE_TYPES:
        return False
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:
        return False
    return isinstance(image_processor, TorchvisionBackend) and all(
        hasattr(image_processor, name) for name in ("patch_size", "temporal_patch_size", "rescale_and_normalize"))


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

    def hashable(value: Any) -> Any:  # the processor caches its fused mean and std by these arguments
        return tuple(value) if isinstance(value, list) else value

    normalized = image_processor.rescale_and_normalize(
        images, image_processor.do_rescale, image_processor.rescale_factor, image_processor.do_normalize,
        hashable(image_processor.image_mean), hashable(image_processor.image_std))
    # The processor repeats each frame before normalising; normalising first and repeating gives the same values.
    return normalized.unsqueeze(2).expand(rows, channels, temporal, patch, patch).reshape(rows, -1)
