"""Decoding attention that reads a shared prompt's KV cache once for all its samples.

The prover decodes K answers after each prefix of a trace. Copying the prefix's KV cache
into K batch rows makes every decoding step read it K times, and that memory traffic, not
the model's arithmetic, is what decoding long prefixes costs. Here a decoding batch keeps
one left-padded KV prefix per distinct prompt and a small buffer per row for the tokens it
generates; attention is computed over the two parts separately (the prefix part with the
queries of all rows of that prompt stacked together) and merged exactly with their
log-sum-exp weights (cascade attention). On CPU each part is one call of PyTorch's fused
attention kernel, which returns the log-sum-exp too.

A prefill with a mask (on top of a reused prompt's KV cache, or a packed one; `ExtendingLayer`)
stacks the query heads that share a key head as query rows of that head, so the keys and values
are not copied once per query head as transformers' SDPA path does for grouped-query attention;
the mask is tiled to match once per forward pass. Each row is computed bit for bit as SDPA
computes it (the same kernel over the same keys under the same mask row), so prover and eval
tables stay those of plain SDPA. A 440-token step on 5000 cached tokens: a fifth less time.
Other prefills use PyTorch SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "mrt_shared_prefix"


@dataclass(frozen=True)
class _SharedKV:
    """What the cache layer hands to the attention function instead of a key tensor."""

    layer: "SharedPrefixLayer"


# PyTorch's fused CPU attention that also returns the log-sum-exp (what the two parts are merged
# with): one kernel instead of six small ops, each of which pays a thread-pool round trip on CPU.
_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@dataclass
class _Rows:
    """What all layers of one decoding batch share: the row-to-prompt layout and each row's
    count of own tokens in the cache."""

    valid: torch.Tensor  # [G, P] bool: False on a prompt's left padding
    rows_by_group: torch.Tensor  # [G, R] row index of each group member (padded with its first)
    row_slot: torch.Tensor  # [B] flat index of each row in the [G * R] grid
    lengths: torch.Tensor  # [B] own tokens written per row; the next one goes at this column
    _prefix_bias: torch.Tensor | None = None  # built once per batch layout, for all steps and layers
    _own: tuple | None = None  # (lengths it was built for, bias, width): once per step, for all layers

    def masks(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(prefix bias [G, 1, 1, P], own bias [B, 1, 1, width], width): 0 where a row attends, -inf
        elsewhere. Own columns go up to each row's length, the token this step writes included."""
        if self._prefix_bias is None or self._prefix_bias.dtype != dtype:
            self._prefix_bias = _bias(self.valid, dtype)
        if self._own is None or self._own[0] is not self.lengths or self._own[1].dtype != dtype:
            width = int(self.lengths.max()) + 1
            own = torch.arange(width, device=self.lengths.device)[None, :] <= self.lengths[:, None]
            self._own = (self.lengths, _bias(own, dtype), width)
        return self._prefix_bias, self._own[1], self._own[2]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask (0 where allowed, -inf elsewhere) of a boolean one, in its shape."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[rows, columns] allowed -> additive [rows, 1, 1, columns], broadcast over heads and queries."""
    return _additive(allowed, dtype)[:, None, None, :]


@dataclass(frozen=True)
class _Extending:
    """What `ExtendingLayer` hands the attention function instead of a key tensor."""

    layer: "ExtendingLayer"


class _FoldedMask:
    """A prefill's mask in the folded layout (query heads of a key head stacked as rows), built
    once per forward pass for all layers: tiling it per layer costs as much as it saves."""

    def __init__(self):
        self.source: torch.Tensor | None = None
        self.folded: torch.Tensor | None = None

    def get(self, mask: torch.Tensor, repeat: int, dtype: torch.dtype) -> torch.Tensor:
        if self.source is not mask or self.folded is None or self.folded.dtype != dtype or self.folded.shape[2] != mask.shape[2] * repeat:
            additive = _additive(mask, dtype) if mask.dtype == torch.bool else mask.to(dtype)
            self.source, self.folded = mask, additive.repeat(1, 1, repeat, 1)
        return self.folded


class ExtendingLayer(DynamicLayer):
    """One layer's cache for a masked prefill (on top of cached KV, or from nothing): it grows like
    `DynamicLayer`, and hands attention a marker so it can fold the query heads (see the module)."""

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None, masks: _FoldedMask):
        super().__init__()
        self.masks = masks
        if keys is not None:
            self.keys, self.values = keys, values
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        super().update(key_states, value_states, *args, **kwargs)
        marker = _Extending(self)
        return marker, marker


