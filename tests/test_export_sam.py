"""export.sam_graphs: the four SAM2 ONNX graphs in ONNX Runtime == the PyTorch reference.

Each graph is exported once per module; inputs are fresh random each run (seed in every
failure message, replay with SAM_SEED=<seed>), at realistic scales: features come from the
reference image encoder on random frames, memories from the reference's encode_memory.
Run with -s to see the parity figures and ORT timings.
"""

from __future__ import annotations

import os
import secrets
import time

import numpy as np
import pytest
import torch

from export.onnx_utils import export_graph, ort_session, rel_error, run_ort
from export.sam_graphs import sam_constants, sam_specs
from reference.model import ImageFeatures
from reference.preprocess import sam_pixels

TOL = 1e-4
STABILITY_DELTA, STABILITY_THRESH = 0.05, 0.98  # GLUS's (build_sam2's) post-processing values


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def seed():
    return int(os.environ.get("SAM_SEED", secrets.randbits(31)))


@pytest.fixture(scope="module")
def model(tiny_ref):
    return tiny_ref.model


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    """name -> ORT session, each graph exported once."""
    out = tmp_path_factory.mktemp("sam_onnx")
    sessions = {}
    for spec in sam_specs(model):
        t = time.perf_counter()
        path = export_graph(spec, out / f"{spec.name}.onnx")
        print(f"\n[export] {spec.name}: {time.perf_counter() - t:.1f} s")
        sessions[spec.name] = ort_session(path, threads=2)
    return sessions


def to_map(tokens: torch.Tensor, size) -> np.ndarray:
    """(HW, B, C) tokens -> [B, C, h, w], written out here rather than borrowed from the model."""
    _hw, b, c = tokens.shape
    return tokens.detach().permute(1, 2, 0).reshape(b, c, *size).numpy()


def random_frame(gen: np.random.Generator, size: int) -> torch.Tensor:
    frame = gen.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return sam_pixels(frame, size)[None]


def timed(session, feeds, label: str, runs: int = 3) -> list[np.ndarray]:
    out = run_ort(session, feeds)  # first call warms up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run_ort(session, feeds)
        times.append(time.perf_counter() - t)
    print(f"[ort] {label}: {1000 * np.median(times):.2f} ms/call")
    return out


def check(got, want, label: str, seed: int, tol: float = TOL) -> float:
    err = rel_error(got, want)
    print(f"[parity] {label}: rel_error {err:.2e}")
    assert err <= tol, f"{label}: rel_error {err:.3e} > {tol} (SAM_SEED={seed})"
    return err


class Frames:
    """Reference features of random frames, and real memories made from them."""

    def __init__(self, model, seed: int, n: int = 8):
        self.model = model
        self.gen = np.random.default_rng(seed)
        self.tgen = torch.Generator().manual_seed(seed)
        s = model.sam_image_size
        with torch.no_grad():
            self.images = [random_frame(self.gen, s) for _ in range(n)]
            self.feats = [model.encode_image(im) for im in self.images]
            self.memories = []  # (features [1,64,h,w], pos) per frame: the no-memory path
            for f in self.feats:
                cond = model.condition(f, [])
                logits = model.decode(f, cond, self.seg(1)).low_res_logits
                self.memories.append(model.encode_memory(f, cond, logits))

    def seg(self, b: int) -> torch.Tensor:
        return torch.randn(b, self.model.sam.hidden_dim, generator=self.tgen)

    def size(self, level: int = -1):
        return self.feats[0].sizes[level]


@pytest.fixture(scope="module")
def frames(model, seed):
    return Frames(model, seed)


def batched(feats: ImageFeatures, b: int) -> ImageFeatures:
    """B expressions on one frame: the frame's levels shared by every row."""
    return ImageFeatures([t.expand(-1, b, -1) for t in feats.tokens], feats.pos, feats.sizes)


# ---------------------------------------------------------------------------------------------
# image encoder


def test_sam_image_matches_reference(model, graphs, frames, seed):
    image = random_frame(frames.gen, model.sam_image_size)
    with torch.no_grad():
        feats = model.encode_image(image)
    got = timed(graphs["sam_image"], {"image": image}, "sam_image")
    for level, name in enumerate(("high_res0", "high_res1", "image_feat")):
        want = to_map(feats.tokens[level], feats.sizes[level])
        check(got[level], want, f"sam_image {name}", seed)


