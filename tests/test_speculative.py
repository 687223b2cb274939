"""Prompt-lookup drafts and the adaptive draft length (pure logic, no model)."""

import pytest

from edgeinfer.speculative import DraftLength, PromptLookup


def test_the_longest_recent_match_proposes_what_followed_it():
    look = PromptLookup(max_ngram=3)
    #         0  1  2  3  4  5  6  7  8  9
    tokens = [5, 6, 7, 8, 9, 1, 6, 7, 2, 6, 7]
    # suffix (6, 7): last earlier occurrence at 6..7, followed by 2, 6, 7
    assert look.propose(tokens, 3) == [2, 6, 7]
    # a 3-gram match wins over a more recent 2-gram one
    tokens = [1, 2, 3, 4, 5, 9, 2, 3, 8, 1, 2, 3]
    assert look.propose(tokens, 2) == [4, 5]


def test_no_match_or_no_room_proposes_nothing():
    look = PromptLookup()
    assert look.propose([1, 2, 3, 4], 4) == []
    assert look.propose([1, 2, 1], 0) == []
    assert look.propose([7], 3) == []
    assert look.propose([1, 2, 3, 1, 2, 3], 10) == [1, 2, 3]  # stops at the end of the text


def test_invalid_ngram_bounds_are_refused():
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=1, min_ngram=2)


def test_draft_length_grows_on_hits_shrinks_on_misses_and_pauses():
    d = DraftLength(initial=4, maximum=8, off_after=2, retry_every=3)
    d.update(4, 4)
    assert d.next_k() == 6
    d.update(6, 2)
    assert d.next_k() == 3
    d.update(3, 0)
    d.update(1, 0)  # two misses in a row: drafting pauses
    assert [d.next_k() for _ in range(2)] == [0, 0]
    assert d.next_k() == 1  # then it tries again
