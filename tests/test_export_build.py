"""python -m export.build: the engine directory, its manifest, reuse, and bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import reference
from export import build as build_mod
from export.build import BuildError, build, main
from runtime import EngineDirError, GlusEngine, rules
from runtime.manifest import (
    REQUIRED_ARRAYS,
    REQUIRED_GRAPHS,
    read_manifest,
    sha256_file,
)

from .conftest import moving_square_video


def test_int8_manifest(tiny_int8_engine_dir, tiny_ref):
    m = read_manifest(tiny_int8_engine_dir)
    d = m.data
    assert d["precision"] == "int8" and d["schema"] == 1
    assert set(REQUIRED_GRAPHS) <= set(d["graphs"]) and set(REQUIRED_ARRAYS) <= set(d["arrays"])
    for name, g in d["graphs"].items():
        assert g["sha256"] == sha256_file(tiny_int8_engine_dir / g["file"])
        assert g["inputs"] and g["outputs"]
        if name not in ("llm", "sam_image"):
            assert g["precision"] == "fp32" and d["parity"][name]["max_rel_error"] <= 1e-4
    sam = d["graphs"]["sam_image"]
    assert sam["precision"] == "int8" and sam["quantization"]["quantized_op"] == "MatMulInteger"
    assert sam["quantization"]["bytes_after"] < sam["quantization"]["bytes_before"]
    assert d["parity"]["sam_image_int8"]["feature_cosine_min"] >= 0.999
    llm = d["graphs"]["llm"]
    assert llm["precision"] == "int8" and llm["quantization"]["quantized_nodes"] > 0
    assert d["parity"]["llm_int8"]["seg_cosine_min"] >= 0.99
    tok = d["constants"]["tokens"]
    assert tok["seg"] == tiny_ref.tokenizer.seg_id and tok["bos"] == tiny_ref.tokenizer.bos_id
    assert d["constants"]["mem_stride"] == rules.MEM_STRIDE
    assert d["source"]["fuser_gamma_loaded"] is False


def test_int8_engine_segments_close_to_reference(tiny_int8_engine_dir, tiny_ref):
    frames = moving_square_video(6)
    ref = reference.segment_video(tiny_ref, frames, "the red square")
    res = GlusEngine.load(tiny_int8_engine_dir).segment_video(frames, "the red square")[0]
    for r, s in zip(ref.frames, res.steps):
        cos = r.seg_embedding @ s.seg_embedding / (np.linalg.norm(r.seg_embedding) * np.linalg.norm(s.seg_embedding))
        assert cos >= 0.99


def test_rebuild_reuses_graphs(tiny_dirs, tiny_int8_engine_dir, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_int8_engine_dir, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    build(*tiny_dirs, precision="int8", out=out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    assert before == after  # nothing re-exported
    read_manifest(out)


def test_interrupted_build_never_looks_complete(tiny_dirs, tiny_int8_engine_dir, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    shutil.copytree(tiny_int8_engine_dir, out)  # an older complete engine sits there
    calls = []

    def boom(spec, path):
        calls.append(spec.name)
        raise KeyboardInterrupt

    monkeypatch.setattr("export.onnx_utils.export_graph", boom)
    with pytest.raises(KeyboardInterrupt):
        build(*tiny_dirs, precision="fp32", out=out, progress=False, force=True)
    assert calls and not (out / "manifest.json").exists()
    with pytest.raises(EngineDirError, match="did not finish"):
        GlusEngine.load(out)


def test_cli_bad_inputs(tiny_dirs, tmp_path, capsys):
    glus_dir, clip_dir = tiny_dirs
    assert main(["--checkpoint", str(glus_dir), "--precision", "int4", "--out", str(tmp_path / "a")]) == 2
    assert "unknown precision" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "not found" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--checkpoint", str(glus_dir), "--out", str(blocker / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err
    nowts = tmp_path / "noweights"
    shutil.copytree(glus_dir, nowts)
    (nowts / "model.safetensors").unlink()
    assert main(["--checkpoint", str(nowts), "--clip", str(clip_dir), "--out", str(tmp_path / "c")]) == 2
    assert "no weights" in capsys.readouterr().err
    assert main(["--checkpoint", str(glus_dir), "--precision", "fp16", "--out", str(tmp_path / "d")]) == 2
    assert "GPU" in capsys.readouterr().err


def test_tensorrt_without_gpu_is_a_clear_skip(tiny_dirs, tiny_int8_engine_dir, tmp_path, capsys):
    out = tmp_path / "trt"
    shutil.copytree(tiny_int8_engine_dir, out)
    build(*tiny_dirs, precision="int8", backend="tensorrt", out=out, progress=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["tensorrt"]["built"] is False and "GPU" in m["tensorrt"]["reason"]
    captured = capsys.readouterr()
    assert "[tensorrt] skipped" in captured.out + captured.err


def test_fresh_inputs_are_never_the_example():
    import torch

    ex = {"x": torch.randn(3, 4), "ids": torch.arange(4)}
    a, b = build_mod.fresh_inputs(ex, 1), build_mod.fresh_inputs(ex, 2)
    assert not torch.equal(a["x"], ex["x"]) and not torch.equal(a["x"], b["x"])
    assert torch.equal(a["ids"], ex["ids"])


def test_int8_graph_choice_is_checked_before_any_work(tiny_dirs, tmp_path):
    from export.build import BuildError

    with pytest.raises(BuildError, match="cannot quantize mask_decoder"):
        build(*tiny_dirs, precision="int8", out=tmp_path / "a", int8_graphs=("llm", "mask_decoder"))
    with pytest.raises(BuildError, match="at least one graph"):
        build(*tiny_dirs, precision="int8", out=tmp_path / "b", int8_graphs=())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_int8_auto_falls_back_to_nbits8_when_dynamic_drifts(tiny_dirs, tiny_engine_dir, tmp_path, monkeypatch):
    """--int8-method auto: the first method whose [SEG] cosine passes is kept, and the manifest
    says which was tried. Here dynamic int8 is made to report a drift (as at LLaMA-7B widths)."""
    real = build_mod.llm_seg_cosines
    calls = []

    def drifting(ref, fp32_path, int8_path, steps=5):
        cos = real(ref, fp32_path, int8_path, steps)
        calls.append(cos)
        return [0.985] * len(cos) if len(calls) == 1 else cos

    monkeypatch.setattr(build_mod, "llm_seg_cosines", drifting)
    out = tmp_path / "auto"
    shutil.copytree(tiny_engine_dir, out)  # the fp32 graphs are reused
    build(*tiny_dirs, precision="int8", out=out, progress=False, int8_graphs=("llm",))
    d = read_manifest(out).data
    assert d["parity"]["llm_int8"]["method"] == "nbits8"
    assert d["parity"]["llm_int8"]["tried"]["dynamic-int8"] == 0.985
    assert d["graphs"]["llm"]["quantization"]["quantized_op"] == "MatMulNBits"
    assert len(calls) == 2


def test_int8_auto_names_every_method_when_none_passes(tiny_dirs, tiny_engine_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "llm_seg_cosines", lambda *a, **k: [0.5])
    out = tmp_path / "none"
    shutil.copytree(tiny_engine_dir, out)
    with pytest.raises(BuildError, match="dynamic-int8 0.5000, nbits8 0.5000"):
        build(*tiny_dirs, precision="int8", out=out, progress=False, int8_graphs=("llm",))


def test_auto_int8_goes_straight_to_nbits8_at_llama_7b_width():
    from export.build import LLM_INT8_AUTO, llm_int8_candidates

    assert llm_int8_candidates("auto", 128) == LLM_INT8_AUTO == ("dynamic-int8", "nbits8")
    assert llm_int8_candidates("auto", 4096) == ("nbits8",)
    assert llm_int8_candidates("dynamic-int8", 4096) == ("dynamic-int8",)  # asked for: tried


def test_llm_exported_in_a_child_process_is_the_same_graph(tiny_dirs, tiny_engine_dir, tmp_path):
    """llm_process="child" (how a 7B is exported: its memory goes back when the child exits)
    gives an llm.onnx whose outputs equal the in-process export's on the same inputs, with the
    parity measured against the child's PyTorch run; the parent's PyTorch LLM is dropped first."""
    from export.onnx_utils import ort_session

    out = tmp_path / "child"
    m = build(*tiny_dirs, precision="fp32", out=out, progress=False, llm_process="child")
    assert m["parity"]["llm"]["max_rel_error"] <= 1e-5
    a, b = ort_session(tiny_engine_dir / "llm.onnx"), ort_session(out / "llm.onnx")
    rng = np.random.default_rng(0)
    L, _, _, kvh, _, hd = (d if isinstance(d, int) else 0 for d in a.get_inputs()[2].shape)
    hidden = a.get_inputs()[0].shape[-1]
    feeds = {
        "inputs_embeds": rng.standard_normal((1, 4, hidden), np.float32) * 0.1,
        "position_ids": np.arange(3, 7, dtype=np.int64)[None],
        "past_kv": rng.standard_normal((L, 2, 1, kvh, 3, hd), np.float32),
    }
    for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert not list(out.glob("*.check.npz"))  # the child's parity file is gone
    assert build_mod.resolve_llm_process("auto", "int8", 1 << 29) == "same"
    assert build_mod.resolve_llm_process("auto", "int8", 27 << 30) == "child"
    assert build_mod.resolve_llm_process("auto", "fp16", 27 << 30) == "same"


def test_llm_child_failure_is_a_build_error_with_its_cause(tiny_dirs, tmp_path, monkeypatch):
    import export.llm_process as lp

    real = lp.export_llm_in_child

    def broken(checkpoint, clip, onnx_path, seed, timeout_s=None):
        return real(tmp_path / "no-such-checkpoint", clip, onnx_path, seed, timeout_s)

    monkeypatch.setattr(lp, "export_llm_in_child", broken)
    with pytest.raises(BuildError, match="(?s)child process failed.*no-such-checkpoint"):
        build(*tiny_dirs, precision="fp32", out=tmp_path / "e", progress=False, llm_process="child")
    assert not (tmp_path / "e" / "manifest.json").exists()
    with pytest.raises(BuildError, match="llm_process"):
        build(*tiny_dirs, precision="fp32", out=tmp_path / "e", progress=False, llm_process="elsewhere")


def test_build_output_is_quiet_unless_verbose(tiny_dirs, tmp_path, capfd):
    """No third-party chatter (torch.onnx's torchvision notes, ONNX Runtime's pre-processing
    advice, transformers' loading bar) in a build's output; --verbose lets it through."""
    build(*tiny_dirs, precision="int8", out=tmp_path / "q", progress=True, llm_process="same")
    out, err = capfd.readouterr()
    for noise in ("torchvision is not installed", "pre-processing before quantization", "Loading weights"):
        assert noise not in out + err, noise
    assert "engine written to" in out