def extending_cache(kv: list[tuple[torch.Tensor, torch.Tensor]] | None, layers: int = 0) -> DynamicCache:
    """A cache for a masked prefill after `kv` (per layer (keys, values)), or after nothing (`layers` empty ones)."""
    masks = _FoldedMask()
    cache = DynamicCache()
    cache.layers = [ExtendingLayer(keys, values, masks) for keys, values in (kv or [(None, None)] * layers)]
    return cache


class SharedPrefixLayer(DynamicLayer):
    """One layer's cache for a decoding batch: prefixes per prompt group, own tokens per row."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, own_keys: torch.Tensor,
                 own_values: torch.Tensor, rows: _Rows):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # [G, kv_heads, P, d]
        self.own_keys, self.own_values = own_keys, own_values  # [B, kv_heads, capacity, d]
        self.rows = rows
        self.dtype, self.device, self.is_initialized = prefix_keys.dtype, prefix_keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[2] != 1:
            raise RuntimeError("shared-prefix attention decodes one token per step")
        lengths = self.rows.lengths
        if int(lengths.max()) >= self.own_keys.shape[2]:
            raise RuntimeError("generation ran past the reserved KV cache length")
        batch = torch.arange(lengths.shape[0], device=lengths.device)
        self.own_keys[batch, :, lengths] = key_states[:, :, 0]
        self.own_values[batch, :, lengths] = value_states[:, :, 0]
        marker = _SharedKV(self)
        return marker, marker

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[2] + int(self.rows.lengths.max()) + 1


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float):
    """Softmax attention returning (output, log-sum-exp) so partial results can be merged; `bias`
    is an additive mask (0 or -inf) broadcast over heads and queries."""
    if _FUSED_CPU is not None and query.device.type == "cpu":
        out, lse = _FUSED_CPU(query, keys, values, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse.unsqueeze(-1)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale + bias
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), values), lse


def _merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over two disjoint sets of keys from each set's output and log-sum-exp."""
    top = torch.maximum(lse_a, lse_b)
    w_a, w_b = torch.exp(lse_a - top), torch.exp(lse_b - top)
    return (out_a * w_a + out_b * w_b) / (w_a + w_b)


