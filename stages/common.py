"""What every stage needs: the layout, the policy model, prompts and a progress bar."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

from pipeline.backends import make_backend
from pipeline.config import ConfigError, Params
from pipeline.grading import Grader
from pipeline.io import ShardedWriter, chunked, read_table, stable_hash
from pipeline.models import ModelRef, load_folder_tokenizer, resolve_output
from pipeline.paths import Layout
from pipeline.tables import from_rows
from pipeline.templates import PromptBuilder


def layout(params: Params, arm: str | None = None) -> Layout:
    """Paths for `arm` (default: the first listed arm; round 0's samples are shared by all)."""
    return Layout(Path(params.data_dir), Path(params.metrics_dir), params.check_arm(arm or params.arms[0]))


def require_scored(params: Params, round_index: int, arm: str | None = None) -> None:
    """Refuse to run the meta-prover (or read its scores) for a round `scored_arms` leaves unscored."""
    name = params.check_arm(arm or params.arms[0])
    if not params.is_scored(name, round_index):
        raise ConfigError(
            f"round {round_index} of arm {name} is not scored: scored_arms is {params.scored_arms}; to run the "
            f"meta-prover on it, add {name} to scored_arms and its prove/score items to dvc.yaml (`scored`)"
        )


def rows(path: Path, schema=None) -> list[dict]:
    return read_table(path, schema).to_pylist()


def problems_hash(problems: list[dict]) -> str:
    """What sampling reads from the problems: ids, answers and the texts that become the prompts
    (an edited text resamples; the template and tokenizer enter through the model and code version)."""
    return stable_hash([(p["problem_id"], p["answer"], p["problem"]) for p in problems])


def policy_ref(params: Params, round_index: int, arm: str | None = None) -> ModelRef:
    """What to load for the model that samples this round (refused unless its folder is marked complete)."""
    return resolve_output(layout(params, arm).policy(round_index), params.model.trust_remote_code)


def policy_tokenizer(params: Params, round_index: int, arm: str | None = None):
    """This round's policy tokenizer (refused unless its folder is marked complete)."""
    return load_folder_tokenizer(layout(params, arm).policy(round_index), params.model.trust_remote_code)


def prompt_builder(params: Params, tokenizer) -> PromptBuilder:
    from pipeline.chat_templates import load_chat_template

    m = params.model
    return PromptBuilder(tokenizer, m.family, m.system_prompt, params.prover.forced_stop_text, m.user_suffix,
                         load_chat_template(m.chat_template), m.chat_template_kwargs)


def policy_prompts(params: Params, round_index: int, arm: str | None = None) -> PromptBuilder:
    """Prompt builder on this round's policy tokenizer."""
    return prompt_builder(params, policy_tokenizer(params, round_index, arm))


def open_policy(params: Params, round_index: int, arm: str | None = None):
    """(ref, prompts, backend) for the model that samples this round."""
    ref = policy_ref(params, round_index, arm)
    prompts = prompt_builder(params, policy_tokenizer(params, round_index, arm))
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
    wait: bool = False,
    poll_seconds: float = 10.0,
) -> tuple[int, int]:
    """Compute and write this process's shards of `items` not yet on disk; mark the folder complete
    when every shard exists (whichever writer, on whichever node, finishes last).

    `work(chunk, on_done)` returns the chunk's rows; `samples(chunk)` sizes the progress bar;
    `start()` runs once before the bar appears when there is work (e.g. loading the model).
    With --num-shards, the other shards are other nodes' share: `wait` polls until they exist
    (a stage that reads the folder next), otherwise the stage ends and says what is missing.
    Returns how many shards and items were computed ((0, 0) on a rerun after success).
    """
    all_shards = list(chunked(items, shard_size))
    mine = set(writer.todo(len(all_shards)))
    todo = [(index, chunk) for index, chunk in all_shards if index in mine]
    if todo:
        if start is not None:
            start()
        with progress(sum(samples(chunk) for _, chunk in todo), description) as update:
            for index, chunk in todo:
                writer.write(index, from_rows(work(chunk, update), schema))
    told = False
    while not writer.finish(len(all_shards)):
        if not wait:
            break
        if not told:
            print(writer.progress_note(len(all_shards)) + "; waiting for them", file=sys.stderr, flush=True)
            told = True
        time.sleep(poll_seconds)
    return len(todo), sum(len(chunk) for _, chunk in todo)


def shards_note(writer: ShardedWriter, n_items: int, shard_size: int) -> str | None:
    """None if the folder is complete, else the line a stage ends with when other nodes' shards are missing."""
    n_shards = len(range(0, n_items, shard_size))
    return None if not writer.missing(n_shards) else writer.progress_note(n_shards)
