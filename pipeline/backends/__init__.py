"""Generation engines behind one interface (`base.Backend`)."""

from __future__ import annotations

from pipeline.backends.base import Backend, Completion, Request, SamplingParams
from pipeline.config import BackendConfig, ModelConfig
from pipeline.models import ModelRef, load_causal_lm, load_tokenizer

__all__ = ["Backend", "Completion", "Request", "SamplingParams", "make_backend"]


def make_backend(ref: ModelRef, backend: BackendConfig, model: ModelConfig, tokenizer=None) -> Backend:
    """Build the configured engine for a resolved model."""
    if backend.name == "transformers":
        from pipeline.backends.transformers_backend import TransformersBackend, pick_device

        tokenizer = tokenizer or load_tokenizer(ref)
        lm = load_causal_lm(ref, dtype=model.dtype, device=pick_device(backend.device))
        return TransformersBackend(lm, tokenizer, batch_size=backend.batch_size)
    raise NotImplementedError(
        f"backend.name: {backend.name!r} is not available yet; use 'transformers' (the vLLM engine is tracked in its own issue)"
    )
