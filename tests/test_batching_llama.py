"""Continuous batching and speculative decoding for real, on SmolLM2 (Q4_1) and Gemma 3 (Q4_K_M)."""


import pytest
from waits import BATCH_PROMPTS, concurrently, one_by_one

import edgeinfer as ei

pytestmark = pytest.mark.slow

PROMPTS = BATCH_PROMPTS
SOURCE = (
    "The committee met on Tuesday to review the budget. It approved funding for the new library, "
    "postponed the decision on the swimming pool, and asked the mayor to present a revised plan "
    "for the bus network by the end of March."
)
COPY_PROMPTS = [
    f"Text: {SOURCE}\nRepeat the text above word for word.\nText: {SOURCE[:60]}",
    "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
    "    return 2 * (width + height)\n\n\n# the same two functions, with type hints\n"
    "def area(width: float, height: float) -> float:\n",
]


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def model_path(request):
    from edgeinfer.lock import ModelLock
    from edgeinfer.sources import resolve

    return resolve(ModelLock.load().get(request.param), offline=True).path


def test_batched_requests_give_exactly_their_unbatched_greedy_output(model_path):
    with ei.load(model_path, n_ctx=512, n_threads=2, max_sequences=4, kv=ei.KVOptions(settle=False),
                 speculation=None) as model:
        alone = [c.tokens for c in one_by_one(model, PROMPTS, max_tokens=40, temperature=0)]
        together = concurrently(model, PROMPTS, max_tokens=40, temperature=0)
    assert [c.tokens for c in together] == alone


def test_speculation_is_on_by_default_only_where_drafts_are_checked_exactly(smollm2_path):
    with ei.load(smollm2_path, n_ctx=256, kv=ei.KVOptions(settle=False)) as plain, \
            ei.load(smollm2_path, n_ctx=256, kv=ei.KVOptions(settle=False), flash_attn=True) as flash:
        assert plain.engine.proposer is None and flash.engine.proposer is not None


def test_speculation_keeps_greedy_output_identical_and_accepts_drafts(model_path):
    outputs = {}
    for speculation in (None, "prompt-lookup"):
        with ei.load(model_path, n_ctx=1024, n_threads=2, kv=ei.KVOptions(settle=False), flash_attn=True,
                     speculation=speculation) as model:
            outputs[speculation] = [model.generate(p, max_tokens=48, temperature=0) for p in COPY_PROMPTS]
    plain, spec = outputs[None], outputs["prompt-lookup"]
    assert [c.tokens for c in spec] == [c.tokens for c in plain]
    assert all(c.stats.draft_tokens == 0 for c in plain)
    assert sum(c.stats.accepted_tokens for c in spec) >= 30  # the copy was drafted, and accepted


def test_sampled_speculation_gives_the_seed_s_text_whatever_is_drafted(model_path):
    with ei.load(model_path, n_ctx=1024, n_threads=2, kv=ei.KVOptions(settle=False),
                 flash_attn=True) as model:
        # seed 12: the sampled text copies the source, so drafts are accepted whatever the measured step
        # costs make the draft length (with seed 11 it leaves the source at its third token)
        runs = [model.generate(COPY_PROMPTS[0], max_tokens=32, temperature=0.7, seed=12) for _ in range(2)]
        model.engine.proposer = NoDrafts()  # the same request with no drafts at all
        plain = model.generate(COPY_PROMPTS[0], max_tokens=32, temperature=0.7, seed=12)
    assert runs[0].tokens == runs[1].tokens == plain.tokens
    assert runs[0].stats.accepted_tokens > 0 and plain.stats.draft_tokens == 0


class NoDrafts:
    def propose(self, tokens, k):
        return []


def test_a_draft_model_with_the_same_vocabulary_keeps_greedy_output(smollm2_path):
    with ei.load(smollm2_path, n_ctx=1024, n_threads=2, kv=ei.KVOptions(settle=False), flash_attn=True,
                 speculation=None) as plain:
        expected = plain.generate(COPY_PROMPTS[1], max_tokens=40, temperature=0).tokens
    # the same small model as its own draft: every draft token should be accepted
    with ei.load(smollm2_path, n_ctx=1024, n_threads=1, max_sequences=1, kv=ei.KVOptions(settle=False),
                 speculation=None) as draft, \
            ei.load(smollm2_path, n_ctx=1024, n_threads=2, kv=ei.KVOptions(settle=False), flash_attn=True,
                    speculation=draft) as model:
        out = model.generate(COPY_PROMPTS[1], max_tokens=40, temperature=0)
    assert out.tokens == expected
    assert out.stats.draft_tokens > 0 and out.stats.accepted_tokens == out.stats.draft_tokens


def test_a_draft_model_with_another_vocabulary_is_refused(smollm2_path):
    with ei.load("gemma-3-270m", n_ctx=256, kv=ei.KVOptions(settle=False), speculation=None) as gemma:
        with pytest.raises(ei.InvalidRequestError, match="vocabulary"):
            ei.load(smollm2_path, n_ctx=256, speculation=gemma)


def test_k_quant_models_decode_at_most_the_rows_they_compute_exactly():
    """Gemma's Q4_K_M matrices run another kernel from 8 rows on (a decode step of 8 sequences gives other
    logits than each alone), so the engine decodes at most 7 of its sequences at once: 8 concurrent
    requests still give exactly their unbatched greedy output."""
    prompts = [*PROMPTS, "Water boils at", "My favourite fruit is", "The capital of Spain is", "Dear John,"]
    with ei.load("gemma-3-270m", n_ctx=512, n_threads=2, max_sequences=8, kv=ei.KVOptions(settle=False),
                 speculation=None) as model:
        assert model.backend.caps.exact_rows == 7 and model.engine.max_batch == 7
        alone = [c.tokens for c in one_by_one(model, prompts, max_tokens=32, temperature=0)]
        together = concurrently(model, prompts, max_tokens=32, temperature=0)
    assert [c.tokens for c in together] == alone


@pytest.mark.parametrize(("types", "rows"), [("Q4_1", 0), ("Q4_0,Q8_0", 0), ("Q4_K,Q5_0,Q6_K,Q8_0", 7),
                                             ("F16", 1), ("Q4_K,IQ4_NL", 1), ("", 0)])
def test_the_exact_rows_of_a_model_follow_its_matrix_types(types, rows):
    from edgeinfer.backends.llamacpp import exact_rows

    assert exact_rows(types) == rows
