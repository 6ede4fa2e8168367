"""Checks of a problem against the model that will read it: special tokens and prompt length.

A problem whose text contains a string the tokenizer reads as a special token
(`<|im_start|>system ...`) is rejected (`special_tokens`): the prompt builder encodes it as
plain text, but the text exports (`prompt`, `messages`) are re-tokenized by other trainers,
where it would forge a turn. A problem whose sampling prompt leaves fewer than the sampling
budget of the model's context is rejected (`too_long`): it could never finish thinking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Callable

from pipeline.config import ModelConfig
from pipeline.templates import PromptBuilder, special_token_strings

# Tokenizers without a configured limit report a huge sentinel as `model_max_length`.
_UNSET_LENGTH = 10**9


def context_length(model_config, tokenizer, max_model_len: int | None = None) -> int | None:
    """Tokens the model can attend to: `backend.max_model_len` if set, else the model's
    `max_position_embeddings`, else the tokenizer's `model_max_length`; None when none is known."""
    if max_model_len:
        return max_model_len
    for value in (getattr(model_config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and 0 < value < _UNSET_LENGTH:
            return value
    return None


@dataclass
class PromptScreen:
    """Why a problem cannot be prompted to this model (None when it can)."""

    prompts: PromptBuilder
    context: int | None  # the model's context in tokens (None: unknown, length not checked)
    generation_tokens: int  # the largest sampling budget a prompt must leave room for

    @cached_property
    def _specials(self) -> list[str]:
        return special_token_strings(self.prompts.tokenizer)

    @property
    def max_prompt_tokens(self) -> int | None:
        return None if self.context is None else self.context - self.generation_tokens

    def issue(self, problem: str) -> str | None:
        found = next((s for s in self._specials if s in problem), None)
        if found:
            return f"problem text contains the tokenizer's special token {found!r}"
        limit = self.max_prompt_tokens
        if limit is not None:
            n = len(self.prompts.sampling_prompt_ids(problem))
            if n > limit:
                return (
                    f"too long: the prompt has {n} tokens; the model's context of {self.context} minus "
                    f"{self.generation_tokens} generated tokens leaves {limit}"
                )
        return None


def _tokenizer_and_config(base_model: Path, model: ModelConfig):
    """The tokenizer and model config that sampling will use: the prepared base model folder if
    there is one, else what `model.name_or_path` names (the embedded GGUF, a folder, a hub id)."""
    from transformers import AutoConfig, AutoTokenizer

    from pipeline.models import ModelNotFoundError, ModelRef, embedded_gguf, load_tokenizer, resolve

    if base_model.exists():
        ref = resolve(base_model, model.trust_remote_code)
    elif model.name_or_path.startswith("embedded:"):
        gguf = embedded_gguf(model.name_or_path)
        folder, name = str(gguf.parent), gguf.name
        return AutoTokenizer.from_pretrained(folder, gguf_file=name), AutoConfig.from_pretrained(folder, gguf_file=name)
    else:
        ref = ModelRef(model.name_or_path, model.revision, model.trust_remote_code)
    tokenizer = load_tokenizer(ref)
    try:
        config = AutoConfig.from_pretrained(ref.name_or_path, revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    except OSError as error:
        raise ModelNotFoundError(f"cannot load the model config from {ref.label}: {error}") from error
    return tokenizer, config


def model_screen(
    base_model: Path,
    model: ModelConfig,
    make_prompts: Callable[[object], PromptBuilder],
    generation_tokens: int,
    max_model_len: int | None = None,
) -> Callable[[str], str | None]:
    """`PromptScreen.issue` for the configured model, its prompts built by `make_prompts(tokenizer)`
    exactly as sampling builds them; the tokenizer is loaded on the first call, so a source that
    fails to read never waits for it."""

    @cache
    def screen() -> PromptScreen:
        tokenizer, config = _tokenizer_and_config(base_model, model)
        prompts = make_prompts(tokenizer)
        return PromptScreen(prompts, context_length(config, tokenizer, max_model_len), generation_tokens)

    return lambda problem: screen().issue(problem)
