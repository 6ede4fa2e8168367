"""transformers generation with prefix reuse and per-sample seeds: the CPU and test default.

Two things `model.generate` does not do, and why this loop exists:
- Prefix reuse. The prover sends every prefix of a trace; they share the prompt and the
  thinking up to each cut. Each prompt is prefilled on top of the KV cache of the most
  similar prompt computed recently (cropped to their common prefix), so a trace's prefill
  costs about one trace length instead of the sum of its prefix lengths, and the K samples
  of a prompt share one prefill. `stats` reports computed against naive prefill tokens.
- Per-sample seeds. Each sample draws from its own `torch.Generator`, seeded from the
  request seed and the sample index, so it does not depend on batching or sharding.
Decoding is batched across requests; the samples of one prompt share its KV cache instead of
copying it per row (`pipeline.backends.shared_prefix`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import DynamicCache

from pipeline.backends.base import Completion, GenerationStats, Request, completion_text
from pipeline.backends.shared_prefix import install, shared_prefix_layers
from pipeline.tokens import decode

_STOP_LOOKBACK_TOKENS = 16
_NUCLEUS_CANDIDATES = 1024


def sample_seed(seed: int, sample_index: int) -> int:
    return (seed * 1_000_003 + sample_index * 7_919 + 12_345) % (2**63 - 1)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Temperature + nucleus sampling of one token from one row of logits.

    The nucleus is searched among the top 1024 tokens first (a partial sort); only when
    those hold less than `top_p` of the mass is the whole vocabulary sorted. Same result.
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    values, indices = torch.topk(probs, min(_NUCLEUS_CANDIDATES, probs.shape[-1]))
    if float(values.sum()) < top_p:
        values, indices = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(values, dim=-1)
    values = values.masked_fill(cumulative - values > top_p, 0.0)  # smallest set reaching top_p
    return int(indices[torch.multinomial(values, 1, generator=generator)])


def common_prefix_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


class _Prefilled:
    """KV cache (batch 1) of a prompt and the logits of its last position."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], last_logits: torch.Tensor):
        self.kv = kv
        self.last_logits = last_logits

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[-2]


class TransformersBackend:
    def __init__(self, model, tokenizer, batch_size: int = 16, prefix_cache_entries: int = 8, reuse_prefixes: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in eos_ids + [tokenizer.eos_token_id] if i is not None}
        self.stats = GenerationStats()
        self._prefix_cache: OrderedDict[tuple[int, ...], _Prefilled] = OrderedDict()
        self._prefix_cache_entries = prefix_cache_entries
        self._reuse_prefixes = reuse_prefixes  # False: only identical prompts share a prefill (the naive cost)
        install(model)  # decoding reads each prompt's KV cache once per step, not once per sample

    def generate(self, requests: list[Request], on_done=None) -> list[list[Completion]]:
        # Keep request order: neighbouring prompts (prefixes of one trace) share the most.
        rows = [(r, s) for r in range(len(requests)) for s in range(requests[r].params.n)]
        results: list[list[Completion | None]] = [[None] * req.params.n for req in requests]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            completions = self._generate_batch(requests, batch)
            for (r, s), completion in zip(batch, completions):
                results[r][s] = completion
            if on_done:
                on_done(len(batch))
        self._prefix_cache.clear()
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _prefill(self, ids: tuple[int, ...]) -> _Prefilled:
        """Prefill `ids`, reusing the longest common prefix of a recently prefilled prompt."""
        if ids in self._prefix_cache:
            self._prefix_cache.move_to_end(ids)
            return self._prefix_cache[ids]
        reuse, donor = 0, None
        for key, entry in self._prefix_cache.items() if self._reuse_prefixes else ():
            shared = min(common_prefix_length(key, ids), len(ids) - 1, entry.length)
            if shared > reuse:
                reuse, donor = shared, entry
        past = None
        if donor is not None:
            past = DynamicCache(ddp_cache_data=[(k[:, :, :reuse], v[:, :, :reuse]) for k, v in donor.kv])
        new = torch.tensor([ids[reuse:]], device=self.device)
        positions = torch.arange(reuse, len(ids), device=self.device).unsqueeze(0)
        out = self.model(input_ids=new, position_ids=positions, past_key_values=past, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        entry = _Prefilled(kv, out.logits[0, -1].float().cpu())
        self.stats.prompt_tokens += len(ids)
        self.stats.prefill_tokens += len(ids) - reuse
        self._prefix_cache[ids] = entry
        while len(self._prefix_cache) > self._prefix_cache_entries:
            self._prefix_cache.popitem(last=False)
        return entry

    def _batched_cache(self, entries: list[_Prefilled], extra: int) -> DynamicCache:
        """One cache for a decoding batch: each distinct prompt's KV once, shared by its samples."""
        groups: dict[int, int] = {}
        distinct: list[_Prefilled] = []
        row_groups = []
        for entry in entries:
            if id(entry) not in groups:
                groups[id(entry)] = len(distinct)
                distinct.append(entry)
            row_groups.append(groups[id(entry)])
        cache = DynamicCache()
        cache.layers = shared_prefix_layers([e.kv for e in distinct], row_groups, extra)
        return cache

    @torch.inference_mode()
    def _generate_batch(self, requests: list[Request], batch: list[tuple[int, int]]) -> list[Completion]:
        entries = [self._prefill(tuple(requests[r].prompt_ids)) for r, _ in batch]
        params = [requests[r].params for r, _ in batch]
        generators = [torch.Generator().manual_seed(sample_seed(p.seed, s)) for p, (_, s) in zip(params, batch)]
        max_new = max(p.max_tokens for p in params)
        past = self._batched_cache(entries, max_new)
        positions = torch.tensor([[e.length] for e in entries], device=self.device)
        logits = torch.stack([e.last_logits for e in entries])
        generated: list[list[int]] = [[] for _ in batch]
        finish: list[str | None] = [None] * len(batch)
        for _ in range(max_new):
            next_ids = []
            for i, p in enumerate(params):
                if finish[i] is not None:
                    next_ids.append(self.pad_id)
                    continue
                token = sample_token(logits[i], p.temperature, p.top_p, generators[i])
                next_ids.append(token)
                if token in self.eos_ids:
                    finish[i] = "stop"
                    continue
                generated[i].append(token)
                self.stats.generated_tokens += 1
                if p.stop and self._hit_stop(generated[i], p.stop):
                    finish[i] = "stop"
                elif len(generated[i]) >= p.max_tokens:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            step_ids = torch.tensor(next_ids, device=self.device).unsqueeze(-1)
            out = self.model(
                input_ids=step_ids,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past, positions = out.past_key_values, positions + 1
            logits = out.logits[:, -1, :].float().cpu()
        return [self._completion(ids, reason or "length", p) for ids, reason, p in zip(generated, finish, params)]

    def _hit_stop(self, ids: list[int], stop: tuple[str, ...]) -> bool:
        tail = decode(self.tokenizer, ids[-_STOP_LOOKBACK_TOKENS:])
        return any(s in tail for s in stop)

    def _completion(self, ids: list[int], reason: str, params) -> Completion:
        return Completion(token_ids=ids, text=completion_text(self.tokenizer, ids, params.stop), finish_reason=reason)

    def close(self) -> None:
        self.model = None
        self._prefix_cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
