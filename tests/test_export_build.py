"""python -m export.build: the engine directory, its manifest, reuse, and bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import reference
from export import build as build_mod
from export.build import BuildError, build, main
from reference import rules
from runtime import EngineDirError, GlusEngine
from runtime.manifest import REQUIRED_ARRAYS, REQUIRED_GRAPHS, read_manifest, sha256_file

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
