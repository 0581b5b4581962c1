"""An engine directory holds exactly the files its manifest names: an int8 build leaves no fp32
graphs beside its int8 ones, a rebuild leaves nothing stale and reuses what is unchanged,
manifest paths stay inside the directory, and the runtime warns about files it does not know."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from export.build import build
from runtime import EngineDirError, GlusEngine
from runtime.errors import UnknownFilesWarning
from runtime.manifest import read_manifest


def _files(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("engine", ["tiny_engine_dir", "tiny_int8_engine_dir"])
def test_directory_holds_exactly_what_the_manifest_names(engine, request):
    d = request.getfixturevalue(engine)
    m = read_manifest(d)
    assert _files(d) == sorted(m.named_files()), "files the manifest does not name"
    assert m.unknown_files() == []
    if m.precision == "int8":
        assert "llm.onnx" not in _files(d) and "sam_image.onnx" not in _files(d)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnknownFilesWarning)
            GlusEngine.load(d)


def test_int8_engine_is_smaller_than_the_fp32_one(tiny_engine_dir, tiny_int8_engine_dir):
    size = {d: sum(p.stat().st_size for p in d.iterdir()) for d in (tiny_engine_dir, tiny_int8_engine_dir)}
    assert size[tiny_int8_engine_dir] < size[tiny_engine_dir]


def test_rebuild_over_another_precision_leaves_nothing_stale_and_reuses(
    tiny_dirs, tiny_engine_dir, tmp_path, monkeypatch
):
    out = tmp_path / "e"
    shutil.copytree(tiny_engine_dir, out)  # an fp32 engine where the int8 one is built
    (out / ".build_state.json").write_text("{}")  # an old build's state file
    (out / "notes.txt").write_text("mine")  # not the build's: never touched
    build(*tiny_dirs, precision="int8", out=out, progress=False)
    m = read_manifest(out)
    assert set(_files(out)) == m.named_files() | {"notes.txt"}
    assert "llm.onnx" not in _files(out) and ".build" not in _files(out)

    import export.onnx_utils as ou

    exported = []
    real = ou.export_graph

    def counting(spec, path):
        exported.append(spec.name)
        return real(spec, path)

    monkeypatch.setattr(ou, "export_graph", counting)
    build(*tiny_dirs, precision="int8", out=out, progress=False)  # everything from the manifest's record
    assert exported == []  # not even the fp32 llm and sam_image its int8 graphs were made from
    assert read_manifest(out).data["graphs"] == m.data["graphs"]


def test_keep_build_files_keeps_the_fp32_graphs_an_int8_engine_replaces(tiny_dirs, tiny_int8_engine_dir, tmp_path):
    out = tmp_path / "e"
    shutil.copytree(tiny_int8_engine_dir, out)
    build(*tiny_dirs, precision="int8", out=out, progress=False, force=True, keep_build_files=True)
    assert {"llm.onnx", "sam_image.onnx"} <= set(_files(out / ".build"))
    with pytest.warns(UnknownFilesWarning, match=r"\.build"):
        GlusEngine.load(out)


def test_manifest_paths_stay_inside_the_directory(tiny_engine_dir, tmp_path):
    out = tmp_path / "e"
    shutil.copytree(tiny_engine_dir, out)
    data = json.loads((out / "manifest.json").read_text())
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(out / data["graphs"]["vision"]["file"], outside)
    for evil in ("../elsewhere.onnx", str(outside)):
        data["graphs"]["vision"]["file"] = evil
        (out / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(EngineDirError, match="outside the engine directory"):
            read_manifest(out)


def test_unknown_files_are_named_in_a_warning(tiny_engine_dir, tmp_path):
    out = tmp_path / "e"
    shutil.copytree(tiny_engine_dir, out)
    (out / "llm.old.onnx").write_bytes(b"x")
    with pytest.warns(UnknownFilesWarning, match="llm.old.onnx"):
        GlusEngine.load(out)
