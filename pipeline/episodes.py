"""Split a thinking block into episodes, at token offsets.

Rules (DESIGN.md, section 1):
- `markers`: a paragraph (text after a blank line) that opens with a self-correction marker
  starts an episode, unless it lies within `min_gap_paragraphs` paragraphs of the previous
  boundary; at most `max_episodes` boundaries; optionally every `group_size` episodes merged.
- `regex`: every match of a pattern (e.g. `Backtrack to Line 3`) starts an episode.
- `window`: token windows of at most `window_tokens`, for models that use no markers; also
  the fallback of `markers` when a trace has none (`fallback_window`). Each cut is snapped
  back to the last line or sentence end in the second half of its window (`window_cuts`),
  so an episode ends mid-sentence only where the window holds no such end.
Boundaries are found in text, then moved to the token boundary at or before them, so the
episodes tile the token ids exactly and concatenate back to the thinking text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config import EpisodesConfig
from pipeline.tokens import decode, token_at_or_before, token_char_starts

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


@dataclass(frozen=True)
class Episode:
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    marker: str


def paragraph_starts(text: str) -> list[int]:
    """Character offsets where paragraphs begin (the first one at 0)."""
    return [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(text) if m.end() < len(text)]


def _opening_marker(paragraph: str, markers: list[str]) -> str | None:
    for marker in sorted(markers, key=len, reverse=True):
        if paragraph.startswith(marker):
            rest = paragraph[len(marker) : len(marker) + 1]
            if not rest or not (rest.isalnum() or rest == "_"):
                return marker
    return None


def marker_boundaries(text: str, config: EpisodesConfig) -> list[tuple[int, str]]:
    """(character offset, marker) of every paragraph that opens a new episode."""
    starts = paragraph_starts(text)
    boundaries: list[tuple[int, str]] = []
    last_paragraph = 0
    for index, start in enumerate(starts[1:], start=1):
        if len(boundaries) >= config.max_episodes:
            break
        marker = _opening_marker(text[start : start + 64], config.markers)
        if marker is None or index - last_paragraph <= config.min_gap_paragraphs:
            continue
        boundaries.append((start, marker))
        last_paragraph = index
    return boundaries


REGEX_SECONDS = 1.0  # per trace: a pattern that backtracks catastrophically (`(a+)+$`) stops, never hangs


class RegexTimeoutError(ValueError):
    """`episodes.regex` took too long on one trace."""


def regex_boundaries(text: str, config: EpisodesConfig, seconds: float = REGEX_SECONDS) -> list[tuple[int, str]]:
    """Every match of `episodes.regex` after the start, run by the `regex` package under a time
    limit (its checks are coarse: a runaway pattern stops after a few times `seconds`)."""
    import time

    import regex

    pattern, found = regex.compile(config.regex), []
    deadline = time.monotonic() + seconds
    try:
        for m in pattern.finditer(text, timeout=seconds):  # the limit is per match: the deadline bounds them all
            if m.start() > 0:  # a pattern may match the empty string: such a boundary is labelled `regex`, never ""
                found.append((m.start(), m.group(0)[:40] or "regex"))
            if len(found) >= config.max_episodes:
                break
            if time.monotonic() > deadline:
                raise TimeoutError
    except TimeoutError:
        raise RegexTimeoutError(
            f"episodes.regex: {config.regex!r} ran over {seconds:g} s on a thinking block of {len(text)} characters "
            "(catastrophic backtracking?): avoid nested quantifiers such as (a+)+ or alternatives that overlap such as (a|aa)+"
        ) from None
    return found[: config.max_episodes]


_SENTENCE_END = ".!?"


def ends_line_or_sentence(text: str, char_starts: list[int], token: int) -> bool:
    """Does token boundary `token` sit right after a newline, or after `.`/`!`/`?` followed by whitespace?"""
    char = char_starts[token]
    if char_starts[token - 1] == char:  # inside one character's bytes: not a boundary
        return False
    before = text[char - 1]
    return before == "\n" or (before in _SENTENCE_END and (char == len(text) or text[char].isspace()))


def window_cuts(text: str, char_starts: list[int], window: int, max_episodes: int) -> list[tuple[int, str]]:
    """Token offsets of window cuts: each at most `window` tokens after the previous one, moved
    back to the last line or sentence end in the window's second half when there is one."""
    n_tokens = len(char_starts) - 1
    cuts: list[tuple[int, str]] = []
    start = 0
    while start + window < n_tokens and len(cuts) < max_episodes:
        hard = start + window
        earliest = start + max(1, (window + 1) // 2)
        cut = next((t for t in range(hard, earliest - 1, -1) if ends_line_or_sentence(text, char_starts, t)), hard)
        cuts.append((cut, "window"))
        start = cut
    return cuts


def _group(episodes: list[Episode], size: int) -> list[Episode]:
    if size <= 1:
        return episodes
    grouped = []
    for start in range(0, len(episodes), size):
        chunk = episodes[start : start + size]
        grouped.append(Episode(chunk[0].token_start, chunk[-1].token_end, chunk[0].char_start, chunk[-1].char_end, chunk[0].marker))
    return grouped


def split_episodes(text: str, char_starts: list[int], config: EpisodesConfig) -> tuple[list[Episode], str]:
    """Episodes of one thinking block and the rule that produced them.

    `char_starts[i]` is where token i starts in `text` (`char_starts[-1] == len(text)`).
    An empty thinking block has no episodes.
    """
    n_tokens = len(char_starts) - 1
    if n_tokens <= 0:
        return [], config.rule
    rule = config.rule
    if rule == "window":
        token_cuts = window_cuts(text, char_starts, config.window_tokens, config.max_episodes)
    else:
        found = marker_boundaries(text, config) if rule == "markers" else regex_boundaries(text, config)
        if not found and config.fallback_window and rule == "markers":
            return split_episodes(text, char_starts, config.model_copy(update={"rule": "window"}))
        token_cuts = [(token_at_or_before(char_starts, char), marker) for char, marker in found]
    cuts: list[tuple[int, str]] = [(0, "start")]
    for token, marker in token_cuts:
        # Tokens that start at the same character hold the bytes of one character (byte-level
        # tokenizers): never cut between them, or a prefix would end in half a character.
        while 0 < token < n_tokens and char_starts[token - 1] == char_starts[token]:
            token -= 1
        if cuts[-1][0] < token < n_tokens:
            cuts.append((token, marker))
    episodes = []
    for index, (start, marker) in enumerate(cuts):
        end = cuts[index + 1][0] if index + 1 < len(cuts) else n_tokens
        episodes.append(Episode(start, end, char_starts[start], char_starts[end], marker))
    return _group(episodes, config.group_size), rule


def split_token_ids(tokenizer, ids: list[int], config: EpisodesConfig) -> tuple[list[Episode], str]:
    """Episodes of a thinking block given as token ids: found in its text, cut at token offsets."""
    return split_episodes(decode(tokenizer, ids), token_char_starts(tokenizer, ids), config)
