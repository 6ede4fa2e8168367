"""Token <-> character offsets for a sequence of token ids, without changing the ids.

Episode boundaries are found in text but must be cut at token offsets. We map every token
to the character where its text starts in `decode(ids)`, so a character position can be
moved to the token boundary at or before it. The ids themselves are never re-encoded for
use: re-encoding only serves as a fast way to get offsets, and only when it reproduces
the very same ids.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_char_starts(tokenizer, ids: Sequence[int]) -> list[int]:
    """starts[i] = character where token i begins in decode(ids); starts[n] = len(text)."""
    ids = list(ids)
    text = decode(tokenizer, ids)
    if not ids:
        return [0]
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(encoded["input_ids"]) == ids:
            return [start for start, _ in encoded["offset_mapping"]] + [len(text)]
    # Slow path: prefix decodes (exact for byte-level and sentencepiece tokenizers).
    starts = [0]
    for i in range(1, len(ids)):
        starts.append(min(len(decode(tokenizer, ids[:i])), len(text)))
    starts.append(len(text))
    for i in range(1, len(starts)):  # partial UTF-8 sequences can decode shorter; keep order
        starts[i] = max(starts[i], starts[i - 1])
    return starts


def token_at_or_before(starts: Sequence[int], char_pos: int) -> int:
    """Index of the last token boundary at or before `char_pos`."""
    return max(0, bisect_right(list(starts), char_pos) - 1)
