"""kernels.rope_attention: real-valued RoPE attention == sam2's complex one, and it exports.

Model weights use a fixed seed; test inputs are fresh random each run (the seed is in
every failure message so a failure can be replayed with RAT_SEED=<seed>).
"""

import importlib.resources
import os
import secrets

import hydra.utils
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sam2.modeling.memory_attention import MemoryAttention
from sam2.modeling.position_encoding import compute_axial_cis
from sam2.modeling.sam.transformer import RoPEAttention

from kernels.rope_attention import (
    MemoryAttentionForExport,
    RealMemoryAttention,
    RealRoPEAttention,
    axial_rope_tables,
    patch_memory_attention,
    slot_mask_to_key_bias,
)

GRID = 16  # image_size 256 / stride 16
HW = GRID * GRID
TOL = 1e-5


# ---------------------------------------------------------------- helpers


def build_sam2_memory_attention(
    config: str = "configs/sam2/sam2_hiera_t.yaml", grid: int = GRID, seed: int = 0
) -> MemoryAttention:
    """Small sam2 MemoryAttention (hiera-t: d_model 256, 4 layers, 1 head, mem dim 64)
    with RoPE tables for a grid x grid feature map, random weights from `seed`.

    Only the memory_attention sub-config is instantiated (cheaper than the whole model).
    All parameters get a small extra perturbation so LayerNorms are not identity.
    """
    cfg = OmegaConf.load(str(importlib.resources.files("sam2") / config))
    cfg.model.image_size = grid * 16
    ma_cfg = cfg.model.memory_attention
    ma_cfg.layer.self_attention.feat_sizes = [grid, grid]
    ma_cfg.layer.cross_attention.feat_sizes = [grid, grid]
    with torch.random.fork_rng():  # leave the global RNG alone for the tests' inputs
        torch.manual_seed(seed)
        model = hydra.utils.instantiate(ma_cfg, _recursive_=True)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


class Rng:
    """Fresh random inputs per run; the seed goes into failure messages."""

    def __init__(self, seed):
        self.seed_value = seed
        self.gen = torch.Generator().manual_seed(seed)


@pytest.fixture
def gen():
    return Rng(int(os.environ.get("RAT_SEED", secrets.randbits(31))))


def randn(rng, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=rng.gen)


