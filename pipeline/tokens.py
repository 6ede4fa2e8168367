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
            spans = encoded["offset_mapping"]
            starts = [spans[0][0]]
            for previous, (start, _) in zip(spans, spans[1:]):
                # A token that begins inside the previous token's last character (the rest of a
                # multi-byte character) shares its start: no boundary can fall between them.
                starts.append(starts[-1] if start < previous[1] else start)
            return starts + [len(text)]
    # Slow path: prefix decodes (exact for byte-level and sentencepiece tokenizers). A prefix
    # that does not decode to a prefix of the text ends inside a character: no boundary there.
    starts = [0]
    for i in range(1, len(ids)):
        prefix = decode(tokenizer, ids[:i])
        starts.append(len(prefix) if text.startswith(prefix) else starts[-1])
    starts.append(len(text))
    for i in range(1, len(starts)):  # keep order
        starts[i] = max(starts[i], starts[i - 1])
    return starts


def token_at_or_before(starts: Sequence[int], char_pos: int) -> int:
    """Index of the last token boundary at or before `char_pos`."""
    return max(0, bisect_right(list(starts), char_pos) - 1)
