"""reference.load on the real GLUS layout: round trips and every error case named clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import reference
from reference.checkpoint import glus_state_dict, read_state_dict, save_glus_weights
from reference.errors import CheckpointError
from runtime import rules

META_FILES = (
    "config.json",
    "sam2_config.yaml",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def copy_meta(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for name in META_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def probe_outputs(ref):
    """[SEG] embedding of a real prompt and one SAM2 decode + memory: covers every weight group."""
    torch.manual_seed(1)
    m = ref.model
    ids = ref.tokenizer.encode_prompt(rules.prompt_text("the red square", []))
    with torch.no_grad():
        llm = m.seg_embedding(ids, m.encode_clip(torch.randn(5, 3, 224, 224)))
        feats = m.encode_image(torch.randn(1, 3, m.sam_image_size, m.sam_image_size))
        cond = m.condition(feats, [])
        dec = m.decode(feats, cond, llm.seg_embedding)
        mem, _ = m.encode_memory(feats, cond, dec.low_res_logits)
        cond2 = m.condition(feats, [(mem, m.encode_memory(feats, cond, dec.low_res_logits)[1])])
    return [llm.seg_embedding, llm.logits, dec.low_res_logits, mem, cond2]


@pytest.mark.parametrize("fmt,shards", [("safetensors", 1), ("safetensors", 3), ("bin", 1), ("bin", 2)])
def test_round_trip(tiny_dirs, tiny_ref, tmp_path, fmt, shards):
    glus_dir, clip_dir = tiny_dirs
    dst = copy_meta(glus_dir, tmp_path / "ckpt")
    save_glus_weights(glus_state_dict(tiny_ref.model), dst, fmt=fmt, shards=shards)
    if shards > 1:
        assert any(p.name.endswith(".index.json") for p in dst.iterdir())
    again = reference.load(dst, clip_dir)
    for a, b in zip(probe_outputs(tiny_ref), probe_outputs(again)):
        assert torch.equal(a, b)


def test_checkpoint_holds_glus_key_names(tiny_dirs):
    keys = read_state_dict(tiny_dirs[0]).keys()
    for prefix in (
        "model.embed_tokens.",
        "model.layers.0.",
        "model.norm.",
        "lm_head.",
        "model.mm_projector.",
        "model.text_hidden_fcs.0.0.",
        "model.text_hidden_fcs.0.2.",
        "model.visual_model.memory_encoder.fuser.layers.0.gamma",
    ):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert not any("vision_tower" in k or k.startswith("model.clip") for k in keys)


def test_fuser_gamma_quirk(tiny_dirs, tiny_ref):
    saved = read_state_dict(tiny_dirs[0])["model.visual_model.memory_encoder.fuser.layers.0.gamma"]
    default = tiny_ref.model.sam.memory_encoder.fuser.layers[0].gamma
    assert torch.all(default == 1e-6), "GLUS never loads the fuser layer scale"
    assert not torch.allclose(saved, default)
    loaded = reference.load(*tiny_dirs, load_fuser_gamma=True)
    assert torch.equal(loaded.model.sam.memory_encoder.fuser.layers[0].gamma, saved)


def _write_broken(tiny_dirs, tmp_path, mutate):
    glus_dir, _ = tiny_dirs
    dst = copy_meta(glus_dir, tmp_path / "broken")
    state = read_state_dict(glus_dir)
    mutate(state)
    save_glus_weights(state, dst)
    return dst


def test_missing_key_is_named(tiny_dirs, tmp_path):
    dst = _write_broken(tiny_dirs, tmp_path, lambda s: s.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: .*model\.norm\.weight"):
        reference.load(dst, tiny_dirs[1])


def test_unexpected_key_is_named(tiny_dirs, tmp_path):
    dst = _write_broken(tiny_dirs, tmp_path, lambda s: s.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*model\.extra\.weight"):
        reference.load(dst, tiny_dirs[1])


def test_wrong_shape_is_named(tiny_dirs, tmp_path):
    def mutate(s):
        s["model.mm_projector.bias"] = torch.zeros(3)

    dst = _write_broken(tiny_dirs, tmp_path, mutate)
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*model\.mm_projector\.bias"):
        reference.load(dst, tiny_dirs[1])


def test_missing_shard_is_named(tiny_dirs, tiny_ref, tmp_path):
    dst = copy_meta(tiny_dirs[0], tmp_path / "sharded")
    paths = save_glus_weights(glus_state_dict(tiny_ref.model), dst, shards=2)
    paths[1].unlink()
    with pytest.raises(CheckpointError, match=paths[1].name):
        reference.load(dst, tiny_dirs[1])


def test_no_weights(tiny_dirs, tmp_path):
    dst = copy_meta(tiny_dirs[0], tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no weights"):
        reference.load(dst, tiny_dirs[1])


def test_corrupt_weight_file(tiny_dirs, tmp_path):
    dst = copy_meta(tiny_dirs[0], tmp_path / "corrupt")
    (dst / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weight file"):
        reference.load(dst, tiny_dirs[1])


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.update(model_type="llama"), "model_type"),
        (lambda c: c.pop("mm_hidden_size"), "mm_hidden_size"),
        (lambda c: c.update(hidden_size=-4), "hidden_size"),
    ],
)
def test_bad_config(tiny_dirs, tmp_path, edit, match):
    dst = copy_meta(tiny_dirs[0], tmp_path / "badcfg")
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        reference.load(dst, tiny_dirs[1])


def test_config_not_json(tiny_dirs, tmp_path):
    dst = copy_meta(tiny_dirs[0], tmp_path / "notjson")
    (dst / "config.json").write_text("{ nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        reference.load(dst, tiny_dirs[1])


def test_missing_directories(tiny_dirs, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        reference.load(tmp_path / "nowhere", tiny_dirs[1])
    with pytest.raises(CheckpointError, match="CLIP directory not found"):
        reference.load(tiny_dirs[0], tmp_path / "noclip")


def test_missing_tokenizer_file(tiny_dirs, tiny_ref, tmp_path):
    dst = copy_meta(tiny_dirs[0], tmp_path / "notok")
    save_glus_weights(glus_state_dict(tiny_ref.model), dst)
    (dst / "tokenizer.model").unlink()
    with pytest.raises((CheckpointError, FileNotFoundError), match="tokenizer.model"):
        reference.load(dst, tiny_dirs[1])


def test_clip_falls_back_to_config_vision_tower(tiny_dirs):
    ref = reference.load(tiny_dirs[0])  # config.json's vision_tower points at the CLIP dir
    assert ref.clip_dir.resolve() == tiny_dirs[1].resolve()
