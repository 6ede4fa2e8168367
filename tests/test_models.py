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
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    from pipeline.models import TORCH_FREE_TOKENIZERS, embedded_gguf, recorded_tokenizer_class

    reader_class = gguf.GGUFReader
    out = tmp_path / "smol"
    prepare_base_model(ModelConfig(), out)
    # The conversion parses the file once (a memoized reader, `_gguf_parsed_once`), then puts gguf back.
    assert gguf.GGUFReader is reader_class
    # The weights are the GGUF's, dequantized: two tensors read here with gguf alone (Q8_0 and Q4_1).
    reader, weights = gguf.GGUFReader(embedded_gguf(ModelConfig().name_or_path)), load_file(out / "model.safetensors")
    for gguf_name, name in (("token_embd.weight", "model.embed_tokens.weight"),
                            ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")):
        tensor = next(t for t in reader.tensors if t.name == gguf_name)
        np.testing.assert_array_equal(weights[name], gguf.dequantize(tensor.data, tensor.tensor_type))
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert (out / "model.safetensors").stat().st_size > 400_000_000
    resolved = type(AutoTokenizer.from_pretrained(out))
    assert recorded_tokenizer_class(out) == f"{resolved.__module__}.{resolved.__qualname__}"
    assert recorded_tokenizer_class(out) in TORCH_FREE_TOKENIZERS  # the default loop's light stages skip torch


def _copy_of(folder, out):
    import shutil

    shutil.copytree(folder, out)
    return out


def _same_tokenizer(a, b) -> None:
    text = "<think>\nLet me add 2 and 3.\n\nWait, check: 5.\n</think>\n\\boxed{5} é 数 \t  x"
    messages = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": text}]
    assert type(a) is type(b)
    assert a.get_vocab() == b.get_vocab() and a.all_special_tokens == b.all_special_tokens
    assert (a.bos_token_id, a.eos_token_id, a.pad_token_id) == (b.bos_token_id, b.eos_token_id, b.pad_token_id)
    assert a(text)["input_ids"] == b(text)["input_ids"]
    assert a.apply_chat_template(messages, tokenize=False) == b.apply_chat_template(messages, tokenize=False)
    ids = a(text)["input_ids"]
    assert a.decode(ids) == b.decode(ids) and a.decode(ids, skip_special_tokens=True) == b.decode(ids, skip_special_tokens=True)


def test_tokenizer_only_stages_load_the_class_autotokenizer_resolves_without_torch(tmp_path, tiny_model_dir):
    """split, select and export need only the tokenizer: the folder's mark records the class AutoTokenizer
    resolves, and they load that class directly (AutoTokenizer's module imports torch, 3-4 s a stage)."""
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    from pipeline.models import MARK_FILE, load_folder_tokenizer, recorded_tokenizer_class, staged_model_folder

    pointer = prepare_base_model(ModelConfig(name_or_path=str(_copy_of(tiny_model_dir, tmp_path / "outside"))), tmp_path / "base")
    with staged_model_folder(tmp_path / "weights") as staging:
        for path in Path(tiny_model_dir).iterdir():
            (staging / path.name).write_bytes(path.read_bytes())
    for folder in (tmp_path / "base", tmp_path / "weights"):
        expected = type(AutoTokenizer.from_pretrained(resolve(folder).name_or_path))
        assert recorded_tokenizer_class(folder) == f"{expected.__module__}.{expected.__qualname__}"
        _same_tokenizer(load_folder_tokenizer(folder), AutoTokenizer.from_pretrained(resolve(folder).name_or_path))
        probe = ("import sys; from pipeline.models import load_folder_tokenizer; "
                 f"t = load_folder_tokenizer({str(folder)!r}); print('torch' in sys.modules, len(t))")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent.parent).stdout.split()
        assert out == ["False", str(len(AutoTokenizer.from_pretrained(pointer.name_or_path)))]

    # A record that may no longer hold is not used: other transformers version, or the pointer's target changed.
    mark = json.loads((tmp_path / "weights" / MARK_FILE).read_text())
    (tmp_path / "weights" / MARK_FILE).write_text(json.dumps({**mark, "tokenizer": {**mark["tokenizer"], "transformers": "0.0"}}))
    assert recorded_tokenizer_class(tmp_path / "weights") is None
    config = tmp_path / "outside" / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    assert recorded_tokenizer_class(tmp_path / "base") is None
    _same_tokenizer(load_folder_tokenizer(tmp_path / "base"), AutoTokenizer.from_pretrained(pointer.name_or_path))


def test_a_hub_pointer_records_no_tokenizer_class(tmp_path):
    from pipeline.models import MARK_FILE

    prepare_base_model(ModelConfig(name_or_path="org/some-model", revision="abc", family="r1"), tmp_path / "b")
    assert "tokenizer" not in json.loads((tmp_path / "b" / MARK_FILE).read_text())
