"""Drives the real translator app in a headless window and reports what it saw, as JSON.

Run by tests/test_app_translator.py in a subprocess (Kivy's event loop and global state do not belong
in the pytest process); it can also be run by hand:

    python tests/app_translator_harness.py --report out.json --screenshot shot.png --memory /tmp/tm

The window is SDL2's "offscreen" video driver rendering with Mesa through EGL: no X server, no system
package. Everything goes through the UI as a user would: touches on the buttons and pickers, typed
text into the focused input; the app's own threads do the work. The harness records facts (texts,
colours, counts, timings); the test asserts on them.
"""

# ruff: noqa: E402  (the environment must be set before Kivy is imported)
from __future__ import annotations

import os
import sys

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("KIVY_WINDOW", "sdl2")
os.environ.setdefault("KIVY_NO_FILELOG", "1")
os.environ.setdefault("KIVY_NO_ARGS", "1")

import argparse
import json
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run by path

FIRST = "Good morning, my friend."
LONG = ("Yesterday we walked along the river for hours, talking about books, music and the places "
        "we would like to visit next summer.")
LONG_EXTRA = " Thank you for the lovely day."
FINAL = "The weather is lovely today. Shall we have lunch by the river?"
TOO_LONG = ("This sentence is repeated to make a text far longer than the app accepts. " * 300)[:20_000]
MARKUP = "<b>Hi</b> 👋 [b]there[/b]"
EXTRAS = [("Where is the train station?", "English", "Spanish"),
          ("I would like a coffee, please.", "English", "German"),
          ("Thank you very much for your help.", "Detect language", "Italian")]
