"""runtime.preprocess / kernels.resize (torch-free) against torch and transformers themselves.

Inputs are fresh random each run; the seed is in every failure message, and a run can be
replayed with PP_SEED=<seed> (hypothesis prints its own falsifying examples).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from kernels.resize import resize_bilinear, resize_weights
from reference.preprocess import clip_pixels, sam_pixels
from reference.preprocess import upsample_logits as ref_upsample_logits
from runtime.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    check_frame,
    clip_preprocess,
    clip_resize_shape,
    logits_to_masks,
    sam_preprocess,
    upsample_logits,
)

REPO = Path(__file__).resolve().parents[1]
SIZES = st.integers(1, 300)


class Rng:
    """A numpy Generator that remembers its seed (for failure messages)."""

    def __init__(self, seed: int):
        self.seed_value = seed
        self._gen = np.random.default_rng(seed)

    def __getattr__(self, name):
        return getattr(self._gen, name)


@pytest.fixture
def rng():
    return Rng(int(os.environ.get("PP_SEED", secrets.randbits(31))))


def frame_of(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def torch_resize(x: np.ndarray, out_hw, antialias: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    return F.interpolate(t, tuple(out_hw), mode="bilinear", align_corners=False, antialias=antialias)[0].numpy()


def dense(idx: np.ndarray, w: np.ndarray, in_size: int) -> np.ndarray:
    m = np.zeros((idx.shape[0], in_size), np.float64)
    for t in range(idx.shape[1]):
        np.add.at(m, (np.arange(idx.shape[0]), idx[:, t]), w[:, t])
    return m


# --------------------------------------------------------------------------- kernels.resize


@settings(max_examples=60, deadline=None)
@given(in_size=SIZES, out_size=SIZES, antialias=st.booleans(), axis=st.sampled_from([-2, -1]))
@example(in_size=300, out_size=1, antialias=True, axis=-1)
@example(in_size=1, out_size=300, antialias=True, axis=-2)
@example(in_size=300, out_size=7, antialias=False, axis=-1)
def test_resize_weights_are_torchs(in_size, out_size, antialias, axis):
    """The taps, as a dense [out, in] matrix, equal torch's response to one-hot inputs."""
    idx, w = resize_weights(in_size, out_size, antialias)
    assert idx.shape == w.shape and idx.shape[0] == out_size
    assert w.dtype == np.float32 and np.issubdtype(idx.dtype, np.integer)
    assert idx.min() >= 0 and idx.max() < in_size
    # channel c holds the one-hot row/column c; the other axis has 2 pixels, kept as is
    eye = torch.eye(in_size)
    if axis == -2:
        probe = eye[None, :, :, None].expand(1, in_size, in_size, 2).contiguous()
        got = F.interpolate(probe, (out_size, 2), mode="bilinear", align_corners=False, antialias=antialias)
        want = got[0, :, :, 0].numpy().T
    else:
        probe = eye[None, :, None, :].expand(1, in_size, 2, in_size).contiguous()
        got = F.interpolate(probe, (2, out_size), mode="bilinear", align_corners=False, antialias=antialias)
        want = got[0, :, 0, :].numpy().T
    assert np.abs(dense(idx, w, in_size) - want).max() <= 1e-6
    np.testing.assert_allclose(w.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)


def test_resize_weights_cached_readonly_and_tap_counts():
    a = resize_weights(1920, 1024, True)
    assert resize_weights(1920, 1024, True) is a
    assert resize_weights(1920, 1024, False) is not a
    idx, w = a
    assert not idx.flags.writeable and not w.flags.writeable
    assert w.shape == (1024, 2 * 2 + 1)  # support 1920/1024 = 1.875 -> ceil 2 each side
    assert resize_weights(256, 1080, False)[1].shape == (1080, 2)
    assert resize_weights(256, 1080, True)[1].shape == (1080, 3)


