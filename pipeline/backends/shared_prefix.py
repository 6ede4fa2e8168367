"""Decoding attention that reads a shared prompt's KV cache once for all its samples.

The prover decodes K answers after each prefix of a trace. Copying the prefix's KV cache
into K batch rows makes every decoding step read it K times, and that memory traffic, not
the model's arithmetic, is what decoding long prefixes costs. Here a decoding batch keeps
one left-padded KV prefix per distinct prompt and a small buffer per row for the tokens it
generates; attention is computed over the two parts separately (the prefix part with the
queries of all rows of that prompt stacked together) and merged exactly with their
log-sum-exp weights (cascade attention). On CPU each part is one call of PyTorch's fused
attention kernel, which returns the log-sum-exp too. Prefill still uses PyTorch SDPA.

Rows come and go (`SharedPrefixBatch.rebuild`): finished rows leave, waiting ones join with
their own prompts, so a batch stays full instead of decoding until its longest row ends. Each
row counts its own tokens, so rows that joined at different steps decode side by side.
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


def _bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))[:, None, None, :]


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


def shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Cascade attention for `SharedPrefixLayer` caches; plain SDPA for everything else."""
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
    top = torch.maximum(prefix_lse, own_lse)
    w_prefix, w_own = torch.exp(prefix_lse - top), torch.exp(own_lse - top)
    out = (prefix_out * w_prefix + own_out * w_own) / (w_prefix + w_own)
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


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dimension -2 (sequence) on the left to `width`."""
    return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))


class SharedPrefixBatch:
    """A decoding batch whose rows come and go (continuous batching).

    Each row continues one prompt (a group: a prompt's samples share its prefilled KV, stored
    once). `rebuild` drops finished rows and adds new ones in one pass, so a batch stays full
    while requests are waiting instead of decoding until its longest row ends. Every row keeps
    its own tokens, positions and results: a row's logits do not depend on the other rows.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity  # own tokens a row may feed back (its max_tokens)
        self.cache = DynamicCache()
        self.cache.layers = []
        self.group_keys: list[object] = []  # one prompt entry per group
        self.row_groups: list[int] = []

    def rebuild(self, keep: list[int], new: list[tuple[object, list[tuple[torch.Tensor, torch.Tensor]]]]) -> None:
        """Keep rows `keep` (in that order) and append one row per `(key, kv)` in `new`.

        `key` names the prompt (rows with the same key share one prefix); `kv` is the prompt's
        per-layer (keys, values) with batch size 1. Groups left without rows are dropped, and
        so are left-padding columns no remaining prompt needs."""
        old_layers = self.cache.layers
        kept_groups = sorted({self.row_groups[i] for i in keep})
        group_of = {id(self.group_keys[g]): new_g for new_g, g in enumerate(kept_groups)}
        keys = [self.group_keys[g] for g in kept_groups]
        added_kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        row_groups = [group_of[id(self.group_keys[self.row_groups[i]])] for i in keep]
        for key, kv in new:
            if id(key) not in group_of:
                group_of[id(key)] = len(keys)
                keys.append(key)
                added_kv.append(kv)
            row_groups.append(group_of[id(key)])
        if not row_groups:
            self.cache.layers, self.group_keys, self.row_groups = [], [], []
            return
        device = (old_layers[0].prefix_keys if old_layers else added_kv[0][0][0]).device
        lengths_of_added = [kv[0][0].shape[2] for kv in added_kv]
        kept_index = torch.tensor(kept_groups, dtype=torch.long, device=device)
        kept_lengths = old_layers[0].rows.valid[kept_index].sum(dim=1).tolist() if old_layers else []
        width = max(kept_lengths + lengths_of_added)
        valid = torch.zeros((len(keys), width), dtype=torch.bool, device=device)
        for g, length in enumerate(kept_lengths + lengths_of_added):
            valid[g, width - length :] = True
        rows_by_group, row_slot = _group_layout(row_groups, len(keys), device)
        keep_index = torch.tensor(keep, dtype=torch.long, device=device)
        old_lengths = old_layers[0].rows.lengths[keep_index] if old_layers else torch.zeros(0, dtype=torch.long, device=device)
        lengths = torch.cat([old_lengths, torch.zeros(len(new), dtype=torch.long, device=device)])
        rows = _Rows(valid, rows_by_group, row_slot, lengths)
        layers = []
        for layer in range(len(old_layers) if old_layers else len(added_kv[0])):
            parts_k, parts_v = [], []
            if old_layers and kept_groups:
                old = old_layers[layer]
                parts_k.append(_left_pad(old.prefix_keys[kept_index][..., -max(kept_lengths):, :], width))
                parts_v.append(_left_pad(old.prefix_values[kept_index][..., -max(kept_lengths):, :], width))
            parts_k += [_left_pad(kv[layer][0], width) for kv in added_kv]
            parts_v += [_left_pad(kv[layer][1], width) for kv in added_kv]
            k0 = parts_k[0]
            own_shape = (len(new), k0.shape[1], self.capacity, k0.shape[3])
            own_k, own_v = [k0.new_zeros(own_shape)], [k0.new_zeros(own_shape)]
            if old_layers:
                own_k.insert(0, old_layers[layer].own_keys[keep_index])
                own_v.insert(0, old_layers[layer].own_values[keep_index])
            layers.append(SharedPrefixLayer(torch.cat(parts_k), torch.cat(parts_v), torch.cat(own_k), torch.cat(own_v), rows))
        self.cache.layers, self.group_keys, self.row_groups = layers, keys, row_groups

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
