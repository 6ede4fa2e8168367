"""The generation interface every engine implements (transformers on CPU, vLLM on GPUs).

One call takes a batch of token-id prompts, each with its own sampling parameters and
seed, and returns `n` completions per prompt. Prompts are token ids so that prefixes cut
at token offsets reach the engine unchanged; engines must not add a BOS token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from pipeline.tokens import decode


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    params: SamplingParams


def completion_text(tokenizer, ids: list[int], stop: tuple[str, ...]) -> str:
    """The decoded completion cut before the first stop string it contains; every backend
    returns text this way, whatever its engine does with stop strings."""
    text = decode(tokenizer, ids)
    for s in stop:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text


@dataclass
class Completion:
    token_ids: list[int]  # generated ids, without the end-of-sequence token
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually computed (less when a cache is reused)
    prefill_passes: int = 0  # forward passes that computed them (packed prefill: several prompts per pass)
    prefill_seconds: float = 0.0  # wall time of those passes (the rest of a call decodes)
    generated_tokens: int = 0


ProgressCallback = Callable[[int], None]


class Backend(Protocol):
    stats: GenerationStats

    def generate(self, requests: list[Request], on_done: ProgressCallback | None = None) -> list[list[Completion]]:
        """n completions for every request, in request order. `on_done(k)` reports k finished samples."""
        ...

    def close(self) -> None:
        """Free the engine (GPU memory) before another stage needs it."""
        ...