FRENCH_TEXT = "Bonjour tout le monde, je suis très content de vous voir aujourd'hui."
# How long a step may wait for something that will happen (a frame, a translation): a guard against a
# hang, generous for a loaded 2-core machine that renders in software; never what is being tested.
PATIENCE = 120.0
LOADING_FRAMES = 5  # the load waits until the window has drawn this many frames (see WorkerHolds)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True, type=Path)
    parser.add_argument("--screenshot", required=True, type=Path)
    parser.add_argument("--memory", required=True, help="translation memory path for the app")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--threads", type=int, default=None, help="model threads (default: the app's)")
    parser.add_argument("--timeout", type=float, default=600, help="whole run, seconds")
    args = parser.parse_args()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    kivy_home = (args.report.parent / "kivy-home").resolve()
    kivy_home.mkdir(exist_ok=True)
    os.environ.setdefault("KIVY_HOME", str(kivy_home))  # not the user's ~/.kivy

    from edgeinfer_apps.translator.main import TranslatorApp
    from kivy.clock import Clock

    report: dict[str, Any] = {"ok": False, "steps": []}
    app = TranslatorApp(translator_options={"model": args.model, "memory": args.memory,
                                            "n_threads": args.threads})
    frames = FrameWatch(app)
    holds = WorkerHolds(app, frames)
    driver = Driver(app, report, args, frames, holds)

    def on_start(_app: Any) -> None:  # runs before the app's own on_start, i.e. before loading begins
        ids = app.root.ids
        report["translate_disabled_before_load"] = ids.translate_button.disabled
        report["progress_values"] = []
        ids.load_progress.bind(value=lambda _w, v: report["progress_values"].append(round(v, 3)))
        report["load_messages"] = []
        ids.load_label.bind(text=lambda _w, v: report["load_messages"].append(v))
        Clock.schedule_interval(frames.tick, 0)
        Clock.schedule_interval(driver.tick, 1 / 30)

    app.bind(on_start=on_start)
    deadline = time.monotonic() + args.timeout
    Clock.schedule_interval(
        lambda _dt: driver.fail("harness timeout") if time.monotonic() > deadline else None, 1)
    app.run()
    report["frame_gaps"] = frames.max_gap
    report["loading_frames"] = frames.loading_frames
    report["frames"] = frames.count
    report["slow_frames"] = frames.slow
    args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0 if report["ok"] else 1


class FrameWatch:
    """Longest gap between two frames, per phase: a blocked UI thread shows up here."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last: float | None = None
        self.count = 0
        self.max_gap: dict[str, float] = {"loading": 0.0, "streaming": 0.0, "idle": 0.0}
        self.slow: list[dict[str, Any]] = []  # frames over 0.2 s, for diagnosis
        self.loading_frames = self.stream_frames = self.text_frames = 0
        self.pieces = 0  # translation pieces the UI thread applied to the output (streamed, not whole)
        shown = app._on_piece

        def counted(job: int, piece: str) -> None:
            self.pieces += job == app._job
            shown(job, piece)

        app._on_piece = counted  # the worker posts through this attribute: every piece passes here
        self.last_output = ""
        self.loading_seen = threading.Event()  # LOADING_FRAMES frames were drawn while loading
        self.t0 = time.monotonic()

    def tick(self, _dt: float) -> None:
        now = time.monotonic()
        self.count += 1
        app = self.app
        if not app.loaded:
            self.loading_frames += 1
            if self.loading_frames >= LOADING_FRAMES:
                self.loading_seen.set()
        if app.streaming:
            self.stream_frames += 1
            if app.output_text and app.output_text != self.last_output:
                self.text_frames += 1  # a frame that showed more of the translation
        self.last_output = app.output_text
        if self.last is not None:
            phase = "loading" if not self.app.loaded else "streaming" if self.app.streaming else "idle"
            gap = now - self.last
            self.max_gap[phase] = round(max(self.max_gap[phase], gap), 3)
            if gap > 0.2:
                self.slow.append({"gap": round(gap, 3), "phase": phase, "at": round(now - self.t0, 2),
                                  "output": len(self.app.output_text)})
        self.last = now


class Touch:
    """A finger on the screen: a real MotionEvent through the window's touch dispatch."""

    def __init__(self, x: float, y: float) -> None:
        from kivy.base import EventLoop
        from kivy.input.motionevent import MotionEvent

        class _Event(MotionEvent):
            def depack(self, args: dict) -> None:
                self.sx, self.sy = args["x"], args["y"]
                super().depack(args)

        self.loop = EventLoop
        win = EventLoop.window
        self.event = _Event("harness", 1, {"x": x / (win.width - 1.0), "y": y / (win.height - 1.0)},
                            is_touch=True, type_id="touch")
        self.event.profile = ["pos"]

    def down(self) -> None:
        self.loop.post_dispatch_input("begin", self.event)

    def up(self) -> None:
        self.loop.post_dispatch_input("end", self.event)


Step = tuple[Callable[[], bool], float, str]


class WorkerHolds:
    """Test hooks on the app's worker thread, so that "while the app is still working" holds by
    construction rather than by the machine being slow enough:
    - loading starts only once the window has drawn LOADING_FRAMES frames (were loading done on the
      UI thread, no frame could be drawn and the load would never start: the test fails);
    - with ``hold_next_stream`` set, the next translation stops reading its stream after its first
      piece until the UI supersedes it (Translate again, Clear, Swap...), so it is still streaming
      however fast the model is."""

    def __init__(self, app: Any, frames: FrameWatch) -> None:
        self.app = app
        self.hold_next_stream = False
        self.holding = False
        load, post = app._load_job, app._post

        def held_load() -> None:
            frames.loading_seen.wait(PATIENCE)
            load()

        def held_post(fn: Callable[..., None], *args: Any) -> None:
            post(fn, *args)
            if self.hold_next_stream and fn is app._on_piece:  # on the worker, after the first piece
                self.hold_next_stream = False
                self._hold(job=args[0])

        app._load_job, app._post = held_load, held_post

    def _hold(self, job: int) -> None:
        self.holding = True
        deadline = time.monotonic() + PATIENCE
        while self.app._job == job and time.monotonic() < deadline:
            time.sleep(0.02)
        self.holding = False


class Driver:
    """Runs the scenario, a generator yielding (condition, deadline, what) waits, from Clock ticks."""

    def __init__(self, app: Any, report: dict[str, Any], args: argparse.Namespace, watch: FrameWatch,
                 holds: WorkerHolds) -> None:
        self.app, self.report, self.args, self.watch, self.holds = app, report, args, watch, holds
        self.scenario = self.run_scenario()
        self.waiting: Step | None = None
        self.done = False

    def tick(self, _dt: float) -> None:
        if self.done:
            return
        try:
            while True:
                if self.waiting is not None:
                    cond, deadline, what = self.waiting
                    if not cond():
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"timed out waiting for {what}")
                        return
                self.waiting = next(self.scenario)
                if "frame" not in self.waiting[2]:
                    self.report["steps"].append([round(time.monotonic() - self.watch.t0, 2), self.waiting[2]])
        except StopIteration:
            self.report["ok"] = True
            self.finish()
        except Exception:  # noqa: BLE001 - every failure goes into the report
            self.fail(traceback.format_exc())

    def fail(self, message: str) -> None:
        if not self.done:
            self.report["error"] = message
            self.finish()

    def finish(self) -> None:
        self.done = True
        self.app.stop()

    # --- helpers (generators: `yield from`) ---------------------------------------------------
    @staticmethod
    def until(cond: Callable[[], bool], what: str, timeout: float = PATIENCE) -> Step:
        return cond, time.monotonic() + timeout, what

    def frames(self, n: int = 1) -> Iterator[Step]:
        """Let n frames pass."""
        from kivy.clock import Clock

        fired: list[bool] = []
        Clock.schedule_interval(lambda _dt: fired.append(True) if len(fired) < n else False, 0)
        yield self.until(lambda: len(fired) >= n, f"{n} frames")

    def tap(self, widget: Any) -> Iterator[Step]:
        assert widget.get_root_window() is not None, f"{widget} is not on screen"
        touch = Touch(*widget.to_window(*widget.center))
        touch.down()
        yield from self.frames()
        touch.up()
        yield from self.frames()

    def type_text(self, text: str, chunk: int = 1) -> Iterator[Step]:
        """Focus the input by tapping it, then type, `chunk` characters per frame."""
        from kivy.core.window import Window

        field = self.app.root.ids.source_input
        if not field.focus:
            yield from self.tap(field)
        assert field.focus, "the text input did not take the focus"
        for i in range(0, len(text), chunk):
            t0 = time.monotonic()
            Window.dispatch("on_textinput", text[i:i + chunk])
            if chunk > 100:  # a paste: TextInput lays out the text on the UI thread; not the app's doing
                self.report.setdefault("paste_seconds", []).append(round(time.monotonic() - t0, 3))
                self.watch.last = None
            yield from self.frames()

    def pick(self, spinner: Any, name: str) -> Iterator[Step]:
        """Open a language picker and tap the option."""
        if spinner.text == name:
            return
        yield from self.tap(spinner)
        yield from self.frames(2)
        options = [w for w in spinner._dropdown.container.children if getattr(w, "text", None) == name]
        assert options, f"{name} is not offered by {spinner.id if hasattr(spinner, 'id') else spinner}"
        yield from self.tap(options[0])
        yield from self.frames(2)
        assert spinner.text == name, f"picker shows {spinner.text!r}, expected {name!r}"

    def translate(self, key: str) -> Iterator[Step]:
        """Tap Translate and wait for the stream to end; records the output and UI updates."""
        app, ids = self.app, self.app.root.ids
        self.watch.stream_frames = self.watch.text_frames = self.watch.pieces = 0
        t0 = time.monotonic()
        yield from self.tap(ids.translate_button)
        yield self.until(lambda: not app.streaming, f"the translation ({key}) to finish")
        yield from self.frames(2)
        self.report[key] = self.snapshot(frames=self.watch.stream_frames, text_frames=self.watch.text_frames,
                                         pieces=self.watch.pieces,
                                         seconds=round(time.monotonic() - t0, 2))

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        app, ids = self.app, self.app.root.ids
        return {
            "input": ids.source_input.text if len(ids.source_input.text) < 500 else
            f"<{len(ids.source_input.text)} characters>",
            "source": ids.source_lang.text,
            "target": ids.target_lang.text,
            "output": app.output_text,
            "output_shown": ids.output_label.text,
            "caption": ids.output_caption.text,
            "status": ids.status_label.text,
            "error": app.error_text,
            "error_shown": ids.error_label.text,
            "error_visible": ids.error_box.height > 0 and ids.error_box.opacity > 0,
            "error_color": list(ids.error_label.color),
            **extra,
        }

    def responsive(self) -> Iterator[Step]:
        """A Clock callback scheduled now must fire promptly: the UI thread is free."""
        from kivy.clock import Clock

        fired: list[float] = []
        t0 = time.monotonic()
        Clock.schedule_once(lambda _dt: fired.append(time.monotonic() - t0), 0)
        yield self.until(lambda: bool(fired), "a Clock tick")
        self.report.setdefault("tick_latencies", []).append(round(fired[0], 3))

    def bad_input(self, key: str, text: str | None, source: str = "English", target: str = "French",
                  chunk: int = 64) -> Iterator[Step]:
        ids = self.app.root.ids
        yield from self.tap(ids.clear_button)
        if ids.source_lang.text != source:
            yield from self.pick(ids.source_lang, source)
        if ids.target_lang.text != target:
            yield from self.pick(ids.target_lang, target)
        if text:
            yield from self.type_text(text, chunk=chunk)
        yield from self.translate(key)
        yield from self.responsive()

    # --- the scenario ----------------------------------------------------------------------------
    def run_scenario(self) -> Iterator[Step]:
        app, ids, report = self.app, self.app.root.ids, self.report
        t0 = time.monotonic()
        yield self.until(lambda: app.loaded or app.load_failed, "the model to load")
        report["load_seconds"] = round(time.monotonic() - t0, 2)
        report["load_error"] = app.error_text
        assert app.loaded, f"the model did not load: {app.error_text}"
        yield from self.frames(2)
        report["translate_enabled_after_load"] = not ids.translate_button.disabled
        report["status_after_load"] = ids.status_label.text
        report["history_at_start"] = len(app.history_data)

        # bad input first (the app is still warming its prompt cache): each gives a clear message,
        # and the window stays responsive
        yield from self.bad_input("empty", None)
        yield from self.bad_input("too_long", TOO_LONG, chunk=len(TOO_LONG))  # pasted in one go
        yield from self.bad_input("same_language", "Hello, how are you?", target="English")
        yield from self.bad_input("markup", MARKUP)
        yield from self.bad_input("wrong_source", FRENCH_TEXT)

        # a first translation, typed and tapped as a user would
        yield from self.tap(ids.clear_button)
        yield from self.type_text(FIRST)
        report["typed"] = ids.source_input.text
        yield from self.translate("first")

        # typing during a stream, then Translate again: the first stream is cancelled
        yield from self.tap(ids.clear_button)
        yield from self.type_text(LONG, chunk=8)
        self.holds.hold_next_stream = True  # it stays in flight until Translate is pressed again
        yield from self.tap(ids.translate_button)
        yield self.until(lambda: bool(app.output_text), "the first streamed piece")
        report["cancel_first_partial"] = app.output_text
        report["cancelled_text"] = ids.source_input.text
        yield from self.type_text(LONG_EXTRA, chunk=16)
        report["typed_while_streaming"] = {"input": ids.source_input.text, "still_streaming": app.streaming,
                                           "worker_held": self.holds.holding}
        report["cancel_was_streaming"] = app.streaming
        yield from self.translate("second")

        # the history: the first translation is listed; tapping it restores it
        yield self.until(lambda: any(d["source_text"] == FIRST for d in app.history_data), "history")
        report["history"] = [dict(d) for d in app.history_data]
        yield from self.frames(2)
        items = [w for w in ids.history.layout_manager.children if getattr(w, "source_text", None) == FIRST]
        assert items, "the first translation is not shown in the history list"
        yield from self.tap(ids.clear_button)
        yield from self.tap(items[0])
        yield from self.frames(2)
        report["restored"] = self.snapshot()

        # copy to the clipboard
        from kivy.core.clipboard import Clipboard

        yield from self.tap(ids.copy_button)
        report["clipboard"] = Clipboard.paste()

        # swap: the languages change places and the translation becomes the input; swap back
        yield from self.tap(ids.swap_button)
        report["swapped"] = self.snapshot()
        yield from self.tap(ids.swap_button)
        report["swapped_back"] = self.snapshot()

        # a few more language pairs, then the state for the screenshot: a fresh translation, no error
        for text, source, target in EXTRAS:
            yield from self.tap(ids.clear_button)
            yield from self.pick(ids.source_lang, source)
            yield from self.pick(ids.target_lang, target)
            yield from self.type_text(text, chunk=6)
            yield from self.translate(f"extra_{target}")
        yield from self.tap(ids.clear_button)
        yield from self.pick(ids.source_lang, "English")
        yield from self.pick(ids.target_lang, "French")
        yield from self.type_text(FINAL, chunk=4)
        yield from self.translate("final")
        yield from self.frames(3)
        from kivy.core.window import Window

        self.args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = Window.screenshot(name=str(self.args.screenshot.with_suffix(".tmp.png")))
        shutil.move(shot, self.args.screenshot)
        report["screenshot"] = str(self.args.screenshot)
        report["window_size"] = list(Window.size)
        report["total_seconds"] = round(time.monotonic() - t0, 2)


if __name__ == "__main__":
    raise SystemExit(main())
