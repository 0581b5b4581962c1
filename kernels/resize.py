"""Separable bilinear resizing that matches PyTorch's ``F.interpolate`` exactly (numpy only).

``F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=...)`` on a float
tensor is a separable resampling: every output row/column is a weighted sum of a few input
rows/columns.  :func:`resize_weights` computes those taps and weights for one axis the way
ATen does for float32 inputs, and :func:`resize_bilinear` applies them along H and W.

* ``antialias=False`` (``upsample_bilinear2d``): source coordinate
  ``src = (dst + 0.5) * in / out - 0.5`` clamped below at 0; two taps ``floor(src)`` and the
  next one (clamped to the last pixel), weights ``1 - frac`` and ``frac``.
* ``antialias=True`` (``_upsample_bilinear2d_aa``): a triangle filter centred at
  ``(dst + 0.5) * scale`` whose support is 1 input pixel when upscaling and ``scale`` input
  pixels when downscaling (``scale = in / out``); the taps inside the support are evaluated at
  the pixel centres and normalised to sum to one for every output pixel.

The weights are computed with ATen's float32 arithmetic (including its fused multiply-add
and C++ double promotions), so they equal torch 2.13's bit for bit (to ~3e-8 for a
1-pixel input axis); outputs differ from ``F.interpolate`` only by summation order
(~1e-7 relative).

One torch quirk is deliberately *not* reproduced: torch 2.13's CPU antialias kernel, when
the output width is 1 (and the height changes), writes output row 0 into every row.  Here
each axis is resampled independently, which is what torch does for every other shape.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np

__all__ = ["resize_bilinear", "resize_weights"]


def positive_int(name: str, value) -> int:
    """An int >= 1 (bools and floats refused), or a TypeError/ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _plain_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``upsample_bilinear2d`` (align_corners=False) taps: two neighbours, linear weights.

    ATen computes the source coordinate ``scale * (dst + 0.5) - 0.5`` in float32 with a fused
    multiply-add (one rounding), clamps it below at 0, and splits it into ``floor`` and a
    fraction.  The product of two float32 values is exact in float64, so evaluating in float64
    and rounding once to float32 reproduces the fused result.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)  # area_pixel_compute_scale, float opmath
    dst = np.arange(out_size, dtype=f32) + f32(0.5)
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))  # area_pixel_compute_source_index (linear: clamp at 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    idx = np.stack([i0, i1], axis=1)
    w = np.stack([f32(1.0) - lam, lam], axis=1).astype(f32)
    return idx, w


