"""Frame preprocessing exactly as GLUS does it (RGB uint8 H x W x 3 in)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


from runtime.preprocess import check_frame  # noqa: E402  (one definition of a valid frame)


def clip_pixels(processor, frame: np.ndarray) -> torch.Tensor:
    """CLIPImageProcessor (PIL path, as GLUS ran it): shortest side 224 bicubic, centre crop."""
    out = processor.preprocess(check_frame(frame), return_tensors="np")["pixel_values"][0]
    return torch.from_numpy(np.ascontiguousarray(out))


def sam_pixels(frame: np.ndarray, size: int) -> torch.Tensor:
    """ToTensor → Resize((size, size), antialias) → ImageNet normalisation, as SAM2Transforms."""
    x = torch.from_numpy(np.ascontiguousarray(check_frame(frame))).permute(2, 0, 1).float() / 255.0
    x = F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def upsample_logits(low_res: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """SAM2Transforms.postprocess_masks with no hole filling: bilinear to the frame size."""
    return F.interpolate(low_res.float(), hw, mode="bilinear", align_corners=False)
