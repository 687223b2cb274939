import numpy as np
import pytest

from edgeinfer.errors import InvalidRequestError
from edgeinfer.model import make_params
from edgeinfer.sampling import NumpySampler, SamplingParams


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"min_p": 1}, {"top_k": -1},
        {"repeat_penalty": 0}, {"max_tokens": 0}, {"max_tokens": -5}, {"seed": -1}, {"stop": ("",)},
    ],
)
def test_invalid_params_are_refused(bad):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**bad)


def test_unknown_option_is_refused_with_the_valid_names():
    with pytest.raises(InvalidRequestError, match="temprature"):
        make_params(temprature=0.5)


def test_single_stop_string_becomes_a_tuple():
    assert make_params(stop="END").stop == ("END",)


def test_greedy_picks_argmax_and_penalty_changes_it():
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert NumpySampler(SamplingParams(temperature=0)).sample(logits) == 1
    s = NumpySampler(SamplingParams(temperature=0, repeat_penalty=2.0))
    s.accept(1)
    assert s.sample(logits) == 2


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    a = [NumpySampler(params).sample(logits) for _ in range(5)]
    b = [NumpySampler(params).sample(logits) for _ in range(5)]
    assert a == b
    sampler = NumpySampler(params)
    counts = np.bincount([sampler.sample(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


def test_top_k_one_equals_greedy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=100).astype(np.float32)
    s = NumpySampler(SamplingParams(temperature=1.5, top_k=1, seed=1))
    assert all(s.sample(logits) == int(np.argmax(logits)) for _ in range(20))
