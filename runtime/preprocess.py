"""Frame pre/post-processing for the runtime, without torch (numpy + PIL only).

Each function reproduces one step of ``reference.preprocess`` (what GLUS ran):

* :func:`clip_preprocess` -- ``CLIPImageProcessorPil``: shortest side to ``size`` with PIL
  (bicubic), centre crop, rescale by 1/255, normalise; ``[3, crop_h, crop_w]`` float32.
* :func:`sam_preprocess` -- SAM2Transforms: ``/255``, antialiased bilinear resize to
  ``size x size`` (aspect ignored), ImageNet normalisation; ``[3, size, size]`` float32.
* :func:`upsample_logits` / :func:`logits_to_masks` -- bilinear (no antialias) upsampling of
  SAM's low-resolution mask logits to the frame size, and ``> 0``.

Frames are RGB ``uint8`` arrays ``H x W x 3`` (see :func:`check_frame`).
"""

from __future__ import annotations

import numbers
import operator

import numpy as np
from PIL import Image

from kernels.resize import positive_int, resize_bilinear

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_frame",
    "clip_preprocess",
    "clip_resize_shape",
    "logits_to_masks",
    "sam_preprocess",
    "upsample_logits",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_FILTERS = {
    int(Image.Resampling.NEAREST),
    int(Image.Resampling.BOX),
    int(Image.Resampling.BILINEAR),
    int(Image.Resampling.HAMMING),
    int(Image.Resampling.BICUBIC),
    int(Image.Resampling.LANCZOS),
}


# --------------------------------------------------------------------------- validation


def check_frame(frame) -> np.ndarray:
    """Return ``frame`` if it is an RGB ``uint8`` ``H x W x 3`` array with H, W >= 1.

    Raises TypeError for a non-array and ValueError for a wrong dtype, shape or an empty
    frame (the same classes as ``reference.preprocess.check_frame``).
    """
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8 RGB, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be H x W x 3 (RGB), got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"a frame must not be empty, got shape {frame.shape}")
    return frame


