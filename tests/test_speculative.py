"""Prompt-lookup drafts and the adaptive draft length (pure logic, no model)."""

import pytest

from edgeinfer.speculative import DraftLength, LookupIndex, PromptLookup, StepCosts


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


def test_the_index_grows_with_the_text_and_reports_how_long_the_match_was():
    look = PromptLookup(max_ngram=8, min_ngram=2)
    text = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]
    index = look.index()
    for i in range(0, len(text), 3):  # grown piece by piece, it answers as a fresh index would
        index.extend(text[i : i + 3])
        fresh = LookupIndex(2, 8)
        fresh.extend(text[: i + 3])
        assert index.lookup(4) == fresh.lookup(4)
    index.extend([1, 5, 9])  # "4 1 5 9" matches 4 tokens of the start: the longer, older match wins
    assert index.lookup(3) == ([2, 6, 5], 4)
    index.extend([9, 9, 5, 9])  # "5 9": only a 2-token match, the most recent
    assert index.lookup(2) == ([9, 9], 2)
    assert index.lookup(0) == ([], 0)


def test_long_matches_draft_from_the_first_step_and_short_ones_must_earn_it():
    d = DraftLength(StepCosts())
    assert d.next_k(8) >= 2  # copying: the text matches 8 tokens of its input
    assert d.next_k(2) == 0  # a 2-token match in free text is mostly chance
    for _ in range(10):
        d.update(4, 0, 8)  # the long class misses, for this request's text
    assert d.next_k(8) == 0
    assert d.acceptance(2) == DraftLength().acceptance(2)  # the other classes keep their own estimate
    for _ in range(12):
        d.update(1, 1, 2)  # short matches that keep being right start drafting
    assert d.next_k(2) >= 1


def test_invalid_ngram_bounds_are_refused():
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=1, min_ngram=2)


def test_draft_length_follows_acceptance_and_measured_costs():
    costs = StepCosts()
    d = DraftLength(costs, maximum=8, retry_every=3)
    for _ in range(6):
        d.update(4, 4)  # everything accepted: long drafts pay
    assert d.acceptance() > 0.9 and d.next_k() >= 4
    for _ in range(8):
        d.update(2, 0)  # nothing accepted: plain steps are cheaper
    assert d.next_k() == 0
    # probes come after 3, then 6, 12 ... plain steps while they find nothing
    idle = DraftLength(StepCosts(), retry_every=3, prior=(0.0, 5.0))
    assert [idle.next_k() for _ in range(3)] == [0, 0, 1]
    idle.update(1, 0)
    assert [idle.next_k() for _ in range(6)] == [0] * 5 + [1]
    # the same acceptance with cheaper measured multi-token steps drafts further
    cheap, dear = StepCosts(), StepCosts()
    for rows in range(1, 10):
        cheap.record(rows, 1.0 + 0.1 * (rows - 1))
        dear.record(rows, 1.0 + 0.9 * (rows - 1))
    a, b = DraftLength(cheap), DraftLength(dear)
    for policy in (a, b):
        for _ in range(5):
            policy.update(4, 3)
    assert a.next_k() > b.next_k()


def test_sampled_verification_keeps_the_target_distribution():
    """Whatever the draft proposes, emitted tokens follow the target's sampling distribution."""
    import numpy as np

    from edgeinfer.sampling import NumpySampler, SamplingParams
    from edgeinfer.speculative import Verifier

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    _, target = NumpySampler(params).distribution(logits)
    for draft_token in (0, 2, 3):
        verifier = Verifier(params, lambda row: logits)
        counts = np.zeros(4)
        for position in range(20000):
            accepted, follow = verifier.verify([draft_token], [0, 1], position)
            counts[draft_token if accepted else follow] += 1
            # and the token drawn at a position does not depend on what was drafted there
            assert (draft_token if accepted else follow) == verifier.sample(0, position)
        assert np.abs(counts / counts.sum() - np.sort(target)[::-1]).max() < 0.015


def test_greedy_verification_accepts_exactly_the_argmax_prefix():
    import numpy as np

    from edgeinfer.sampling import SamplingParams
    from edgeinfer.speculative import Verifier

    rows = [np.eye(5, dtype=np.float32)[i] for i in (1, 2, 4, 0)]  # argmax per row: 1, 2, 4, 0
    verifier = Verifier(SamplingParams(temperature=0), lambda row: rows[row])
    assert verifier.verify([1, 2, 3], [0, 1, 2, 3], 0) == (2, 4)
    assert verifier.verify([1, 2, 4], [0, 1, 2, 3], 0) == (3, 0)
    assert verifier.verify([3], [0, 1], 0) == (0, 1)
