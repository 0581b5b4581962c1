"""Moving cached LLaMA keys to other positions (numpy): the incremental KV window needs it.

LLaMA rotates each key by its position (rotate-half RoPE, default rope type):
    k_p = k * cos(p * f) + rotate_half(k) * sin(p * f),   f_i = theta^(-2i / head_dim)
Rotations compose, so a key computed at position p is the key at p + delta after one more
rotation by delta. Values carry no position and are left as they are.
"""

from __future__ import annotations

import numpy as np


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def shift_keys(keys: np.ndarray, delta: int, theta: float) -> np.ndarray:
    """keys [..., T, head_dim] rotated as if they had been computed `delta` positions later."""
    if delta == 0:
        return keys
    hd = keys.shape[-1]
    ang = delta * inv_freq(hd, theta)  # [hd/2]
    cos = np.concatenate([np.cos(ang), np.cos(ang)]).astype(np.float32)
    sin = np.concatenate([np.sin(ang), np.sin(ang)]).astype(np.float32)
    half = hd // 2
    rotated = np.concatenate([-keys[..., half:], keys[..., :half]], axis=-1)
    return (keys * cos + rotated * sin).astype(keys.dtype)
