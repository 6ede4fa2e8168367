import json

import pytest

from pipeline.config import ModelConfig
from pipeline.models import REF_FILE, ModelNotFoundError, fingerprint, load_causal_lm, prepare_base_model, resolve


def test_local_folder_becomes_a_pointer(tmp_path, tiny_model_dir):
    out = tmp_path / "base"
    ref = prepare_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), out)
    assert json.loads((out / REF_FILE).read_text())["name_or_path"] == str(tiny_model_dir)
    assert resolve(out) == ref and not ref.trust_remote_code
    assert load_causal_lm(resolve(out)).config.num_hidden_layers == 2
    assert fingerprint(out) == fingerprint(out)


def test_hub_id_is_recorded_with_revision(tmp_path):
    ref = prepare_base_model(ModelConfig(name_or_path="org/some-model", revision="abc", family="r1"), tmp_path / "b")
    assert (ref.name_or_path, ref.revision) == ("org/some-model", "abc")


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        prepare_base_model(ModelConfig(name_or_path=str(tmp_path / "nowhere")), tmp_path / "b")
    with pytest.raises(ModelNotFoundError, match="not-prepared"):
        resolve(tmp_path / "not-prepared")
    with pytest.raises(ModelNotFoundError, match="unknown embedded model"):
        prepare_base_model(ModelConfig(name_or_path="embedded:gpt-9"), tmp_path / "b")


@pytest.mark.slow  # converts the 98 MB GGUF: 146 s in the fast-set run on a loaded machine
def test_embedded_gguf_converts_to_a_transformers_folder(tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "smol"
    prepare_base_model(ModelConfig(), out)
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert (out / "model.safetensors").stat().st_size > 400_000_000
