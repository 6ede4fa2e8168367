"""transformers generation with prefix reuse and per-sample seeds: the CPU and test default.

Two things `model.generate` does not do, and why this loop exists:
- Prefix reuse. The prover sends every prefix of a trace; they share the prompt and the
  thinking up to each cut. Each prompt is prefilled on top of the KV cache of the most
  similar prompt computed recently (cropped to their common prefix), so a trace's prefill
  costs about one trace length instead of the sum of its prefix lengths, and the K samples
  of a prompt share one prefill. The cache outlives a `generate` call, because the next call
  often continues this one's prompts (budget forcing answers after each continuation, then
  continues again: `pipeline.extrapolation`); it keeps the most recently used prompts, up to
  `prefix_cache_entries` (a shard's traces) and `prefix_cache_tokens` (memory, whatever the
  trace length). `stats` reports computed against naive prefill tokens.
- Packed prefill. A prover prefix adds one episode to the previous prefix, a few dozen tokens,
  and a forward pass has a fixed cost that such a pass would mostly pay for nothing. Prompts of
  one call are prefilled in packs (`plan_packs`, by request order): one forward pass over all
  their new tokens, each attending to its donor's KV and its own tokens under a block mask
  (`pack_layout`).
- Per-sample seeds. Each sample draws from its own `torch.Generator`, seeded from the
  request seed and the sample index, so it does not depend on batching or sharding.
Decoding is batched across requests with continuous batching: a finished row leaves the batch
and a waiting one takes its place, so a batch does not decode until its longest row ends. The
samples of one prompt share its KV cache instead of copying it per row
(`pipeline.backends.shared_prefix`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from pipeline.backends.base import Completion, GenerationStats, Request, SamplingParams, completion_text
from pipeline.backends.shared_prefix import SharedPrefixBatch, extending_cache, install
from pipeline.tokens import decode

_STOP_LOOKBACK_TOKENS = 16
_NUCLEUS_CANDIDATES = 1024
# Packed prefill: prompts of one call are prefilled together, up to this many new tokens and
# prompts per forward pass. A forward pass costs about 90 ms of fixed overhead on 2 CPU cores, so
# 40 new tokens cost 3.9 ms each and 400 cost 1.6 ms each; past a few hundred the attention mask
# (new x (past + new)) starts to cost more than the overhead it saves.
_PACK_TOKENS = 512
_PACK_PROMPTS = 16


def sample_seed(seed: int, sample_index: int) -> int:
    return (seed * 1_000_003 + sample_index * 7_919 + 12_345) % (2**63 - 1)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Temperature + nucleus sampling of one token from one row of logits."""
    return sample_tokens(logits[None], [temperature], [top_p], [generator])[0]


def sample_tokens(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
                  generators: list[torch.Generator]) -> list[int]:
    """Temperature + nucleus sampling of one token per row of `logits` [rows, vocab], each row
    with its own settings and generator.

    The softmax and the partial sort run once for the whole batch (row by row they cost a tenth
    of a decoding step); each row then draws from its own nucleus with its own generator, so a
    row's token does not depend on the other rows. The nucleus is searched among the top 1024
    tokens first; only when those hold less than `top_p` of the mass is the row fully sorted.
    """
    tokens: list[int] = [0] * len(temperatures)
    hot = [i for i, t in enumerate(temperatures) if t > 0]
    for i in range(len(temperatures)):
        if temperatures[i] <= 0:
            tokens[i] = int(torch.argmax(logits[i]))
    if not hot:
        return tokens
    index = torch.tensor(hot, dtype=torch.long)
    probs = torch.softmax(logits[index] / torch.tensor([[temperatures[i]] for i in hot], dtype=logits.dtype), dim=-1)
    top_values, top_indices = torch.topk(probs, min(_NUCLEUS_CANDIDATES, probs.shape[-1]))
    for row, i in enumerate(hot):
        if top_ps[i] >= 1.0:
            tokens[i] = int(torch.multinomial(probs[row], 1, generator=generators[i]))
            continue
        values, indices = top_values[row], top_indices[row]
        if float(values.sum()) < top_ps[i]:
            values, indices = torch.sort(probs[row], descending=True)
        cumulative = torch.cumsum(values, dim=-1)
        values = values.masked_fill(cumulative - values > top_ps[i], 0.0)  # smallest set reaching top_p
        tokens[i] = int(indices[torch.multinomial(values, 1, generator=generators[i])])
    return tokens


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