def _hw(name: str, value) -> tuple[int, int]:
    """An int ``n`` (meaning n x n) or a pair ``(height, width)`` of positive ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
        return positive_int(f"{name} height", value[0]), positive_int(f"{name} width", value[1])
    v = positive_int(name, value)
    return v, v


def _channel_stats(name: str, value, nonzero: bool = False) -> np.ndarray:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}") from None
    if arr.shape != (3,):
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if nonzero and np.any(arr == 0):
        raise ValueError(f"{name} must not contain 0, got {value!r}")
    return arr.astype(np.float32)


def _resample(value) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"resample must be a PIL resampling filter, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"resample must be a PIL resampling filter, got {value!r}") from None
    if v not in _PIL_FILTERS:
        raise ValueError(f"resample must be a PIL resampling filter {sorted(_PIL_FILTERS)}, got {v}")
    return v


# --------------------------------------------------------------------------- CLIP


def clip_resize_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) transformers resizes to for ``{"shortest_edge": size}``.

    The short side becomes ``size``; the long side is ``int(size * long / short)`` --
    truncated, not rounded, as ``get_resize_output_image_size`` does (square frames: both
    sides ``size``).
    """
    height = positive_int("height", height)
    width = positive_int("width", width)
    size = positive_int("size", size)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _centre_crop(img: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """transformers' ``center_crop`` on an ``H x W x C`` array (zero padding if too small).

    Offsets are ``(H - crop) // 2`` (floor); where the image is smaller than the crop it is
    placed at ``ceil((crop - H) / 2)`` in a zero canvas.
    """
    h, w = img.shape[:2]
    top = (h - crop_h) // 2
    left = (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return img[top : top + crop_h, left : left + crop_w]
    out = np.zeros((crop_h, crop_w) + img.shape[2:], dtype=img.dtype)
    # source window (inside the image) and destination offset (inside the canvas)
    src_top, dst_top = max(top, 0), max(-top, 0)
    src_left, dst_left = max(left, 0), max(-left, 0)
    n_h = min(h - src_top, crop_h - dst_top)
    n_w = min(w - src_left, crop_w - dst_left)
    out[dst_top : dst_top + n_h, dst_left : dst_left + n_w] = img[src_top : src_top + n_h, src_left : src_left + n_w]
    return out


def clip_preprocess(
    frame: np.ndarray,
    size: int = 224,
    crop=224,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    resample=Image.BICUBIC,
    rescale_factor: float = 1 / 255,
) -> np.ndarray:
    """CLIP vision input for one frame: ``[3, crop_h, crop_w]`` float32.

    Same as ``CLIPImageProcessorPil`` with ``size={"shortest_edge": size}``,
    ``crop_size=crop`` (an int or a ``(height, width)`` pair), ``image_mean=mean``,
    ``image_std=std``, ``resample`` (a PIL filter) and ``rescale_factor``: PIL resize of the
    uint8 frame, centre crop, ``x * rescale_factor`` (in float64, stored as float32), then
    ``(x - mean) / std`` in float32.

    (transformers guesses the channel axis and reads frames with 1, 3 or 4 rows as
    channels-first; here a frame is always ``H x W x 3``.)
    """
    frame = check_frame(frame)
    size = positive_int("size", size)
    crop_h, crop_w = _hw("crop", crop)
    mean32 = _channel_stats("mean", mean)
    std32 = _channel_stats("std", std, nonzero=True)
    resample = _resample(resample)
    if not isinstance(rescale_factor, numbers.Real) or isinstance(rescale_factor, bool):
        raise TypeError(f"rescale_factor must be a number, got {type(rescale_factor).__name__}")
    if not np.isfinite(rescale_factor) or rescale_factor <= 0:
        raise ValueError(f"rescale_factor must be finite and > 0, got {rescale_factor}")

    h, w = frame.shape[:2]
    oh, ow = clip_resize_shape(h, w, size)
    img = Image.fromarray(np.ascontiguousarray(frame))
    resized = np.asarray(img.resize((ow, oh), resample=resample))  # PIL takes (width, height)
    cropped = _centre_crop(resized, crop_h, crop_w)
    x = (cropped.astype(np.float64) * rescale_factor).astype(np.float32)
    x = (x - mean32) / std32
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


# --------------------------------------------------------------------------- SAM


def sam_preprocess(frame: np.ndarray, size: int) -> np.ndarray:
    """SAM2 image-encoder input for one frame: ``[3, size, size]`` float32.

    ``frame / 255`` resized to ``size x size`` (aspect ratio ignored) with PyTorch's
    antialiased bilinear filter (align_corners=False), then ``(x - mean) / std`` with the
    ImageNet statistics.  (The 1/255 is applied after the resize; resizing is linear, so
    only float rounding differs, ~1e-7.)
    """
    frame = check_frame(frame)
    size = positive_int("size", size)
    x = np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32)
    y = resize_bilinear(x, (size, size), antialias=True)
    y /= np.float32(255.0)
    y -= np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    y /= np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return y


# --------------------------------------------------------------------------- masks


def upsample_logits(logits, hw) -> np.ndarray:
    """Bilinear (align_corners=False, no antialias) upsampling of mask logits to ``hw``.

    ``logits`` is ``[B, C, h, w]`` (SAM gives ``[B, 1, h, w]``) or ``[h, w]``, any float
    dtype; the result has the same rank with the last two axes ``hw = (H, W)``, float32.
    """
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits must be a numpy array, got {type(logits).__name__}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"logits must be a float array, got dtype {logits.dtype}")
    if logits.ndim not in (2, 4):
        raise ValueError(f"logits must be [B, 1, h, w] or [h, w], got shape {logits.shape}")
    if 0 in logits.shape:
        raise ValueError(f"logits must not be empty, got shape {logits.shape}")
    out_hw = _hw("hw", hw) if isinstance(hw, (tuple, list)) else None
    if out_hw is None:
        raise TypeError(f"hw must be a (height, width) pair, got {hw!r}")
    return resize_bilinear(logits.astype(np.float32, copy=False), out_hw, antialias=False)


def logits_to_masks(logits, hw) -> np.ndarray:
    """Boolean masks at the frame size: ``upsample_logits(logits, hw) > 0``."""
    return upsample_logits(logits, hw) > 0