def test_constants_are_the_models_position_encodings(model, frames):
    consts = sam_constants(model)
    f = frames.feats[1]
    np.testing.assert_allclose(consts["image_pos"], to_map(f.pos[-1], f.sizes[-1]), rtol=0, atol=1e-6)
    # The memory encoder's pos enc must not depend on its input: compare two different memories.
    for _features, pos in frames.memories[:2]:
        assert pos.shape[0] == 1
        np.testing.assert_allclose(consts["memory_pos"], pos.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(consts["image_pe"], model.sam.sam_prompt_encoder.get_dense_pe().detach().numpy())
    assert consts["no_mem_embed"].shape == (1, model.sam.hidden_dim)
    assert all(v.dtype == np.float32 for v in consts.values())


def test_no_memory_path_is_feature_plus_no_mem_embed(model, frames):
    no_mem = sam_constants(model)["no_mem_embed"]
    for f in frames.feats[:3]:
        with torch.no_grad():
            want = to_map(model.condition(f, []), f.sizes[-1])
        got = to_map(f.tokens[-1], f.sizes[-1]) + no_mem[:, :, None, None]
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# memory attention


@pytest.mark.parametrize("m", [1, 3, 7])
def test_memory_attention_matches_condition(model, graphs, frames, seed, m):
    f = frames.feats[0]
    memories = frames.memories[1 : 1 + m]
    with torch.no_grad():
        want = to_map(model.condition(f, memories), f.sizes[-1])
    feeds = {
        "image_feat": to_map(f.tokens[-1], f.sizes[-1]),
        "memory": torch.cat([mem for mem, _ in memories], 0).numpy(),
    }
    (got,) = timed(graphs["memory_attention"], feeds, f"memory_attention M={m}")
    check(got, want, f"memory_attention M={m}", seed)


# ---------------------------------------------------------------------------------------------
# mask decoder


def decoder_feeds(frame: ImageFeatures, conditioned: torch.Tensor, seg: torch.Tensor) -> dict:
    b = seg.shape[0]
    fb = batched(frame, b)
    return {
        "conditioned": to_map(conditioned, frame.sizes[-1]),
        "high_res0": to_map(fb.tokens[0], fb.sizes[0]),
        "high_res1": to_map(fb.tokens[1], fb.sizes[1]),
        "seg_embedding": seg.numpy(),
    }


@pytest.mark.parametrize("b", [1, 3])
def test_mask_decoder_matches_decode(model, graphs, frames, seed, b):
    f = frames.feats[2]
    with torch.no_grad():
        # Rows differ as expressions do: each row conditioned on different memories.
        rows = [model.condition(f, frames.memories[3 : 3 + k]) for k in range(b)]  # k=0: none
        conditioned = torch.cat(rows, 1)
        seg = frames.seg(b)
        want = model.decode(batched(f, b), conditioned, seg)
    got = timed(graphs["mask_decoder"], decoder_feeds(f, conditioned, seg), f"mask_decoder B={b}")
    check(got[0], want.low_res_logits.numpy(), f"mask_decoder B={b} logits", seed)
    check(got[1], want.iou.numpy(), f"mask_decoder B={b} iou", seed)
    check(got[2], want.object_score.numpy(), f"mask_decoder B={b} object_score", seed)
    assert got[0].shape == (b, 1, *[4 * n for n in f.sizes[-1]])


def stability(logits: np.ndarray) -> np.ndarray:
    """sam2's stability score of [B, h, w] logits, from its definition: area(> delta) / area(> -delta)."""
    flat = logits.reshape(logits.shape[0], -1)
    inner = (flat > STABILITY_DELTA).sum(-1).astype(np.float64)
    outer = (flat > -STABILITY_DELTA).sum(-1).astype(np.float64)
    return np.where(outer > 0, inner / np.maximum(outer, 1), 1.0)


def test_mask_decoder_stability_fallback(model, graphs, frames, seed):
    """Rows below the stability threshold must return the best multimask output (by IoU),
    rows above it the single-mask output. Scaling a row's high_res0 by 1000 makes its logits
    large and far from 0 (stable); unscaled rows of a random model are unstable."""
    dec = model.sam.sam_mask_decoder
    assert dec.dynamic_multimask_via_stability, "GLUS runs SAM2 with the stability fallback on"
    assert (dec.dynamic_multimask_stability_delta, dec.dynamic_multimask_stability_thresh) == (
        STABILITY_DELTA,
        STABILITY_THRESH,
    )
    f = frames.feats[3]
    scales = torch.tensor([1.0, 1000.0, 1.0, 1000.0])
    b = len(scales)
    with torch.no_grad():
        conditioned = model.condition(f, []).expand(-1, b, -1).contiguous()
        seg = frames.seg(b)
        fb = batched(f, b)
        hr0 = fb.tokens[0] * scales[None, :, None]
        fb = ImageFeatures([hr0, fb.tokens[1], fb.tokens[2]], fb.pos, fb.sizes)
        want = model.decode(fb, conditioned, seg)
        # All four outputs, before any selection: the independent expectation is built from these.
        pe = model.sam.sam_prompt_encoder
        h, w = f.sizes[-1]
        all_masks, all_iou, _, _ = dec.predict_masks(
            image_embeddings=torch.from_numpy(to_map(conditioned, (h, w))),
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=seg[:, None],
            dense_prompt_embeddings=pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w),
            repeat_image=False,
            high_res_features=[torch.from_numpy(to_map(t, s)) for t, s in zip(fb.tokens[:2], fb.sizes[:2])],
        )
    all_masks, all_iou = all_masks.numpy(), all_iou.numpy()
    stable = stability(all_masks[:, 0]) >= STABILITY_THRESH
    assert list(stable) == [False, True, False, True], f"constructed case failed: {stable} (SAM_SEED={seed})"
    best = 1 + all_iou[:, 1:].argmax(-1)
    pick = np.where(stable, 0, best)
    expect_logits = all_masks[np.arange(b), pick][:, None]
    expect_iou = all_iou[np.arange(b), pick][:, None]

    feeds = decoder_feeds(f, conditioned, seg)
    feeds["high_res0"] = to_map(hr0, f.sizes[0])
    got = run_ort(graphs["mask_decoder"], feeds)
    for i in range(b):  # per row: the scaled rows' logits are ~1000x larger
        check(got[0][i], expect_logits[i], f"stability row {i} ({'single' if stable[i] else 'fallback'})", seed)
        check(got[0][i], want.low_res_logits[i].numpy(), f"stability row {i} vs decode", seed)
        # The other choice would be detectably different.
        other = all_masks[i, best[i] if stable[i] else 0]
        assert rel_error(other, expect_logits[i, 0]) > 100 * TOL
    check(got[1], expect_iou, "stability iou", seed)