def plan_packs(prompts: list[tuple[int, ...]], budget: int = _PACK_TOKENS, most: int = _PACK_PROMPTS
               ) -> dict[tuple[int, ...], list[tuple[int, ...]]]:
    """Group a call's distinct prompts, in request order, into packs prefilled together.

    A prompt's new tokens are estimated from the previous prompt (a prover's prefixes of one
    trace share all but an episode). The grouping depends only on the prompts, not on the batch
    size or on when rows join, so a sample does not depend on batching."""
    packs: list[list[tuple[int, ...]]] = []
    tokens, previous = 0, ()
    for ids in dict.fromkeys(prompts):
        new = len(ids) - min(common_prefix_length(previous, ids), len(ids) - 1)
        if not packs or len(packs[-1]) >= most or (tokens + new > budget and packs[-1]):
            packs.append([])
            tokens = 0
        packs[-1].append(ids)
        tokens += new
        previous = ids
    return {ids: pack for pack in packs for ids in pack}


@dataclass
class PackLayout:
    """One forward pass that prefills several prompts: each prompt's new tokens attend to its
    donor's cached KV (`donors`: cached entries and how many of their tokens, concatenated as the
    past) or to an earlier prompt of the pack, then to themselves causally."""

    input_ids: list[int]
    positions: list[int]
    mask: torch.Tensor  # [new, past + new] bool: True where a new token attends
    columns: list[list[int]]  # per prompt: the past+new column of each of its positions
    last_rows: list[int]  # per prompt: the new-token row of its last position (its next-token logits)
    reused: list[int]  # per prompt: positions taken from a donor
    donors: list[tuple["_Prefilled", int]]


def pack_layout(prompts: list[tuple[int, ...]], cached: list[tuple[int, "_Prefilled | None"]]) -> PackLayout:
    """Lay out `prompts` for one forward pass. `cached[i]` is prompt i's best cached donor (shared
    length, entry); an earlier prompt of the pack sharing more is used instead."""
    donors: list[tuple[object, int]] = []
    plan = []  # (shared, ("cache", donor index) | ("pack", prompt index))
    for i, ids in enumerate(prompts):
        shared, source = cached[i][0] if cached[i][1] is not None else 0, None
        for j in range(i):
            in_pack = min(common_prefix_length(prompts[j], ids), len(ids) - 1)
            if in_pack > shared:
                shared, source = in_pack, ("pack", j)
        if source is None and shared:
            entry = cached[i][1]
            index = next((d for d, (e, _) in enumerate(donors) if e is entry), None)
            if index is None:
                index = len(donors)
                donors.append((entry, 0))
            donors[index] = (entry, max(donors[index][1], shared))
            source = ("cache", index)
        plan.append((shared, source))
    past_offsets, past = [], 0
    for _, length in donors:
        past_offsets.append(past)
        past += length
    input_ids, positions, columns, last_rows, reused = [], [], [], [], []
    for i, (ids, (shared, source)) in enumerate(zip(prompts, plan)):
        if source is None:
            head = []
        elif source[0] == "cache":
            head = list(range(past_offsets[source[1]], past_offsets[source[1]] + shared))
        else:
            head = columns[source[1]][:shared]
        start = past + len(input_ids)
        columns.append(head + list(range(start, start + len(ids) - shared)))
        input_ids += ids[shared:]
        positions += range(shared, len(ids))
        last_rows.append(len(input_ids) - 1)
        reused.append(shared)
    mask = torch.zeros((len(input_ids), past + len(input_ids)), dtype=torch.bool)
    for i, (ids, shared) in enumerate(zip(prompts, reused)):
        own = torch.arange(len(ids))
        rows = slice(last_rows[i] + 1 - (len(ids) - shared), last_rows[i] + 1)
        mask[rows, torch.tensor(columns[i])] = own[None, :] <= own[shared:, None]  # causal along its own columns
    return PackLayout(input_ids, positions, mask, columns, last_rows, reused, donors)  # type: ignore[arg-type]