@settings(max_examples=80, deadline=None)
@given(h=SIZES, w=SIZES, oh=SIZES, ow=SIZES, antialias=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(h=300, w=300, oh=1, ow=1, antialias=True, seed=0)
@example(h=1, w=1, oh=300, ow=300, antialias=False, seed=0)
@example(h=7, w=300, oh=300, ow=7, antialias=True, seed=0)
@example(h=120, w=80, oh=37, ow=1, antialias=True, seed=0)
def test_resize_bilinear_matches_torch(h, w, oh, ow, antialias, seed):
    x = np.random.default_rng(seed).standard_normal((2, h, w)).astype(np.float32)
    got = resize_bilinear(x, (oh, ow), antialias)
    if antialias and ow == 1:
        # torch 2.13's CPU antialias kernel copies output row 0 to every row when the output
        # width is 1 (a torch quirk); resampling the transposed image gives torch's own
        # separable filter without it.
        want = torch_resize(x.transpose(0, 2, 1), (ow, oh), True).transpose(0, 2, 1)
    else:
        want = torch_resize(x, (oh, ow), antialias)
    assert got.shape == (2, oh, ow) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5


def test_resize_bilinear_leading_dims_and_2d(rng):
    x = rng.random((2, 3, 41, 67), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(x), (90, 20), mode="bilinear", antialias=True).numpy()
    got = resize_bilinear(x, (90, 20), True)
    assert np.abs(got - want).max() <= 1e-5, f"seed {rng.seed_value}"
    got2 = resize_bilinear(x[0, 0], (90, 20), True)
    assert got2.shape == (90, 20) and np.abs(got2 - want[0, 0]).max() <= 1e-5, f"seed {rng.seed_value}"
    same = resize_bilinear(x, (41, 67), False)
    assert same is not x and np.array_equal(same, x)


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda: resize_weights(0, 5, True), ValueError),
        (lambda: resize_weights(5, -1, False), ValueError),
        (lambda: resize_weights(5.0, 5, False), TypeError),
        (lambda: resize_weights(5, 5, "yes"), TypeError),
        (lambda: resize_bilinear([[1.0]], (2, 2)), TypeError),
        (lambda: resize_bilinear(np.zeros(5, np.float32), (2, 2)), ValueError),
        (lambda: resize_bilinear(np.zeros((0, 5), np.float32), (2, 2)), ValueError),
        (lambda: resize_bilinear(np.zeros((5, 5), np.float32), (2, 0)), ValueError),
        (lambda: resize_bilinear(np.zeros((5, 5), np.float32), 7), TypeError),
        (lambda: resize_bilinear(np.zeros((5, 5), np.complex64), (2, 2)), TypeError),
    ],
)
def test_resize_errors(call, exc):
    with pytest.raises(exc):
        call()


# --------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil()


# transformers guesses the channel axis: frames with 1, 3 or 4 rows would be read as
# channels-first by the reference, so heights here avoid those.
@pytest.mark.parametrize(
    "hw",
    [(224, 224), (10, 300), (300, 10), (480, 640), (640, 360), (1080, 1920), (223, 225), (5, 7), (225, 333)],
)
def test_clip_preprocess_matches_transformers(clip_processor, rng, hw):
    frame = frame_of(rng, *hw)
    want = clip_pixels(clip_processor, frame).numpy()
    got = clip_preprocess(frame)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6, f"{hw} seed {rng.seed_value}"


@pytest.mark.parametrize(
    "size, crop, resample",
    [(336, 336, Image.BICUBIC), (100, (224, 150), Image.BILINEAR), (224, (101, 57), Image.LANCZOS)],
)
def test_clip_preprocess_parameters_match_transformers(rng, size, crop, resample):
    from transformers import CLIPImageProcessorPil

    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    proc = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": ch, "width": cw},
        resample=resample,
        image_mean=list(mean),
        image_std=list(std),
    )
    for hw in [(480, 640), (641, 480), (17, 301)]:
        frame = frame_of(rng, *hw)
        want = clip_pixels(proc, frame).numpy()
        got = clip_preprocess(frame, size=size, crop=crop, mean=mean, std=std, resample=resample)
        assert got.shape == (3, ch, cw) == want.shape
        assert np.abs(got - want).max() <= 1e-6, f"{size} {crop} {hw} seed {rng.seed_value}"


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), size=st.integers(1, 1000))
def test_clip_resize_shape_is_transformers(h, w, size):
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (3, h, w), (0, 0, 0))
    want = get_resize_output_image_size(dummy, size, default_to_square=False, input_data_format=ChannelDimension.FIRST)
    assert clip_resize_shape(h, w, size) == tuple(want)