def _extending_attention(module, query, marker: _Extending, attention_mask, dropout, scaling, **kwargs):
    """Masked prefill attention with the query heads of each key head folded into its query rows: one
    fused kernel call over the keys as they are, instead of SDPA over keys copied once per query head.
    Each row sees the same keys under the same mask row as in SDPA, so its output is the same."""
    layer = marker.layer
    batch, heads, q_len, dim = query.shape
    kv_heads = layer.keys.shape[1]
    foldable = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] == 1
    if _FUSED_CPU is None or query.device.type != "cpu" or not foldable or heads == kv_heads or dropout:
        return sdpa_attention_forward(module, query, layer.keys, layer.values, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    repeat = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    folded = query.reshape(batch, kv_heads, repeat * q_len, dim)
    mask = layer.masks.get(attention_mask, repeat, query.dtype)
    out, _ = _FUSED_CPU(folded, layer.keys, layer.values, 0.0, False, attn_mask=mask, scale=scale)
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None


def shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Cascade attention for `SharedPrefixLayer` caches, folded attention for `ExtendingLayer` ones, plain
    SDPA for everything else."""
    if isinstance(key, _Extending):
        return _extending_attention(module, query, key, attention_mask, dropout, scaling, **kwargs)
    if not isinstance(key, _SharedKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    layer, rows = key.layer, key.layer.rows
    batch, heads, q_len, dim = query.shape
    groups, kv_heads, _, _ = layer.prefix_keys.shape
    repeat = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    by_row = query.view(batch, kv_heads, repeat, dim)
    # Prefix part: every row of a group is a query position against the group's prefix.
    members = rows.rows_by_group.shape[1]
    stacked = by_row[rows.rows_by_group.reshape(-1)].view(groups, members, kv_heads, repeat, dim)
    stacked = stacked.permute(0, 2, 1, 3, 4).reshape(groups, kv_heads, members * repeat, dim)
    prefix_bias, own_bias, width = rows.masks(query.dtype)
    prefix_out, prefix_lse = _attend(stacked, layer.prefix_keys, layer.prefix_values, prefix_bias, scale)
    def per_row(t: torch.Tensor) -> torch.Tensor:
        t = t.view(groups, kv_heads, members, repeat, -1).permute(0, 2, 1, 3, 4).reshape(groups * members, kv_heads, repeat, -1)
        return t[rows.row_slot]
    prefix_out, prefix_lse = per_row(prefix_out), per_row(prefix_lse)
    # Own part: each row against the tokens it generated itself (columns up to its length).
    own_out, own_lse = _attend(by_row, layer.own_keys[:, :, :width], layer.own_values[:, :, :width], own_bias, scale)
    out = _merge(prefix_out, prefix_lse, own_out, own_lse)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _group_layout(row_groups: list[int], groups: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows_by_group, row_slot): where each row sits among its group's members."""
    members: list[list[int]] = [[] for _ in range(groups)]
    for row, group in enumerate(row_groups):
        members[group].append(row)
    most = max(len(m) for m in members)
    rows_by_group = torch.tensor([m + [m[0]] * (most - len(m)) for m in members], device=device)
    row_slot = torch.empty(len(row_groups), dtype=torch.long, device=device)
    for group, rows in enumerate(members):
        for position, row in enumerate(rows):
            row_slot[row] = group * most + position
    return rows_by_group, row_slot


class SharedPrefixBatch:
    """A decoding batch whose rows come and go (continuous batching).

    Each row continues one prompt (a group: a prompt's samples share its prefilled KV, stored
    once). `rebuild` drops finished rows and adds new ones in one pass, so a batch stays full
    while requests are waiting instead of decoding until its longest row ends. Every row keeps
    its own tokens, positions and results: a row's logits do not depend on the other rows.

    The prompts' KV lives in one buffer per layer, a slot per prompt, right-aligned; attention
    reads a view of the occupied slots, only as wide as the longest prompt in it. A rebuild
    writes the new prompts into free slots and moves a kept prompt only to fill the hole of a
    finished one, instead of copying every kept prompt (with 5000-token prompts, those copies
    were a sixth of a prover run). The buffer grows when it must, to the longest prompt the
    caller will still add (`width`).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity  # own tokens a row may feed back (its max_tokens)
        self.cache = DynamicCache()
        self.cache.layers = []
        self.group_keys: list[object] = []  # one prompt entry per occupied slot
        self.group_lengths: list[int] = []  # its prompt length
        self.row_groups: list[int] = []  # slot of each row
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer [slots, kv_heads, width, d]
        self._finite_from: list[int] = []  # per slot: the first column holding written (or zeroed) values

    def rebuild(self, keep: list[int], new: list[tuple[object, list[tuple[torch.Tensor, torch.Tensor]]]],
                width: int = 0) -> None:
        """Keep rows `keep` (in that order) and append one row per `(key, kv)` in `new`.

        `key` names the prompt (rows with the same key share one prefix); `kv` is the prompt's
        per-layer (keys, values) with batch size 1. Prompts left without rows free their slots.
        `width`: the longest prompt later rebuilds may add (a hint for sizing the buffer)."""
        old_layers = self.cache.layers
        staying = sorted({self.row_groups[i] for i in keep})
        slot_of = self._compact(staying)
        order = sorted(staying, key=slot_of.__getitem__)
        keys = [self.group_keys[g] for g in order]
        lengths = [self.group_lengths[g] for g in order]
        index_of = {id(key): slot for slot, key in enumerate(keys)}
        row_groups = [slot_of[self.row_groups[i]] for i in keep]
        added: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        for key, kv in new:
            if id(key) not in index_of:
                index_of[id(key)] = len(keys)
                keys.append(key)
                lengths.append(kv[0][0].shape[2])
                added.append((len(keys) - 1, kv))
            row_groups.append(index_of[id(key)])
        self.group_keys, self.group_lengths, self.row_groups = keys, lengths, row_groups
        if not row_groups:
            self.cache.layers, self._buffers, self._finite_from = [], [], []
            return
        if added:
            self._reserve(len(keys), max(lengths), max(width, *lengths), lengths[: len(staying)], added[0][1])
        for slot, kv in added:
            for (buffer_k, buffer_v), (k, v) in zip(self._buffers, kv):
                buffer_k[slot, :, buffer_k.shape[2] - k.shape[2]:] = k[0]
                buffer_v[slot, :, buffer_v.shape[2] - v.shape[2]:] = v[0]
            self._written(slot, lengths[slot])
        view = max(lengths)
        self._zero_padding(len(keys), view)
        device = self._buffers[0][0].device
        valid = torch.arange(view, device=device)[None, :] >= torch.tensor([view - n for n in lengths], device=device)[:, None]
        rows_by_group, row_slot = _group_layout(row_groups, len(keys), device)
        keep_index = torch.tensor(keep, dtype=torch.long, device=device)
        old_lengths = old_layers[0].rows.lengths[keep_index] if old_layers else torch.zeros(0, dtype=torch.long, device=device)
        rows = _Rows(valid, rows_by_group, row_slot, torch.cat([old_lengths, torch.zeros(len(new), dtype=torch.long, device=device)]))
        layers = []
        for layer, (buffer_k, buffer_v) in enumerate(self._buffers):
            own_shape = (len(new), buffer_k.shape[1], self.capacity, buffer_k.shape[3])
            own_k, own_v = [buffer_k.new_zeros(own_shape)], [buffer_k.new_zeros(own_shape)]
            if old_layers:
                own_k.insert(0, old_layers[layer].own_keys[keep_index])
                own_v.insert(0, old_layers[layer].own_values[keep_index])
            start = buffer_k.shape[2] - view
            layers.append(SharedPrefixLayer(buffer_k[: len(keys), :, start:], buffer_v[: len(keys), :, start:],
                                            torch.cat(own_k), torch.cat(own_v), rows))
        self.cache.layers = layers

    def _compact(self, staying: list[int]) -> dict[int, int]:
        """Move staying prompts from the tail into the slots of finished ones, so the staying prompts
        occupy the first `len(staying)` slots; returns old slot -> new slot."""
        target, occupied = len(staying), set(staying)
        holes = [s for s in range(target) if s not in occupied]
        movers = [s for s in staying if s >= target]
        slot_of = {s: s for s in staying if s < target}
        for hole, mover in zip(holes, movers):
            n = self.group_lengths[mover]
            for buffer_k, buffer_v in self._buffers:
                buffer_k[hole, :, -n:] = buffer_k[mover, :, -n:]
                buffer_v[hole, :, -n:] = buffer_v[mover, :, -n:]
            self._written(hole, n)
            slot_of[mover] = hole
        return slot_of

    def _written(self, slot: int, length: int) -> None:
        width = self._buffers[0][0].shape[2]
        self._finite_from[slot] = min(self._finite_from[slot], width - length)

    def _zero_padding(self, slots: int, view: int) -> None:
        """Zero the left padding the attention view will read where nothing was written: it is masked,
        but uninitialized memory could hold NaN, and a masked NaN still poisons the softmax."""
        start = self._buffers[0][0].shape[2] - view
        for slot in range(slots):
            if self._finite_from[slot] > start:
                for buffer_k, buffer_v in self._buffers:
                    buffer_k[slot, :, start : self._finite_from[slot]] = 0
                    buffer_v[slot, :, start : self._finite_from[slot]] = 0
                self._finite_from[slot] = start

    def _reserve(self, slots: int, longest: int, width: int, stored: list[int],
                 like: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Make the buffers hold `slots` prompts of up to `longest` tokens; if they do not, grow them to
        `width` columns and half again the slots, so the next rebuilds write in place. The prompts in
        the first slots (their lengths: `stored`) are copied over. The buffers are not zeroed (that
        would touch every page of a generous size): `_zero_padding` zeroes what a view reads unwritten."""
        if self._buffers and self._buffers[0][0].shape[0] >= slots and self._buffers[0][0].shape[2] >= longest:
            return
        buffers = []
        for layer, (k, _) in enumerate(like):
            shape = (slots + slots // 2, k.shape[1], max(width, longest), k.shape[3])
            grown_k, grown_v = k.new_empty(shape), k.new_empty(shape)
            if stored:
                old_k, old_v = self._buffers[layer]
                kept, n = len(stored), max(stored)
                grown_k[:kept, :, -n:] = old_k[:kept, :, -n:]
                grown_v[:kept, :, -n:] = old_v[:kept, :, -n:]
            buffers.append((grown_k, grown_v))
        self._buffers = buffers
        width = buffers[0][0].shape[2]
        self._finite_from = [width - max(stored) if slot < len(stored) else width for slot in range(buffers[0][0].shape[0])]

    def advance(self, fed: torch.Tensor) -> None:
        """After a forward step: rows where `fed` is True wrote one more own token."""
        if self.cache.layers:
            rows = self.cache.layers[0].rows
            rows.lengths = rows.lengths + fed.to(rows.lengths.dtype)


def install(model) -> None:
    """Make `model` use shared-prefix attention (SDPA for prefill, cascade for decoding)."""
    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    model.set_attn_implementation(ATTENTION_NAME)
