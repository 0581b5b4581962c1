"""serving/repository.py: the config it writes, read back by Triton's own protobuf schema (an
independent parser), and the options it refuses."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2

from serving.repository import config_pbtxt, main, write_repository


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_config_reads_back_with_the_options_given(tmp_path):
    cfg = parse(
        config_pbtxt(
            tmp_path,
            max_cameras=5,
            idle_timeout_s=2.5,
            kv_policy="incremental",
            llm_every="auto",
            batch_llm=True,
            batch_images=True,
        )
    )
    assert cfg.backend == "python" and cfg.max_batch_size == 5
    assert [i.name for i in cfg.input] == ["FRAME", "EXPRESSIONS"] and cfg.input[1].optional
    assert [o.name for o in cfg.output] == ["MASKS", "SCORES", "FRAME_INDEX"]
    sb = cfg.sequence_batching
    assert sb.max_sequence_idle_microseconds == 2_500_000
    assert sb.oldest.max_candidate_sequences == 10  # extra cameras reach the model and get its refusal
    kinds = {c.name: c.control[0].kind for c in sb.control_input}
    assert kinds == {
        "START": model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START,
        "END": model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END,
        "CORRID": model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID,
    }
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["engine_dir"] == str(tmp_path.resolve())
    got = [params[k] for k in ("max_cameras", "kv_policy", "llm_every", "batch_llm", "batch_images")]
    assert got == ["5", "incremental", "auto", "1", "1"]
    default = parse(config_pbtxt(tmp_path))
    assert default.parameters["batch_images"].string_value == "0"


@given(st.text(min_size=1, max_size=40))
def test_any_engine_path_survives_the_quoting(name):
    from pathlib import Path

    path = Path("/engines") / name.replace("/", "_").replace("\x00", "_")
    params = {k: v.string_value for k, v in parse(config_pbtxt(path)).parameters.items()}
    assert params["engine_dir"] == str(path.resolve())


@pytest.mark.parametrize(
    "bad",
    [{"max_cameras": 0}, {"idle_timeout_s": 0}, {"llm_every": 0}, {"llm_every": "often"}, {"kv_policy": "x"}],
)
def test_bad_options_are_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        config_pbtxt(tmp_path, **bad)


def test_write_and_the_command(tmp_path, tiny_engine_dir, capsys):
    model = write_repository(tiny_engine_dir, tmp_path / "repo")
    assert (model / "config.pbtxt").is_file() and "serving.triton_model" in (model / "1" / "model.py").read_text()
    with pytest.raises(FileNotFoundError, match="not an engine directory"):
        write_repository(tmp_path, tmp_path / "repo2")
    assert main([str(tiny_engine_dir), str(tmp_path / "repo3"), "--llm-every", "auto"]) == 0
    assert main([str(tmp_path), str(tmp_path / "repo4")]) == 2
    assert "not an engine directory" in capsys.readouterr().err


def test_sources_of_the_same_name_get_distinct_output_names():
    from serving.client import UniqueNames

    names = UniqueNames()
    assert [names.claim(n) for n in ["a", "b", "a", "a", "a-2"]] == ["a", "b", "a-2", "a-3", "a-2-2"]


def test_batch_images_on_an_int8_engine_is_refused_when_the_repository_is_written(tiny_int8_engine_dir, tmp_path):
    from serving.repository import main, write_repository

    with pytest.raises(ValueError, match="dynamic int8"):
        write_repository(tiny_int8_engine_dir, tmp_path / "repo", batch_images=True)
    assert not (tmp_path / "repo").exists()  # nothing half-written
    assert main([str(tiny_int8_engine_dir), str(tmp_path / "repo"), "--batch-images"]) == 2
    write_repository(tiny_int8_engine_dir, tmp_path / "repo")  # without it, as before