def test_clip_defaults_are_clips():
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    assert CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) and CLIP_STD == tuple(OPENAI_CLIP_STD)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"size": 0}, ValueError),
        ({"size": 22.4}, TypeError),
        ({"crop": (224,)}, ValueError),
        ({"mean": (0.5, 0.5)}, ValueError),
        ({"std": (0.2, 0.0, 0.2)}, ValueError),
        ({"resample": 99}, ValueError),
        ({"resample": "bicubic"}, TypeError),
        ({"rescale_factor": 0}, ValueError),
    ],
)
def test_clip_preprocess_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        clip_preprocess(np.zeros((8, 8, 3), np.uint8), **kwargs)


# --------------------------------------------------------------------------- SAM


@pytest.mark.parametrize(
    "hw, size", [((1080, 1920), 256), ((1080, 1920), 1024), ((40, 60), 256), ((256, 256), 256), ((7, 300), 64)]
)
def test_sam_preprocess_matches_reference(rng, hw, size):
    frame = frame_of(rng, *hw)
    want = sam_pixels(frame, size).numpy()
    got = sam_preprocess(frame, size)
    assert got.shape == (3, size, size) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5, f"{hw}->{size} seed {rng.seed_value}"


# --------------------------------------------------------------------------- logits


@pytest.mark.parametrize(
    "shape, hw, dtype",
    [
        ((2, 1, 256, 256), (1080, 1920), np.float32),
        ((1, 1, 256, 256), (480, 640), np.float16),
        ((256, 256), (720, 1280), np.float32),
        ((1, 3, 64, 48), (100, 37), np.float64),
    ],
)
def test_upsample_logits_and_masks_match_reference(rng, shape, hw, dtype):
    logits = (rng.standard_normal(shape) * 8).astype(dtype)
    t = torch.from_numpy(logits.astype(np.float32) if dtype == np.float16 else logits)
    t4 = t if t.ndim == 4 else t[None, None]
    want = ref_upsample_logits(t4, hw).numpy()
    want = want if logits.ndim == 4 else want[0, 0]

    up = upsample_logits(logits, hw)
    assert up.shape == want.shape and up.dtype == np.float32
    assert np.abs(up - want).max() <= 1e-5, f"seed {rng.seed_value}"

    masks = logits_to_masks(logits, hw)
    ref_masks = want > 0
    assert masks.dtype == np.bool_ and masks.shape == ref_masks.shape
    agree = masks == ref_masks
    assert agree.mean() >= 0.9999, f"seed {rng.seed_value}"
    assert np.all(np.abs(want[~agree]) <= 1e-6), f"disagreement away from 0, seed {rng.seed_value}"


@pytest.mark.parametrize(
    "logits, hw, exc",
    [
        (np.zeros((1, 1, 4, 4), np.int32), (8, 8), TypeError),
        (np.zeros((1, 4, 4), np.float32), (8, 8), ValueError),
        (np.zeros((1, 1, 0, 4), np.float32), (8, 8), ValueError),
        (np.zeros((4, 4), np.float32), 8, TypeError),
        (np.zeros((4, 4), np.float32), (8, 0), ValueError),
        ([[0.0]], (8, 8), TypeError),
    ],
)
def test_upsample_logits_errors(logits, hw, exc):
    with pytest.raises(exc):
        upsample_logits(logits, hw)


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize(
    "frame, exc, words",
    [
        (np.zeros((8, 8, 3), np.float32), ValueError, "uint8"),
        (np.zeros((8, 8), np.uint8), ValueError, "H x W x 3"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, "H x W x 3"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
        (np.zeros((8, 0, 3), np.uint8), ValueError, "empty"),
        ([[[0, 0, 0]]], TypeError, "numpy array"),
    ],
)
def test_bad_frames(frame, exc, words):
    for fn in (check_frame, clip_preprocess, lambda f: sam_preprocess(f, 32)):
        with pytest.raises(exc, match=words):
            fn(frame)


def test_runtime_imports_without_torch():
    code = (
        "import sys\n"
        "import runtime.preprocess, kernels.resize\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, check=False, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
