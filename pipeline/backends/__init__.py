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
    if backend.name == "vllm":
        from pipeline.backends.vllm_backend import VLLMBackend, import_vllm

        import_vllm()  # vllm is an optional extra: a clear error before anything is loaded
        if backend.data_parallel_size > 1:
            from pipeline.backends.vllm_pool import VLLMPool

            return VLLMPool(ref, backend, model)
        return VLLMBackend.open(ref, backend, model, tokenizer or load_tokenizer(ref))
    raise ValueError(f"backend.name: unknown backend {backend.name!r}; choose transformers or vllm")