def _antialias_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """ATen's ``_compute_indices_min_size_weights_aa`` for the bilinear (triangle) filter.

    The filter ``max(0, 1 - |x|)`` is centred at ``scale * (dst + 0.5)``; when downscaling
    (``scale = in / out > 1``) it is stretched by ``scale`` (support ``scale`` input pixels
    each side), when upscaling the support is 1.  Taps are the input pixels whose centres
    lie in the support, clipped to the image, and normalised to sum to one.  float32
    throughout, like the float kernel.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    if scale >= 1.0:
        support = scale  # interp_size / 2 * scale
        invscale = f32(1.0) / scale
    else:
        support = f32(1.0)  # interp_size / 2
        invscale = f32(1.0)
    taps = math.ceil(float(support)) * 2 + 1

    f64 = np.float64
    # C++ promotion as in ATen: ``i + 0.5`` and ``... + 0.5`` are double, the stored values float
    center = (f64(scale) * (np.arange(out_size, dtype=f64) + 0.5)).astype(f32)
    # static_cast<int64_t> truncates towards zero
    xmin = np.maximum(np.trunc((center - support).astype(f64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc((center + support).astype(f64) + 0.5).astype(np.int64), in_size)
    xsize = np.clip(xmax - xmin, 0, taps)

    j = np.arange(taps, dtype=np.int64)
    idx = xmin[:, None] + j[None, :]
    valid = j[None, :] < xsize[:, None]
    arg = (((idx.astype(f32) - center[:, None]).astype(f64) + 0.5) * f64(invscale)).astype(f32)
    w = np.where(valid, np.maximum(f32(1.0) - np.abs(arg), f32(0.0)), f32(0.0)).astype(f32)
    total = np.zeros(out_size, dtype=f32)
    for t in range(taps):  # sequential float32 sum over the (few) taps, as ATen does
        total += w[:, t]
    safe = np.where(total == 0, f32(1.0), total)
    w = np.where(total[:, None] != 0, w / safe[:, None], w).astype(f32)
    # unused taps get weight 0 and an in-range index
    idx = np.where(valid, idx, np.minimum(xmin, in_size - 1)[:, None])
    return idx.astype(np.int64), w


@functools.lru_cache(maxsize=256)
def _cached_weights(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    if antialias:
        idx, w = _antialias_weights(in_size, out_size)
    else:
        idx, w = _plain_weights(in_size, out_size)
    idx.setflags(write=False)
    w.setflags(write=False)
    return idx, w


def resize_weights(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Taps of PyTorch's bilinear (align_corners=False) resampling of one axis.

    Returns ``(indices, weights)``, both ``[out_size, taps]`` (int64 / float32, read-only,
    cached per ``(in_size, out_size, antialias)``): output ``i`` is
    ``sum_t weights[i, t] * x[indices[i, t]]``.  ``taps`` is 2 without antialias and
    ``2 * ceil(max(in/out, 1)) + 1`` with it; unused taps have weight 0 and a valid index.
    """
    in_size = positive_int("in_size", in_size)
    out_size = positive_int("out_size", out_size)
    if not isinstance(antialias, (bool, np.bool_)):
        raise TypeError(f"antialias must be a bool, got {type(antialias).__name__}")
    return _cached_weights(in_size, out_size, bool(antialias))


def _resize_axis(x: np.ndarray, axis: int, out_size: int, antialias: bool) -> np.ndarray:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    idx, w = resize_weights(in_size, out_size, antialias)
    # drop taps that are zero for every output (e.g. the padding column of an exact downscale)
    keep = np.any(w != 0, axis=0)
    if not keep.all():
        idx, w = idx[:, keep], w[:, keep]
    shape = [1] * x.ndim
    shape[axis] = out_size
    out = None
    for t in range(idx.shape[1]):  # a handful of taps; each one is a vectorised gather
        term = np.take(x, idx[:, t], axis=axis)
        term *= w[:, t].reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


def resize_bilinear(x: np.ndarray, out_hw, antialias: bool = False) -> np.ndarray:
    """Resize the last two axes of ``x`` (``[..., H, W]``) to ``out_hw`` like PyTorch.

    Same result as ``F.interpolate(x, out_hw, mode="bilinear", align_corners=False,
    antialias=antialias)`` (within float32 rounding), returned as float32.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions [..., H, W], got shape {x.shape}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty H x W, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
    try:
        oh, ow = out_hw
    except (TypeError, ValueError):
        raise TypeError(f"out_hw must be a pair (height, width), got {out_hw!r}") from None
    oh = positive_int("output height", oh)
    ow = positive_int("output width", ow)
    if not isinstance(antialias, (bool, np.bool_)):
        raise TypeError(f"antialias must be a bool, got {type(antialias).__name__}")
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    # Separable: do the pass that shrinks the data most first (less work for the second).
    if oh * w <= h * ow:
        y = _resize_axis(x, x.ndim - 2, oh, bool(antialias))
        y = _resize_axis(y, x.ndim - 1, ow, bool(antialias))
    else:
        y = _resize_axis(x, x.ndim - 1, ow, bool(antialias))
        y = _resize_axis(y, x.ndim - 2, oh, bool(antialias))
    if y is x:
        y = x.copy()
    return np.ascontiguousarray(y, dtype=np.float32)
