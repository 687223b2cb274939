"""The translator app (apps/translator), run for real in a headless window with the real model.

tests/app_translator_harness.py starts the app in a subprocess on SDL2's offscreen video driver (Mesa
through EGL; no X server), drives it through touches and typed text, and reports what the window
showed; this test checks that report against `Translator.translate` of the same sentences.
Set EDGEINFER_SCREENSHOT=path.png to keep the screenshot it takes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("kivy") is None, reason="Kivy is not installed (.[app])"),
]

HARNESS = Path(__file__).with_name("app_translator_harness.py")
ROOT = HARNESS.parents[1]
MODEL = "gemma-3-270m"
THREADS = 1  # the model's threads, here and in the app: a core stays free for the UI and its renderer
# Longest pause between two frames allowed. Rendering is software (Mesa llvmpipe) here, so on a busy
# 2-core machine a frame can take a second or more; a UI thread doing the model's work would pause for
# the whole load or translation. The proof that it does not is structural (the harness holds the load
# and a translation until frames were drawn and text typed meanwhile); this bound catches long stalls.
MAX_FRAME_GAP = 5.0
FRENCH_WORDS = {"bonjour", "mon", "ma", "ami", "amie", "le", "la", "les", "de", "et", "est", "un", "une"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("translator-app")
    report_path, shot = out / "report.json", out / "translator.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "offscreen", "KIVY_WINDOW": "sdl2",
           "KIVY_HOME": str(out / "kivy-home")}
    (out / "kivy-home").mkdir()
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "--report", str(report_path), "--screenshot", str(shot),
         "--memory", str(out / "memory.sqlite"), "--model", MODEL, "--threads", str(THREADS),
         "--timeout", "600"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=720,
    )
    assert report_path.exists(), f"the app wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["ok"], f"{report.get('error')}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-4000:]
    if os.environ.get("EDGEINFER_SCREENSHOT"):
        target = Path(os.environ["EDGEINFER_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return report


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The same translator, called directly (its own memory, so nothing is answered from the app's)."""
    from edgeinfer_converters import prepare

    import edgeinfer as ei

    prepare(MODEL)  # the app prepares its model the same way before loading it
    tr = ei.Translator(model=MODEL, memory=str(tmp_path_factory.mktemp("reference") / "memory.sqlite"),
                       n_threads=THREADS)
    yield tr
    tr.close()


def test_loads_in_the_background_with_progress(run):
    assert run["translate_disabled_before_load"] is True
    assert run["translate_enabled_after_load"] is True
    assert run["progress_values"] and run["progress_values"][-1] == 1
    assert run["load_messages"], "no loading message was shown"
    assert run["loading_frames"] >= 5, "no frames drawn while the model loaded: the UI thread was blocked"
    assert run["frame_gaps"]["loading"] < MAX_FRAME_GAP


def test_streams_the_same_translation_as_the_api(run, reference):
    first = run["first"]
    assert run["typed"] == first["input"] == "Good morning, my friend."
    assert first["error"] == "" and not first["error_visible"]
    out = first["output"].strip()
    assert out and out != first["input"]
    assert out == first["output_shown"].strip()
    # streamed: the UI thread received it piece by piece (how many frames showed a partial text depends
    # on how fast this machine renders: a short sentence can finish between two software-rendered frames)
    assert first["pieces"] > 1, "the translation did not reach the window piece by piece"
    assert out == reference.translate(first["input"], to="fr", source="en").text
    words = {w.strip(".,!?;:'’").lower() for w in out.replace("'", " ").split()}
    assert words & FRENCH_WORDS, out
    assert run["frame_gaps"]["streaming"] < MAX_FRAME_GAP, "the UI thread was blocked while streaming"


def test_status_line_shows_model_backend_and_speed(run):
    status = run["first"]["status"]
    assert MODEL in status and "llama.cpp" in status and "cpu" in status
    assert "tokens/s" in status and "cached tokens" in status


def test_translate_again_cancels_the_stream_and_typing_still_works(run, reference):
    assert run["cancel_first_partial"], "nothing streamed before Translate was pressed again"
    typed = run["typed_while_streaming"]
    assert typed["still_streaming"] and typed["worker_held"], "the first translation was not in flight"
    assert typed["input"].endswith("Thank you for the lovely day.")
    assert run["cancel_was_streaming"], "the first translation had ended before Translate was pressed again"
    second = run["second"]
    assert second["input"] == typed["input"] and second["pieces"] >= 1
    assert second["output"] == reference.translate(second["input"], to="fr", source="en").text
    # a cancelled translation is not kept in the history (the Translator saw the cancel)
    assert not any(h["source_text"] == run["cancelled_text"] for h in run["history"])


def test_history_restores_a_translation_and_copy_uses_the_clipboard(run):
    assert any(h["source_text"] == "Good morning, my friend." for h in run["history"])
    restored = run["restored"]
    assert restored["input"] == "Good morning, my friend."
    assert restored["output"] == run["first"]["output"]
    assert restored["source"] == "English" and restored["target"] == "French"
    assert run["clipboard"] == run["first"]["output"]


@pytest.mark.parametrize("case", ["empty", "too_long", "same_language", "wrong_source"])
def test_bad_input_shows_a_clear_message(run, case):
    shown = run[case]
    assert shown["error"], f"{case}: no message ({shown})"
    assert shown["error_shown"] == shown["error"] and shown["error_visible"]
    red, green, blue, _ = shown["error_color"]
    assert red > 0.6 and green < 0.4 and blue < 0.4, "the message is not shown in red"
    assert "Traceback" not in shown["error"] and "Something went wrong" not in shown["error"]
    assert shown["output"] == ""


def test_markup_and_emoji_are_shown_as_text(run):
    shown = run["markup"]
    if shown["error"]:  # refused: a clear message
        assert shown["error_visible"] and "Something went wrong" not in shown["error"]
    else:  # translated: the output is plain text, no markup interpreted, and the app did not break
        assert shown["output"].strip() and shown["output_shown"] == shown["output"]


def test_window_stays_responsive(run):
    assert run["tick_latencies"] and max(run["tick_latencies"]) < MAX_FRAME_GAP
    assert run["frame_gaps"]["idle"] < MAX_FRAME_GAP
    assert run["final"]["output"] and not run["final"]["error"]


def test_other_language_pairs_and_detection(run):
    for target in ("Spanish", "German", "Italian"):
        shown = run[f"extra_{target}"]
        assert shown["target"] == target and shown["caption"].startswith(target)
        assert shown["output"].strip() and not shown["error"], shown
    detected = run["extra_Italian"]
    assert detected["source"] == "Detect language" and "from English (detected)" in detected["caption"]


def test_swap_exchanges_languages_and_texts(run):
    swapped, back = run["swapped"], run["swapped_back"]
    assert (swapped["source"], swapped["target"]) == ("French", "English")
    assert swapped["input"] == run["first"]["output"] and swapped["output"] == ""
    assert (back["source"], back["target"]) == ("English", "French")


def test_screenshot_is_a_real_picture_of_the_window(run):
    path = Path(run["screenshot"])
    width, height, pixels = read_png(path)
    assert (width, height) == tuple(run["window_size"]) and width >= 400 and height >= 300
    assert len(set(pixels[:: max(1, len(pixels) // 5000)])) > 8, "the screenshot is (almost) one colour"


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and pixels of an 8-bit RGB(A) PNG (no Pillow needed)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 4 if colour == 6 else 3
    raw = zlib.decompress(b"".join(chunks))
    stride, rows, prev = width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    pixels = [row[x:x + bpp] for row in rows for x in range(0, stride, bpp)]
    return width, height, pixels
