import pytest

from edgeinfer.chat_template import render_chat
from edgeinfer.errors import ChatTemplateError, InvalidRequestError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_renders_messages_and_generation_prompt():
    out = render_chat(CHATML, [{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set x = messages.append({'role': 'user', 'content': 'x'}) %}",
    ],
)
def test_templates_that_reach_python_internals_are_stopped(template):
    with pytest.raises(ChatTemplateError):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_raise_exception_in_template_becomes_chat_template_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="first must be user"):
        render_chat(template, [{"role": "assistant", "content": "x"}])


def test_broken_template_syntax():
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat("{% for %}", [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "wizard", "content": "x"}], [{"content": "x"}], [{"role": "user", "content": 3}]],
)
def test_malformed_messages(messages):
    with pytest.raises(InvalidRequestError):
        render_chat(CHATML, messages)