def max_err(a, b):
    """Max abs difference relative to the output scale (floored at 1)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


@pytest.fixture(scope="module")
def sam2_ma():
    return build_sam2_memory_attention()


@pytest.fixture(scope="module")
def patched(sam2_ma):
    return patch_memory_attention(sam2_ma).eval()


def mem_inputs(gen, m, b=1, hw=HW):
    """(curr, curr_pos, memory, memory_pos), sequence-first like sam2."""
    return (
        randn(gen, hw, b, 256),
        randn(gen, hw, b, 256),
        randn(gen, m * hw, b, 64),
        randn(gen, m * hw, b, 64),
    )


def run_sam2(ma, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=0):
    with torch.no_grad():
        return ma(
            curr=[curr],
            curr_pos=[curr_pos],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )


# ---------------------------------------------------------------- tables


@pytest.mark.parametrize("end_x,end_y,dim", [(16, 16, 256), (8, 4, 32)])
def test_tables_equal_sam2_freqs_cis(end_x, end_y, dim):
    cos, sin = axial_rope_tables(dim, end_x, end_y)
    ref = compute_axial_cis(dim=dim, end_x=end_x, end_y=end_y)
    assert cos.shape == ref.shape == (end_x * end_y, dim // 2)
    torch.testing.assert_close(cos, ref.real, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, ref.imag, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- single attention


def make_pair(rope_k_repeat, feat_sizes=(GRID, GRID), dim=256, heads=1, kv_in_dim=None):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ref = RoPEAttention(
            dim,
            heads,
            kv_in_dim=kv_in_dim,
            rope_k_repeat=rope_k_repeat,
            feat_sizes=feat_sizes,
            dropout=0.1,
        ).eval()
    return ref, RealRoPEAttention.from_sam2(ref, feat_sizes).eval()


def call(mod, q, k, v, **kw):
    with torch.no_grad():
        return mod(q, k, v, **kw)


@pytest.mark.parametrize("heads", [1, 2])
def test_self_attention_matches_sam2(gen, heads):
    ref, real = make_pair(False, heads=heads)
    x = randn(gen, 2, HW, 256)
    out, want = call(real, x, x, x), call(ref, x, x, x)
    assert max_err(out, want) <= TOL, f"seed {gen.seed_value}"


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("m", range(1, 8))
def test_cross_attention_rope_k_repeat_matches_sam2(gen, m, heads):
    ref, real = make_pair(True, heads=heads, kv_in_dim=64)
    q = randn(gen, 2, HW, 256)
    k, v = randn(gen, 2, m * HW, 64), randn(gen, 2, m * HW, 64)
    out, want = call(real, q, k, v), call(ref, q, k, v)
    assert out.shape == want.shape == (2, HW, 256)
    assert max_err(out, want) <= TOL, f"m={m} seed {gen.seed_value}"


@pytest.mark.parametrize("n_ex", [4, HW])
def test_num_k_exclude_rope_matches_sam2(gen, n_ex):
    ref, real = make_pair(True, kv_in_dim=64)
    q = randn(gen, 1, HW, 256)
    k, v = randn(gen, 1, 3 * HW + n_ex, 64), randn(gen, 1, 3 * HW + n_ex, 64)
    want = call(ref, q, k, v, num_k_exclude_rope=n_ex)
    assert max_err(call(real, q, k, v, num_k_exclude_rope=n_ex), want) <= TOL
    if n_ex == HW:  # a whole grid of pointers can also be rotated: that must differ
        assert max_err(call(real, q, k, v), want) > 1e-4


def test_non_square_grid_and_query_length_fallback(gen):
    # (8, 4): checks end_x = feat_sizes[0] is the fast (column) axis, as in sam2.
    ref, real = make_pair(True, feat_sizes=(8, 4), dim=64, heads=2, kv_in_dim=32)
    q, k = randn(gen, 1, 32, 64), randn(gen, 1, 3 * 32, 32)
    assert max_err(call(real, q, k, k), call(ref, q, k, k)) <= TOL
    # query length != cached grid: both recompute for a square sqrt(Nq) grid.
    ref, real = make_pair(True, dim=64, heads=2, kv_in_dim=32)
    q, k = randn(gen, 1, 64, 64), randn(gen, 1, 2 * 64, 32)
    assert max_err(call(real, q, k, k), call(ref, q, k, k)) <= TOL


def test_half_precision_keeps_float32_tables(gen):
    ref, real = make_pair(True, dim=64, heads=2, kv_in_dim=32, feat_sizes=(8, 8))
    ref.half(), real.half()
    assert real.rope_cos.dtype == torch.float32 and real.q_proj.weight.dtype == torch.float16
    q, k = randn(gen, 1, 64, 64).half(), randn(gen, 1, 2 * 64, 32).half()
    out = call(real, q, k, k)
    assert out.dtype == torch.float16
    assert max_err(out.float(), call(ref, q, k, k).float()) <= 2e-3


def test_from_sam2_shares_weights_and_keeps_state_dict_keys():
    ref, real = make_pair(True, kv_in_dim=64)
    assert real.q_proj is ref.q_proj and real.out_proj is ref.out_proj
    assert set(real.state_dict()) == set(ref.state_dict())  # cos/sin are not persistent
    copied = RealRoPEAttention.from_sam2(ref, copy_weights=True)
    assert copied.k_proj is not ref.k_proj
    assert copied.feat_sizes == (GRID, GRID)  # inferred from freqs_cis


# ---------------------------------------------------------------- whole memory attention


def test_patch_replaces_all_rope_and_leaves_original(sam2_ma, patched):
    assert isinstance(patched, RealMemoryAttention) and isinstance(patched, MemoryAttention)
    for lp, lo in zip(patched.layers, sam2_ma.layers):
        assert isinstance(lp.self_attn, RealRoPEAttention)
        assert isinstance(lp.cross_attn_image, RealRoPEAttention)
        assert lp.cross_attn_image.rope_k_repeat and not lp.self_attn.rope_k_repeat
        assert isinstance(lo.self_attn, RoPEAttention)  # original untouched
        assert lp.self_attn.q_proj.weight is not lo.self_attn.q_proj.weight  # deep copy
    assert set(patched.state_dict()) == set(sam2_ma.state_dict())
    # a sam2 checkpoint loads strictly into the patched module
    patched.load_state_dict(sam2_ma.state_dict(), strict=True)


@pytest.mark.parametrize("m", [1, 3, 7])
def test_patched_memory_attention_matches_sam2(gen, sam2_ma, patched, m):
    x = mem_inputs(gen, m)
    want = run_sam2(sam2_ma, *x)
    out = run_sam2(patched, *x)
    assert out.shape == (HW, 1, 256)
    assert max_err(out, want) <= TOL, f"m={m} seed {gen.seed_value}"
    # the memory matters (the test would be vacuous otherwise)
    other = run_sam2(sam2_ma, x[0], x[1], randn(gen, m * HW, 1, 64), x[3])
    assert max_err(other, want) > 1e-2


def test_patched_with_obj_ptr_tokens_matches_sam2(gen, sam2_ma, patched):
    curr, curr_pos, memory, memory_pos = mem_inputs(gen, 2, b=2)
    ptr, ptr_pos = randn(gen, 8, 2, 64), randn(gen, 8, 2, 64)
    memory, memory_pos = torch.cat([memory, ptr]), torch.cat([memory_pos, ptr_pos])
    want = run_sam2(sam2_ma, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=8)
    out = run_sam2(patched, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=8)
    assert max_err(out, want) <= TOL, f"seed {gen.seed_value}"


# ---------------------------------------------------------------- fixed slots + mask


def fill_slots(gen, valid_mem, valid_pos, valid, b=1):
    """Scatter the valid memories into len(valid) slots; empty slots get large garbage."""
    s = len(valid)
    mem = randn(gen, s, HW, b, 64, scale=10.0)
    pos = randn(gen, s, HW, b, 64, scale=10.0)
    idx = [i for i, ok in enumerate(valid) if ok]
    mem[idx] = valid_mem.view(len(idx), HW, b, 64)
    pos[idx] = valid_pos.view(len(idx), HW, b, 64)
    return mem.flatten(0, 1), pos.flatten(0, 1)


@pytest.mark.parametrize("valid", [[1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1], [1] * 7])
def test_masked_slots_equal_variable_length(gen, patched, valid):
    k = sum(valid)
    curr, curr_pos, memory, memory_pos = mem_inputs(gen, k)
    want = run_sam2(patched, curr, curr_pos, memory, memory_pos)

    slot_mem, slot_pos = fill_slots(gen, memory, memory_pos, valid)
    wrapper = MemoryAttentionForExport(patched).eval()
    for mask in (torch.tensor(valid, dtype=torch.bool), torch.tensor(valid, dtype=torch.float32)):
        with torch.no_grad():
            out = wrapper(curr, curr_pos, slot_mem, slot_pos, mask)
        assert max_err(out, want) <= TOL, f"valid={valid} seed {gen.seed_value}"


def test_per_batch_masks(gen, patched):
    valid = [[1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 1, 1]]
    wrapper = MemoryAttentionForExport(patched).eval()
    curr, curr_pos = randn(gen, HW, 2, 256), randn(gen, HW, 2, 256)
    slots, wants = [], []
    for b, v in enumerate(valid):
        _, _, memory, memory_pos = mem_inputs(gen, sum(v))
        wants.append(run_sam2(patched, curr[:, b : b + 1], curr_pos[:, b : b + 1], memory, memory_pos))
        slots.append(fill_slots(gen, memory, memory_pos, v))
    slot_mem = torch.cat([s[0] for s in slots], dim=1)
    slot_pos = torch.cat([s[1] for s in slots], dim=1)
    with torch.no_grad():
        out = wrapper(curr, curr_pos, slot_mem, slot_pos, torch.tensor(valid, dtype=torch.bool))
    assert max_err(out, torch.cat(wants, dim=1)) <= TOL, f"seed {gen.seed_value}"


def test_zero_padding_without_mask_is_wrong(gen, patched):
    # Zero keys still get softmax weight exp(0 - max) > 0 and dilute the valid memories,
    # so padding to a fixed slot count is only correct with the mask.
    curr, curr_pos, memory, memory_pos = mem_inputs(gen, 2)
    want = run_sam2(patched, curr, curr_pos, memory, memory_pos)
    pad = torch.zeros(5 * HW, 1, 64)
    out = run_sam2(patched, curr, curr_pos, torch.cat([memory, pad]), torch.cat([memory_pos, pad]))
    assert max_err(out, want) > 1e-2


def test_slot_mask_to_key_bias_layout():
    bias = slot_mask_to_key_bias(torch.tensor([True, False, True]), 2)
    assert bias.shape == (1, 1, 1, 6)
    assert (bias[0, 0, 0, [0, 1, 4, 5]] == 0).all() and (bias[0, 0, 0, 2:4] < -1e30).all()
    assert slot_mask_to_key_bias(torch.ones(4, 3), 5).shape == (4, 1, 1, 15)
    with pytest.raises(TypeError):
        RealRoPEAttention(64, 1)(
            torch.zeros(1, 4, 64),
            torch.zeros(1, 4, 64),
            torch.zeros(1, 4, 64),
            attn_bias=torch.ones(1, 1, 1, 4, dtype=torch.bool),
        )


# ---------------------------------------------------------------- ONNX


def _export(model, args, path, dynamic_shapes=None):
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=True,
            opset_version=18,
            dynamic_shapes=dynamic_shapes,
            input_names=NAMES[: len(args)],
            output_names=["pix_feat_with_mem"],
        )
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    assert not any(t.data_type in complex_types for t in proto.graph.initializer)
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


NAMES = ["curr", "curr_pos", "memory", "memory_pos", "memory_mask"]


def test_onnx_export_dynamic_memory_count(gen, patched, tmp_path):
    wrapper = MemoryAttentionForExport(patched).eval()
    # Example sizes >= 2 so they are not specialised; memory length = M * HW.
    m_dim = torch.export.Dim("num_mem", min=1, max=7)
    b_dim = torch.export.Dim("batch", min=1, max=8)
    mem_shape = {0: HW * m_dim, 1: b_dim}
    sess = _export(
        wrapper,
        mem_inputs(gen, 3, b=2),
        tmp_path / "memory_attention.onnx",
        dynamic_shapes=({1: b_dim}, {1: b_dim}, mem_shape, mem_shape),
    )
    for m, b in [(1, 1), (4, 1), (7, 1), (2, 3)]:
        x = mem_inputs(gen, m, b)
        want = run_sam2(patched, *x).numpy()
        (got,) = sess.run(None, {n: t.numpy() for n, t in zip(NAMES, x)})
        assert got.shape == want.shape
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err <= 1e-4, f"m={m} b={b} err={err} seed {gen.seed_value}"


def test_onnx_export_masked_slots(gen, patched, tmp_path):
    wrapper = MemoryAttentionForExport(patched).eval()
    example = mem_inputs(gen, 7) + (torch.tensor([1, 1, 0, 1, 0, 0, 0], dtype=torch.bool),)
    sess = _export(wrapper, example, tmp_path / "memory_attention_masked.onnx")
    for valid in ([1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0, 1], [1] * 7):
        curr, curr_pos, memory, memory_pos = mem_inputs(gen, sum(valid))
        want = run_sam2(patched, curr, curr_pos, memory, memory_pos).numpy()  # variable length
        slot_mem, slot_pos = fill_slots(gen, memory, memory_pos, valid)
        feeds = [curr, curr_pos, slot_mem, slot_pos, torch.tensor(valid, dtype=torch.bool)]
        (got,) = sess.run(None, {n: t.numpy() for n, t in zip(NAMES, feeds)})
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err <= 1e-4, f"valid={valid} err={err} seed {gen.seed_value}"
