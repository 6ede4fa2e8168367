"""What every stage needs: the layout, the policy model, prompts and a progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.backends import make_backend
from pipeline.config import Params
from pipeline.grading import Grader
from pipeline.io import read_table
from pipeline.models import ModelRef, load_tokenizer, resolve
from pipeline.paths import Layout
from pipeline.templates import PromptBuilder


def layout(params: Params) -> Layout:
    return Layout(Path(params.data_dir), Path(params.metrics_dir))


def rows(path: Path, schema=None) -> list[dict]:
    return read_table(path, schema).to_pylist()


def policy_ref(params: Params, round_index: int) -> ModelRef:
    """What to load for the model that samples this round."""
    return resolve(layout(params).policy(round_index), params.model.trust_remote_code)


def prompt_builder(params: Params, tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, params.model.family, params.model.system_prompt, params.prover.forced_stop_text)


def policy_prompts(params: Params, round_index: int) -> PromptBuilder:
    """Prompt builder on this round's policy tokenizer."""
    return prompt_builder(params, load_tokenizer(policy_ref(params, round_index)))


def open_policy(params: Params, round_index: int):
    """(ref, prompts, backend) for the model that samples this round."""
    ref = policy_ref(params, round_index)
    prompts = prompt_builder(params, load_tokenizer(ref))
    return ref, prompts, make_backend(ref, params.backend, params.model, prompts.tokenizer)


def open_grader(params: Params) -> Grader:
    """The grader the parameters ask for (worker processes; close it, or use `with`)."""
    g = params.grading
    return Grader(workers=g.workers, timeout_seconds=g.timeout_seconds, fallbacks=g.fallbacks, cache_size=g.cache_size)


@contextmanager
def progress(total: int, description: str):
    with tqdm(total=total, desc=description, unit="sample", dynamic_ncols=True) as bar:
        yield bar.update
