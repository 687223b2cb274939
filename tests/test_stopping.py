from edgeinfer.stopping import TextAssembler


def feed_all(asm: TextAssembler, pieces: list[bytes]) -> str:
    out = "".join(asm.feed(p) for p in pieces)
    return out + asm.flush()


def test_stop_string_split_across_tokens_is_cut_and_never_shown():
    asm = TextAssembler(("\nUser:",))
    shown = []
    for p in [b"Hello", b" there", b"\nUs", b"er", b": ignored"]:
        shown.append(asm.feed(p))
    assert "".join(shown) == "Hello there"
    assert asm.stopped and asm.text == "Hello there"


def test_text_that_only_resembles_a_stop_prefix_is_released():
    asm = TextAssembler(("STOP",))
    assert feed_all(asm, [b"ST", b"ART ", b"now"]) == "START now"
    assert not asm.stopped


def test_multibyte_utf8_split_between_tokens():
    data = "café 日本 🙂".encode()
    asm = TextAssembler()
    assert feed_all(asm, [data[i : i + 1] for i in range(len(data))]) == "café 日本 🙂"


def test_invalid_utf8_is_replaced_not_raised():
    assert feed_all(TextAssembler(), [b"ok", b"\xff", b"!"]) == "ok\ufffd!"