def test_mask_decoder_selection_on_many_random_inputs(model, graphs, frames, seed):
    """A batch of 8 random prompts at several feature scales: ORT and decode agree row by row,
    whichever output the stability rule picks."""
    f = frames.feats[4]
    scales = torch.tensor([1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3.0, 60.0])
    b = len(scales)
    with torch.no_grad():
        conditioned = model.condition(f, frames.memories[:2]).expand(-1, b, -1).contiguous()
        seg = frames.seg(b)
        fb = batched(f, b)
        hr0 = fb.tokens[0] * scales[None, :, None]
        fb = ImageFeatures([hr0, fb.tokens[1], fb.tokens[2]], fb.pos, fb.sizes)
        want = model.decode(fb, conditioned, seg)
    feeds = decoder_feeds(f, conditioned, seg)
    feeds["high_res0"] = to_map(hr0, f.sizes[0])
    got = run_ort(graphs["mask_decoder"], feeds)
    for i in range(b):
        check(got[0][i], want.low_res_logits[i].numpy(), f"random selection row {i}", seed)
    check(got[1], want.iou.numpy(), "random selection iou", seed)


# ---------------------------------------------------------------------------------------------
# memory encoder


@pytest.mark.parametrize("b", [1, 3])
def test_memory_encoder_matches_encode_memory(model, graphs, frames, seed, b):
    f = frames.feats[5]
    with torch.no_grad():
        rows = [model.condition(f, frames.memories[k : k + 2]) for k in range(b)]
        conditioned = torch.cat(rows, 1)
        logits = model.decode(batched(f, b), conditioned, frames.seg(b)).low_res_logits
        want, pos = model.encode_memory(batched(f, b), conditioned, logits)
    feeds = {"conditioned": to_map(conditioned, f.sizes[-1]), "low_res_logits": logits.numpy()}
    (got,) = timed(graphs["memory_encoder"], feeds, f"memory_encoder B={b}")
    check(got, want.numpy(), f"memory_encoder B={b}", seed)
    np.testing.assert_allclose(pos[:1].numpy(), sam_constants(model)["memory_pos"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# specs


def test_specs_names_and_dynamic_axes(model, graphs):
    specs = {s.name: s for s in sam_specs(model)}
    assert list(specs) == ["sam_image", "memory_attention", "mask_decoder", "memory_encoder"]
    io = {
        "sam_image": (["image"], ["high_res0", "high_res1", "image_feat"]),
        "memory_attention": (["image_feat", "memory"], ["conditioned"]),
        "mask_decoder": (
            ["conditioned", "high_res0", "high_res1", "seg_embedding"],
            ["low_res_logits", "iou", "object_score"],
        ),
        "memory_encoder": (["conditioned", "low_res_logits"], ["memory"]),
    }
    for name, (inputs, outputs) in io.items():
        sess = graphs[name]
        assert [i.name for i in sess.get_inputs()] == inputs
        assert [o.name for o in sess.get_outputs()] == outputs
    assert graphs["memory_attention"].get_inputs()[1].shape[0] == "M"
    for i in graphs["mask_decoder"].get_inputs():
        assert i.shape[0] == "B"
    with pytest.raises(ValueError, match=">= 2"):
        sam_specs(model, memories=1)


def test_export_leaves_reference_position_caches_real(model, graphs):
    """sam2 caches position encodings per shape; export must not leave traced tensors there."""
    for enc in (model.sam.image_encoder.neck.position_encoding, model.sam.memory_encoder.position_encoding):
        assert enc.cache, "caches are warmed by the graph constructors"
        for key, value in enc.cache.items():
            assert type(value) is torch.Tensor, f"{key}: {type(value).__name__} in the cache"
            assert torch.isfinite(value).all()


def test_non_float32_model_is_refused(model):
    import copy
    from types import SimpleNamespace

    from export.sam_graphs import MaskDecoderGraph

    half = SimpleNamespace(sam=copy.deepcopy(model.sam).to(torch.bfloat16))
    with pytest.raises(TypeError, match="float32"):
        MaskDecoderGraph(half)
