"""What every stage needs: the layout, the policy model, prompts and a progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.backends import make_backend
from pipeline.config import Params
from pipeline.io import read_table
from pipeline.models import ModelRef, load_tokenizer, resolve
from pipeline.paths import Layout
from pipeline.templates import PromptBuilder


def layout(params: Params) -> Layout:
    return Layout(Path(params.data_dir), Path(params.metrics_dir))


def rows(path: Path, schema=None) -> list[dict]:
    return read_table(path, schema).to_pylist()


def policy_ref(params: Params, round_index: int) -> tuple[Path, ModelRef]:
    folder = layout(params).policy(round_index)
    return folder, resolve(folder, params.model.trust_remote_code)


def prompt_builder(params: Params, tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, params.model.family, params.model.system_prompt, params.prover.forced_stop_text)


def open_policy(params: Params, round_index: int):
    """(ref, tokenizer, prompts, backend) for the model that samples this round."""
    _, ref = policy_ref(params, round_index)
    tokenizer = load_tokenizer(ref)
    backend = make_backend(ref, params.backend, params.model, tokenizer)
    return ref, tokenizer, prompt_builder(params, tokenizer), backend


@contextmanager
def progress(total: int, description: str):
    with tqdm(total=total, desc=description, unit="sample", dynamic_ncols=True) as bar:
        yield bar.update
