from pipeline.config import EpisodesConfig
from pipeline.episodes import marker_boundaries, paragraph_starts, split_episodes


def char_starts(text):  # one "token" per character
    return list(range(len(text) + 1))


def texts(text, episodes):
    return [text[e.char_start : e.char_end] for e in episodes]


TRACE = (
    "Let me compute.\n\nFirst step.\n\nSecond step.\n\nWait, that is wrong.\n\nRedo.\n\n"
    "But wait, check.\n\nMore.\n\nMore2.\n\nAlternatively, try x.\n\nDone."
)


def test_marker_rule_with_minimum_gap():
    episodes, rule = split_episodes(TRACE, char_starts(TRACE), EpisodesConfig())
    assert rule == "markers"
    assert [e.marker for e in episodes] == ["start", "Wait", "Alternatively"]  # "But wait" is too close
    assert "".join(texts(TRACE, episodes)) == TRACE


def test_marker_mid_paragraph_is_not_a_boundary():
    text = "A.\n\nB.\n\nC.\n\nI thought. Wait, no.\n\nEnd."
    assert marker_boundaries(text, EpisodesConfig()) == []


def test_marker_needs_a_word_boundary():
    text = "A.\n\nB.\n\nC.\n\nWaiting is fine.\n\nEnd."
    assert marker_boundaries(text, EpisodesConfig()) == []


def test_cap_and_grouping():
    text = "\n\n".join(["Start"] + ["Wait, again."] * 10)
    capped, _ = split_episodes(text, char_starts(text), EpisodesConfig(min_gap_paragraphs=0, max_episodes=3))
    assert len(capped) == 4 and "".join(texts(text, capped)) == text
    grouped, _ = split_episodes(text, char_starts(text), EpisodesConfig(min_gap_paragraphs=0, group_size=2))
    assert len(grouped) == 6 and "".join(texts(text, grouped)) == text


def test_window_fallback_and_empty():
    text = "no markers at all in this text, just words"
    episodes, rule = split_episodes(text, char_starts(text), EpisodesConfig(window_tokens=10))
    assert rule == "window" and len(episodes) == 5
    assert [e.token_end - e.token_start for e in episodes][:4] == [10, 10, 10, 10]
    assert split_episodes("", [0], EpisodesConfig())[0] == []
    single, _ = split_episodes(text, char_starts(text), EpisodesConfig(fallback_window=False))
    assert len(single) == 1


def test_regex_rule_for_backtracking():
    text = "Line 1: x\nLine 2: y\nBacktrack to Line 1\nLine 3: z\nBacktrack to beginning\nok"
    episodes, _ = split_episodes(text, char_starts(text), EpisodesConfig(rule="regex"))
    assert [e.marker for e in episodes] == ["start", "Backtrack to Line 1", "Backtrack to beginning"]


def test_real_tokens_cut_at_token_offsets(tokenizer):
    from pipeline.tokens import decode, token_char_starts

    ids = tokenizer(TRACE, add_special_tokens=False)["input_ids"]
    starts = token_char_starts(tokenizer, ids)
    text = decode(tokenizer, ids)
    episodes, _ = split_episodes(text, starts, EpisodesConfig())
    assert [e.marker for e in episodes] == ["start", "Wait", "Alternatively"]
    assert episodes[-1].token_end == len(ids)
    for episode in episodes:  # offsets agree between ids and text
        assert decode(tokenizer, ids[episode.token_start : episode.token_end]) == text[episode.char_start : episode.char_end]
    assert paragraph_starts("a\n\nb") == [0, 3]
