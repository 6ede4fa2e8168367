"""What every stage needs: the layout, the policy model, prompts and a progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

from pipeline.backends import make_backend
from pipeline.config import Params
from pipeline.grading import Grader
from pipeline.io import ShardedWriter, chunked, read_table
from pipeline.models import ModelRef, load_tokenizer, resolve
from pipeline.paths import Layout
from pipeline.tables import from_rows
from pipeline.templates import PromptBuilder


def layout(params: Params, arm: str | None = None) -> Layout:
    """Paths for `arm` (default: the first listed arm; round 0's samples are shared by all)."""
    return Layout(Path(params.data_dir), Path(params.metrics_dir), params.check_arm(arm or params.arms[0]))


def rows(path: Path, schema=None) -> list[dict]:
    return read_table(path, schema).to_pylist()


def policy_ref(params: Params, round_index: int, arm: str | None = None) -> ModelRef:
    """What to load for the model that samples this round."""
    return resolve(layout(params, arm).policy(round_index), params.model.trust_remote_code)


def prompt_builder(params: Params, tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, params.model.family, params.model.system_prompt, params.prover.forced_stop_text)


def policy_prompts(params: Params, round_index: int, arm: str | None = None) -> PromptBuilder:
    """Prompt builder on this round's policy tokenizer."""
    return prompt_builder(params, load_tokenizer(policy_ref(params, round_index, arm)))


def open_policy(params: Params, round_index: int, arm: str | None = None):
    """(ref, prompts, backend) for the model that samples this round."""
    ref = policy_ref(params, round_index, arm)
    prompts = prompt_builder(params, load_tokenizer(ref))
    return ref, prompts, make_backend(ref, params.backend, params.model, prompts.tokenizer)


@contextmanager
def lazy_policy(params: Params, round_index: int, arm: str | None = None) -> Iterator[Callable[[], tuple]]:
    """A function giving `open_policy`'s (ref, prompts, backend), opened on first call and the same
    after: a stage loads the model only if some shard is missing. The backend is closed on exit
    if it was opened, so the next stage gets the memory (and vLLM's processes) back."""
    engine = cache(lambda: open_policy(params, round_index, arm))
    try:
        yield engine
    finally:
        if engine.cache_info().currsize:
            engine()[2].close()


def open_grader(params: Params) -> Grader:
    """The grader the parameters ask for (worker processes; close it, or use `with`)."""
    g = params.grading
    return Grader(workers=g.workers, timeout_seconds=g.timeout_seconds, fallbacks=g.fallbacks, cache_size=g.cache_size)


@contextmanager
def progress(total: int, description: str):
    with tqdm(total=total, desc=description, unit="sample", dynamic_ncols=True) as bar:
        yield bar.update


def write_missing_shards(
    writer: ShardedWriter,
    items: list,
    shard_size: int,
    schema,
    work: Callable[[list, Callable[[int], None]], list[dict]],
    samples: Callable[[list], int],
    description: str,
    start: Callable[[], object] | None = None,
) -> tuple[int, int]:
    """Compute and write every shard of `items` not yet on disk, then mark the folder complete.

    `work(chunk, on_done)` returns the chunk's rows; `samples(chunk)` sizes the progress bar;
    `start()` runs once before the bar appears when there is work (e.g. loading the model).
    Returns how many shards and items were computed ((0, 0) on a rerun after success).
    """
    all_shards = list(chunked(items, shard_size))
    todo = [(index, chunk) for index, chunk in all_shards if not writer.is_done(index)]
    if todo:
        if start is not None:
            start()
        with progress(sum(samples(chunk) for _, chunk in todo), description) as update:
            for index, chunk in todo:
                writer.write(index, from_rows(work(chunk, update), schema))
    writer.complete(len(all_shards))
    return len(todo), sum(len(chunk) for _, chunk in todo)
