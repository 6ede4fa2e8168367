"""Decoding attention that reads a shared prompt's KV cache once for all its samples.

The prover decodes K answers after each prefix of a trace. Copying the prefix's KV cache
into K batch rows makes every decoding step read it K times, and that memory traffic, not
the model's arithmetic, is what decoding long prefixes costs. Here a decoding batch keeps
one left-padded KV prefix per distinct prompt and a small buffer per row for the tokens it
generates; attention is computed over the two parts separately (the prefix part with the
queries of all rows of that prompt stacked together) and merged exactly with their
log-sum-exp weights (cascade attention). Prefill still uses PyTorch SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "mrt_shared_prefix"


@dataclass(frozen=True)
class _SharedKV:
    """What the cache layer hands to the attention function instead of a key tensor."""

    layer: "SharedPrefixLayer"


class SharedPrefixLayer(DynamicLayer):
    """One layer's cache for a decoding batch: prefixes per prompt group, new tokens per row."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, prefix_valid: torch.Tensor,
                 rows_by_group: torch.Tensor, row_slot: torch.Tensor, batch: int, extra: int):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # [G, kv_heads, P, d]
        self.prefix_valid = prefix_valid  # [G, P] bool: False on left padding
        self.rows_by_group = rows_by_group  # [G, R] row index of each group member (padded with 0)
        self.row_slot = row_slot  # [B] flat index of each row in the [G * R] grid
        groups, heads, _, dim = prefix_keys.shape
        self.new_keys = prefix_keys.new_empty((batch, heads, extra, dim))
        self.new_values = prefix_values.new_empty((batch, heads, extra, dim))
        self.written = 0
        self.dtype, self.device, self.is_initialized = prefix_keys.dtype, prefix_keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        if self.written + new > self.new_keys.shape[2]:
            raise RuntimeError("generation ran past the reserved KV cache length")
        self.new_keys[:, :, self.written : self.written + new] = key_states
        self.new_values[:, :, self.written : self.written + new] = value_states
        self.written += new
        marker = _SharedKV(self)
        return marker, marker

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[2] + self.written


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None, scale: float):
    """Softmax attention returning (output, log-sum-exp) so partial results can be merged."""
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), values), lse


def shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Cascade attention for `SharedPrefixLayer` caches; plain SDPA for everything else."""
    if not isinstance(key, _SharedKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    layer = key.layer
    batch, heads, q_len, dim = query.shape
    if q_len != 1:
        raise RuntimeError("shared-prefix attention decodes one token per step")
    groups, kv_heads, _, _ = layer.prefix_keys.shape
    repeat = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    by_row = query.view(batch, kv_heads, repeat, dim)
    # Prefix part: every row of a group is a query position against the group's prefix.
    members = layer.rows_by_group.shape[1]
    stacked = by_row[layer.rows_by_group.reshape(-1)].view(groups, members, kv_heads, repeat, dim)
    stacked = stacked.permute(0, 2, 1, 3, 4).reshape(groups, kv_heads, members * repeat, dim)
    prefix_out, prefix_lse = _attend(stacked, layer.prefix_keys, layer.prefix_values, layer.prefix_valid[:, None, None, :], scale)
    def per_row(t: torch.Tensor) -> torch.Tensor:
        t = t.view(groups, kv_heads, members, repeat, -1).permute(0, 2, 1, 3, 4).reshape(groups * members, kv_heads, repeat, -1)
        return t[layer.row_slot]
    prefix_out, prefix_lse = per_row(prefix_out), per_row(prefix_lse)
    # Own part: each row against the tokens it generated itself.
    own = slice(0, layer.written)
    own_out, own_lse = _attend(by_row, layer.new_keys[:, :, own], layer.new_values[:, :, own], None, scale)
    top = torch.maximum(prefix_lse, own_lse)
    w_prefix, w_own = torch.exp(prefix_lse - top), torch.exp(own_lse - top)
    out = (prefix_out * w_prefix + own_out * w_own) / (w_prefix + w_own)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def install(model) -> None:
    """Make `model` use shared-prefix attention (SDPA for prefill, cascade for decoding)."""
    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    model.set_attn_implementation(ATTENTION_NAME)


def shared_prefix_layers(prefixes: list[list[tuple[torch.Tensor, torch.Tensor]]], row_groups: list[int], extra: int):
    """Cache layers for a batch whose row i continues prompt `row_groups[i]` of `prefixes`.

    `prefixes[g]` is a prompt's per-layer (keys, values) with batch size 1; they are
    left-padded to a common length once, and never copied per row.
    """
    device = prefixes[0][0][0].device
    lengths = [kv[0][0].shape[2] for kv in prefixes]
    width, groups = max(lengths), len(prefixes)
    valid = torch.zeros((groups, width), dtype=torch.bool, device=device)
    for g, length in enumerate(lengths):
        valid[g, width - length :] = True
    members: list[list[int]] = [[] for _ in range(groups)]
    for row, group in enumerate(row_groups):
        members[group].append(row)
    most = max(len(m) for m in members)
    rows_by_group = torch.tensor([m + [m[0]] * (most - len(m)) for m in members], device=device)
    row_slot = torch.empty(len(row_groups), dtype=torch.long, device=device)
    for group, rows in enumerate(members):
        for position, row in enumerate(rows):
            row_slot[row] = group * most + position
    layers = []
    for layer in range(len(prefixes[0])):
        k0 = prefixes[0][layer][0]
        shape = (groups, k0.shape[1], width, k0.shape[3])
        keys, values = k0.new_zeros(shape), k0.new_zeros(shape)
        for g, kv in enumerate(prefixes):
            keys[g, :, width - lengths[g] :] = kv[layer][0][0]
            values[g, :, width - lengths[g] :] = kv[layer][1][0]
        layers.append(SharedPrefixLayer(keys, values, valid, rows_by_group, row_slot, len(row_groups), extra))
    return layers
