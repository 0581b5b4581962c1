"""GlusEngine against the PyTorch reference on the tiny checkpoint, and its error handling."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import reference
from runtime import BackendError, EngineDirError, GlusEngine, InputError, rules
from runtime.memory import MemoryBank

from .conftest import mask_iou, moving_square_video

EXPRS = ["The red square.", "the thing moving right"]


def assert_same_as_reference(ref_result, steps, masks):
    ious = [mask_iou(a, b) for a, b in zip(ref_result.masks, masks)]
    assert np.mean(np.array(ious) >= 0.999) >= 0.99, ious
    for r, s in zip(ref_result.frames, steps):
        assert r.frame == s.frame and r.next_token == s.next_token and r.is_seg == s.is_seg
        cos = float(
            r.seg_embedding @ s.seg_embedding / (np.linalg.norm(r.seg_embedding) * np.linalg.norm(s.seg_embedding))
        )
        assert cos >= 0.9999
        if r.is_seg:
            assert r.memories == s.memories


@pytest.fixture(scope="module")
def frames():
    return moving_square_video(9)


@pytest.fixture(scope="module")
def ref_results(tiny_ref, frames):
    return [reference.segment_video(tiny_ref, frames, e) for e in EXPRS]


def test_import_runtime_never_imports_torch():
    code = (
        "import sys, runtime, runtime.engine, runtime.stream, runtime.preprocess; "
        "from runtime import GlusEngine; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_offline_matches_reference_two_expressions(tiny_engine, frames, ref_results):
    results = tiny_engine.segment_video(frames, EXPRS)
    assert [r.expression for r in results] == EXPRS
    for ref, res in zip(ref_results, results):
        assert len(res.masks) == len(frames) and res.masks[0].shape == frames[0].shape[:2]
        assert_same_as_reference(ref, res.steps, res.masks)


def test_key_frame_mode_matches_reference(tiny_engine, tiny_ref, frames):
    ref = reference.segment_video(tiny_ref, frames, EXPRS[0], key_frame=4)
    res = tiny_engine.segment_video(frames, [EXPRS[0]], key_frames=[4])[0]
    assert [s.pass_name for s in res.steps] == [r.pass_name for r in ref.frames]
    assert_same_as_reference(ref, res.steps, res.masks)


def test_no_memory_variant_matches_reference(tiny_engine, tiny_ref, frames):
    ref = reference.segment_video(tiny_ref, frames, EXPRS[0], use_memory=False)
    res = tiny_engine.segment_video(frames, EXPRS[0], use_memory=False)[0]
    assert_same_as_reference(ref, res.steps, res.masks)


def test_stream_with_offline_context_gives_offline_masks(tiny_engine, frames, ref_results):
    ctx = [frames[i] for i in rules.context_frame_indices(len(frames))]
    stream = tiny_engine.stream(EXPRS, context_frames=ctx)
    per_expr = {e: [] for e in EXPRS}
    for f in frames:
        out = stream.push(f)
        for e in EXPRS:
            per_expr[e].append(out[e])
    for e, ref in zip(EXPRS, ref_results):
        ious = [mask_iou(a, b) for a, b in zip(ref.masks, per_expr[e])]
        assert min(ious) >= 0.999


def test_stream_causal_add_remove_and_flat_state(tiny_engine):
    frames = moving_square_video(40, 32, 40)
    stream = tiny_engine.stream(["the red square"], refresh_every=8, pool_size=6)
    sizes = []
    for k, f in enumerate(frames):
        if k == 5:
            stream.add("the moving thing")
        if k == 20:
            stream.remove("the red square")
        out = stream.push(f)
        assert set(out) == set(stream.expressions)
        assert all(m.shape == (32, 40) and m.dtype == bool for m in out.values())
        if k >= 25:
            sizes.append(stream.state_nbytes())
        assert len(stream.pool) <= 6
    for key in ("prefix_kv", "window", "memory"):
        assert all(s[key] == sizes[0][key] for s in sizes), f"stream {key} must not grow"
    per_frame = next(iter(stream.tracks.values())).window[0].nbytes
    assert all(s["pool"] <= 6 * per_frame for s in sizes)  # the pool is bounded, not growing
    assert stream.context_indices == sorted(stream.context_indices)
    assert max(stream.context_indices) > 20  # the context follows the stream


def test_stream_refreshes_its_context_as_the_stream_grows(tiny_engine, monkeypatch):
    """Frames 1-4, then each time the stream grew by half since the last refresh, and every refresh_every."""
    from runtime.stages import Stages

    calls, prefix = [], Stages.prefix
    monkeypatch.setattr(Stages, "prefix", lambda self, tokens: calls.append(len(tokens)) or prefix(self, tokens))
    for every, want in [(1000, [1, 2, 3, 4, 6, 9, 14, 21, 32]), (10, [1, 2, 3, 4, 6, 9, 10, 15, 20, 30])]:
        stream, seen = tiny_engine.stream(["the red square"], refresh_every=every), []
        for k, f in enumerate(moving_square_video(33, 32, 32)):
            calls.clear()
            stream.push(f)
            if calls:
                seen.append(k + 1)  # GLUS's rule on the frames so far (pool_size 16: every other one after 16)
                pool = list(range(k + 1)) if k < 16 else [i for i in range(k + 1) if i % 2 == 0]
                assert stream.context_indices == [pool[i] for i in rules.context_frame_indices(len(pool))]
        assert seen == want


def test_memory_bank_is_fixed_over_2000_frames():
    bank = MemoryBank((2, 3, 3))
    kept = {}
    rng = np.random.default_rng(0)
    for t in range(2000):
        keys, mem = bank.read(t)
        assert keys == [k for k in rules.memory_frame_indices(t) if k in kept]
        if mem is not None:
            for k, m in zip(keys, mem):
                np.testing.assert_array_equal(m, kept[k])
        x = rng.standard_normal((2, 3, 3)).astype(np.float32)
        bank.store(t, x)
        kept[t] = x
        assert len(bank) <= rules.NUM_MASKMEM and bank.slots.shape == (7, 2, 3, 3)


def test_kf_auto_picks_best_scored_frame(tiny_engine, frames):
    res = tiny_engine.segment_video(frames, EXPRS[0], key_frames="auto")[0]
    assert 0 <= res.key_frame < len(frames)
    assert len(res.masks) == len(frames)
    if res.key_frame > 0:
        assert res.steps[0].pass_name == "backward"


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
        "not a frame",
    ],
)
def test_bad_frames(tiny_engine, bad):
    with pytest.raises(InputError):
        tiny_engine.segment_video([bad], "the square")
    stream = tiny_engine.stream("the square")
    with pytest.raises(InputError):
        stream.push(bad)
    stream.push(moving_square_video(1)[0])  # still usable


def test_size_change_mid_stream(tiny_engine):
    stream = tiny_engine.stream("the square")
    stream.push(moving_square_video(1, 32, 32)[0])
    with pytest.raises(InputError, match="size changed"):
        stream.push(moving_square_video(1, 40, 32)[0])
    assert stream.push(moving_square_video(1, 32, 32)[0])["the square"].shape == (32, 32)


@pytest.mark.parametrize("expr", ["", "   ", ".", None, "word " * 3000])
def test_bad_expressions(tiny_engine, expr):
    with pytest.raises(InputError):
        tiny_engine.segment_video(moving_square_video(2), [expr])


def test_bad_key_frames(tiny_engine):
    with pytest.raises(InputError):
        tiny_engine.segment_video(moving_square_video(3), ["a"], key_frames=[5])
    with pytest.raises(InputError):
        tiny_engine.segment_video(moving_square_video(3), ["a"], key_frames=[1, 2])


def _copy(src, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(src, dst)
    return dst


def test_corrupt_engine_dir(tiny_engine_dir, tmp_path):
    dst = _copy(tiny_engine_dir, tmp_path)
    f = dst / "no_mem_embed.npy"
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(EngineDirError, match="hash"):
        GlusEngine.load(dst)


def test_missing_graph_and_manifest(tiny_engine_dir, tmp_path):
    dst = _copy(tiny_engine_dir, tmp_path)
    (dst / "mask_decoder.onnx").unlink()
    with pytest.raises(EngineDirError, match="mask_decoder"):
        GlusEngine.load(dst)
    (dst / "manifest.json").unlink()
    with pytest.raises(EngineDirError, match="manifest.json"):
        GlusEngine.load(dst)
    with pytest.raises(EngineDirError, match="not found"):
        GlusEngine.load(tmp_path / "nothing")


def test_schema_mismatch(tiny_engine_dir, tmp_path):
    dst = _copy(tiny_engine_dir, tmp_path)
    m = json.loads((dst / "manifest.json").read_text())
    m["schema"] = 999
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineDirError, match="schema"):
        GlusEngine.load(dst)


def test_unavailable_backend_or_device(tiny_engine_dir):
    with pytest.raises(BackendError):
        GlusEngine.load(tiny_engine_dir, device="cuda:0")
    with pytest.raises(BackendError):
        GlusEngine.load(tiny_engine_dir, backend="tensorrt")
    with pytest.raises(BackendError):
        GlusEngine.load(tiny_engine_dir, device="tpu")


def test_incremental_window_is_exact_until_it_slides(tiny_engine, frames):
    exact = tiny_engine.segment_video(frames, EXPRS[0])[0]
    inc = tiny_engine.segment_video(frames, EXPRS[0], kv_policy="incremental")[0]
    for a, b in zip(exact.steps[: rules.NUM_QUERY], inc.steps[: rules.NUM_QUERY]):
        cos = a.seg_embedding @ b.seg_embedding / (np.linalg.norm(a.seg_embedding) * np.linalg.norm(b.seg_embedding))
        assert cos >= 0.9999 and a.next_token == b.next_token
    assert len(inc.masks) == len(frames)


def test_incremental_stream_state_is_bounded(tiny_engine):
    stream = tiny_engine.stream(["the red square"], kv_policy="incremental", refresh_every=1000)
    sizes = []
    for k, f in enumerate(moving_square_video(14, 32, 32)):
        stream.push(f)
        if k >= rules.NUM_QUERY + 2:
            sizes.append(stream.state_nbytes()["track_kv"])
    assert max(sizes) <= min(sizes) * 1.05  # rounds differ by a token or two at most
    with pytest.raises(InputError):
        tiny_engine.stream(["a"], kv_policy="sometimes")


@pytest.mark.slow
def test_stream_state_is_flat_over_2000_frames(tiny_engine):
    """KV buffer, window, pool and memory bank sizes over a 2,000-frame stream (pytest -m slow)."""
    import resource

    stream = tiny_engine.stream(["the red square", "the moving thing"], pool_size=8)
    base = moving_square_video(40, 24, 32)
    sizes, rss = [], []
    for k in range(2000):
        stream.push(base[k % len(base)])
        if k >= 100 and k % 50 == 0:
            sizes.append(stream.state_nbytes())
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        assert all(len(tr.bank) <= rules.NUM_MASKMEM for tr in stream.tracks.values())
    for key in ("prefix_kv", "window", "memory"):
        assert len({s[key] for s in sizes}) == 1, key
    assert max(s["pool"] for s in sizes) <= 8 * next(iter(stream.tracks.values())).window[0].nbytes
    assert rss[-1] - rss[0] < 50_000  # KiB: no growth beyond allocator noise


def test_io_binding_gives_the_same_masks_and_keeps_the_prefix_bound(tiny_engine_dir, tiny_engine, frames):
    """I/O binding (on by default on CUDA) forced on the CPU: the prefix KV stays an OrtValue
    between calls, and every output equals the plain path's, exact and incremental."""
    import onnxruntime as ort

    from runtime.stages import Stages

    bound = GlusEngine.load(tiny_engine_dir, io_binding=True)
    assert bound.io_binding and not tiny_engine.io_binding  # CPU default: off
    bound_stages, plain = Stages.load(tiny_engine_dir, io_binding=True), Stages.load(tiny_engine_dir)
    prefix = bound_stages.prefix(bound_stages.clip_tokens(frames[:4]))
    assert isinstance(prefix.kv, ort.OrtValue)
    plain_prefix = plain.prefix(plain.clip_tokens(frames[:4]))
    assert prefix.nbytes == plain_prefix.kv.nbytes
    np.testing.assert_array_equal(prefix.kv.numpy(), plain_prefix.kv)
    for policy in ("exact", "incremental"):
        a = tiny_engine.segment_video(frames, EXPRS, kv_policy=policy)
        b = bound.segment_video(frames, EXPRS, kv_policy=policy)
        for ra, rb in zip(a, b):
            assert all(np.array_equal(x, y) for x, y in zip(ra.masks, rb.masks))
            for sa, sb in zip(ra.steps, rb.steps):
                np.testing.assert_allclose(sa.seg_embedding, sb.seg_embedding, rtol=1e-6, atol=1e-6)
    stream = bound.stream(EXPRS[:1])
    for f in frames[:5]:
        stream.push(f)
    assert stream.state_nbytes()["prefix_kv"] > 0
