"""A chat template comes inside the model file, so it is untrusted: whatever it does, rendering ends
within its budget (steps, time, output, value sizes) with a ChatTemplateError, and the process (and a
server using the model) stays healthy."""

from __future__ import annotations

import time

import pytest

import edgeinfer as ei
from edgeinfer.chat_template import RENDER_SECONDS, TemplateLimitError, render_chat

HELLO = [{"role": "user", "content": "hi"}]
HOSTILE = {
    # name: (template, the error it must give)
    "three nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(9) %}"
                           "{% endfor %}{% endfor %}{% endfor %}", TemplateLimitError),
    "loops over a built string": ("{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}"
                                  "{% endfor %}", TemplateLimitError),
    "a huge repeat": ("{{ 'x' * 10**11 }}", TemplateLimitError),
    "a huge list": ("{{ [1] * 100000000 }}", TemplateLimitError),
    "a huge power": ("{{ 10 ** 100000000 }}", TemplateLimitError),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", TemplateLimitError),
    "printf width": ("{{ '%0999999999d' % 1 }}", TemplateLimitError),
    "printf width from an argument": ("{{ '%*d' % (999999999, 1) }}", TemplateLimitError),
    "format filter width": ("{{ '%0999999999d'|format(1) }}", TemplateLimitError),
    "str.format width": ("{{ '{:>999999999}'.format(1) }}", TemplateLimitError),
    "str.format width from an argument": ("{{ '{:>{w}}'.format(1, w=999999999) }}", TemplateLimitError),
    "center filter": ("{{ 'x'|center(1000000000) }}", TemplateLimitError),
    "ljust method": ("{{ 'x'.ljust(1000000000) }}", TemplateLimitError),
    "a huge join": ("{{ (['x'] * 999999)|join('y' * 999) }}", TemplateLimitError),
    "endless output": ("{% for a in range(100000) %}{% for b in range(100000) %}" + "x" * 64
                       + "{% endfor %}{% endfor %}", TemplateLimitError),
    "division by zero": ("{{ 1 / 0 }}", ei.ChatTemplateError),
    "python internals": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ei.ChatTemplateError),
    "raise_exception": ("{{ raise_exception('no system role') }}", ei.ChatTemplateError),
    "does not parse": ("{% for %}", ei.ChatTemplateError),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_template_is_stopped_within_its_budget(case):
    template, error = HOSTILE[case]
    started = time.monotonic()
    with pytest.raises(error):
        render_chat(template, HELLO)
    # bounded: the budget is RENDER_SECONDS (or 2 million steps, about a second); the margin is for a
    # loaded machine, the failure it guards against is a render that never ends
    assert time.monotonic() - started < RENDER_SECONDS + 30
    assert render_chat(None, HELLO).endswith("<|im_start|>assistant\n")  # healthy afterwards


def test_the_bounds_do_not_get_in_the_way_of_real_templates(smol):
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 50} for i in range(200)]
    text = render_chat(smol.chat_template, messages)
    assert all(f"turn {i}" in text for i in range(200))
    ordinary = "{% for m in messages %}{{ '%5d' % loop.index }}{{ m.content|center(20) }}{% endfor %}"
    assert render_chat(ordinary, HELLO) == "    1" + "hi".center(20)


@pytest.mark.slow
def test_a_served_model_with_a_hostile_template_answers_400_and_keeps_serving(smol):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from server_helpers import running

    from edgeinfer.server import ServerOptions

    evil = ei.Model(smol.backend, name="evil", chat_template=HOSTILE["three nested loops"][0])
    with running([evil, smol], ServerOptions()) as url, httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(3):  # the admission ticket is released each time: no 503s pile up
            r = http.post("/v1/chat/completions", json={"model": "evil", "messages": HELLO, "max_tokens": 2})
            assert r.status_code == 400 and "steps" in r.json()["error"]["message"], r.text
        r = http.post("/v1/chat/completions", json={"model": smol.name, "messages": HELLO, "max_tokens": 2,
                                                    "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert http.get("/health").json()["models"]["evil"]["admitted"] == 0