class _Prefilled:
    """KV cache (batch 1) of a prompt and the logits of its last position."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], last_logits: torch.Tensor):
        self.kv = kv
        self.last_logits = last_logits

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[-2]


@dataclass
class _Row:
    """One sample being decoded: sample `sample` of request `request`."""

    request: int
    sample: int
    params: SamplingParams
    entry: _Prefilled
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)
    finish: str | None = None


class TransformersBackend:
    def __init__(self, model, tokenizer, batch_size: int = 16, prefix_cache_entries: int = 64,
                 prefix_cache_tokens: int = 32_768, reuse_prefixes: bool = True):
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
        self._prefix_cache_entries = prefix_cache_entries  # enough for a shard's traces (budget forcing reuses them)
        self._prefix_cache_tokens = prefix_cache_tokens  # and a bound on memory, whatever the trace length
        self._reuse_prefixes = reuse_prefixes  # False: only identical prompts share a prefill (the naive cost)
        self._packs: dict[tuple[int, ...], list[tuple[int, ...]]] = {}  # prompt -> the prompts prefilled with it
        install(model)  # decoding reads each prompt's KV cache once per step, not once per sample

    def generate(self, requests: list[Request], on_done=None) -> list[list[Completion]]:
        """Continuous batching: up to `batch_size` rows decode together; finished rows leave and
        waiting ones join (`_decode`), in request order so neighbouring prompts (prefixes of one
        trace) share the most prefill."""
        rows = [(r, s) for r in range(len(requests)) for s in range(requests[r].params.n)]
        results: list[list[Completion | None]] = [[None] * req.params.n for req in requests]
        self._packs = plan_packs([tuple(req.prompt_ids) for req in requests]) if self._reuse_prefixes else {}
        if rows:
            self._decode(requests, rows, results, on_done)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _prefill(self, ids: tuple[int, ...]) -> _Prefilled:
        """Prefill `ids`, reusing the longest common prefix of a recently prefilled prompt."""
        if ids in self._prefix_cache:
            self._prefix_cache.move_to_end(ids)
            return self._prefix_cache[ids]
        reuse, donor = self._donor(ids)
        past = None
        if donor is not None:
            past = extending_cache([(k[:, :, :reuse], v[:, :, :reuse]) for k, v in donor.kv])
        new = torch.tensor([ids[reuse:]], device=self.device)
        positions = torch.arange(reuse, len(ids), device=self.device).unsqueeze(0)
        out = self.model(input_ids=new, position_ids=positions, past_key_values=past, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.stats.prefill_passes += 1
        return self._remember(ids, _Prefilled(kv, out.logits[0, -1].float().cpu()), reuse)

    def _donor(self, ids: tuple[int, ...]) -> tuple[int, "_Prefilled | None"]:
        """The cached prompt sharing the longest prefix with `ids` (at most all but its last token)."""
        reuse, donor = 0, None
        for key, entry in self._prefix_cache.items() if self._reuse_prefixes else ():
            shared = min(common_prefix_length(key, ids), len(ids) - 1, entry.length)
            if shared > reuse:
                reuse, donor = shared, entry
        return reuse, donor

    def _remember(self, ids: tuple[int, ...], entry: "_Prefilled", reused: int) -> "_Prefilled":
        self.stats.prompt_tokens += len(ids)
        self.stats.prefill_tokens += len(ids) - reused
        self._prefix_cache[ids] = entry
        while len(self._prefix_cache) > 1 and (
            len(self._prefix_cache) > self._prefix_cache_entries
            or sum(e.length for e in self._prefix_cache.values()) > self._prefix_cache_tokens
        ):
            self._prefix_cache.popitem(last=False)
        return entry

    @torch.inference_mode()
    def _prefill_pack(self, prompts: list[tuple[int, ...]]) -> None:
        """Prefill `prompts` in one forward pass and cache each (see `pack_layout`)."""
        todo = [ids for ids in dict.fromkeys(prompts) if ids not in self._prefix_cache]
        if len(todo) < 2:
            for ids in todo:
                self._prefill(ids)
            return
        layout = pack_layout(todo, [self._donor(ids) for ids in todo])
        donors = [
            (torch.cat([d.kv[layer][0][:, :, :n] for d, n in layout.donors], dim=2),
             torch.cat([d.kv[layer][1][:, :, :n] for d, n in layout.donors], dim=2))
            for layer in range(len(layout.donors[0][0].kv))] if layout.donors else None
        past = extending_cache(donors, layers=self.model.config.num_hidden_layers)
        out = self.model(
            input_ids=torch.tensor([layout.input_ids], device=self.device),
            position_ids=torch.tensor([layout.positions], device=self.device),
            attention_mask=layout.mask.to(self.device)[None, None],
            past_key_values=past, use_cache=True,
            logits_to_keep=torch.tensor(layout.last_rows, device=self.device),
        )
        self.stats.prefill_passes += 1
        layers = out.past_key_values.layers
        for i, ids in enumerate(todo):
            columns = torch.tensor(layout.columns[i], device=self.device)
            kv = [(layer.keys.index_select(2, columns), layer.values.index_select(2, columns)) for layer in layers]
            self._remember(ids, _Prefilled(kv, out.logits[0, i].float().cpu()), layout.reused[i])

    def _refill_threshold(self) -> int:
        """Finished rows to gather before rebuilding the batch: rebuilding copies the cache, so it
        waits for an eighth of the batch to be free (decoding a step costs about the same with a
        few idle rows)."""
        return max(1, self.batch_size // 8)

    @torch.inference_mode()
    def _decode(self, requests: list[Request], rows: list[tuple[int, int]], results, on_done) -> None:
        batch = SharedPrefixBatch(capacity=max(req.params.max_tokens for req in requests))
        longest = max(len(req.prompt_ids) for req in requests)  # sizes the batch's prompt buffer once
        live: list[_Row] = []  # the batch's rows, in cache order
        waiting = iter(rows)
        remaining = len(rows)
        logits = torch.empty(0)
        while True:
            finished = [i for i, row in enumerate(live) if row.finish is not None]
            free = self.batch_size - len(live) + len(finished)
            joining = remaining - (len(live) - len(finished))  # rows not yet in the batch
            if joining and (len(finished) == len(live) or free >= min(self._refill_threshold(), joining)):
                live, logits = self._rebuild(batch, requests, live, logits, [next(waiting) for _ in range(min(free, joining))], longest)
            elif finished and 2 * len(finished) >= len(live):
                live, logits = self._rebuild(batch, requests, live, logits, [], longest)
            if not live:
                return
            active = [i for i, row in enumerate(live) if row.finish is None]
            drawn = sample_tokens(logits[torch.tensor(active, dtype=torch.long)], [live[i].params.temperature for i in active],
                                  [live[i].params.top_p for i in active], [live[i].generator for i in active])
            next_ids = [self.pad_id] * len(live)
            for i, token in zip(active, drawn):
                row = live[i]
                next_ids[i] = token
                self._append(row, token)
                if row.finish is not None:
                    results[row.request][row.sample] = self._completion(row.generated, row.finish, row.params)
                    remaining -= 1
                    if on_done:
                        on_done(1)
            if remaining == 0:
                return
            fed = torch.tensor([row.finish is None for row in live])
            out = self.model(
                input_ids=torch.tensor(next_ids, device=self.device).unsqueeze(-1),
                position_ids=torch.tensor([[row.entry.length + len(row.generated) - 1] for row in live], device=self.device),
                past_key_values=batch.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            batch.advance(fed.to(self.device))
            logits = out.logits[:, -1, :].float().cpu()

    def _rebuild(self, batch: SharedPrefixBatch, requests: list[Request], live: list["_Row"], logits: torch.Tensor,
                 joining: list[tuple[int, int]], longest: int) -> tuple[list["_Row"], torch.Tensor]:
        """Drop the batch's finished rows and prefill and add `joining` ones."""
        keep = [i for i, row in enumerate(live) if row.finish is None]
        new = []
        started = time.perf_counter()
        for r, s in joining:
            params = requests[r].params
            ids = tuple(requests[r].prompt_ids)
            if ids not in self._prefix_cache and ids in self._packs:
                self._prefill_pack(self._packs[ids])
            entry = self._prefill(ids)
            new.append(_Row(r, s, params, entry, torch.Generator().manual_seed(sample_seed(params.seed, s))))
        self.stats.prefill_seconds += time.perf_counter() - started
        batch.rebuild(keep, [(row.entry, row.entry.kv) for row in new], width=longest)
        logits = torch.cat(([logits[keep]] if keep else []) + [row.entry.last_logits[None] for row in new]) if keep or new else logits
        return [live[i] for i in keep] + new, logits

    def _append(self, row: "_Row", token: int) -> None:
        """Record a sampled token and whether it ends the row (EOS, a stop string, the budget)."""
        if token in self.eos_ids:
            row.finish = "stop"
            return
        row.generated.append(token)
        self.stats.generated_tokens += 1
        if row.params.stop and self._hit_stop(row.generated, row.params.stop):
            row.finish = "stop"
        elif len(row.generated) >= row.params.max_tokens:
            row.finish = "length"

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
