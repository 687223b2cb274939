"""The offline translator: a Kivy app on `edgeinfer.Translator`.

Threading: every Translator call (loading, streaming, history, closing) runs on one worker thread, in
order, so the model is never used by two threads at once. The UI thread only queues work and applies
what the worker hands back through `Clock.schedule_once`; a job that has been superseded (Translate
pressed again, Clear, a history item restored) is recognised by its number and its results dropped.
"""

# ruff: noqa: E402  (the environment, the launch check and Kivy's config come before the imports that
# need them)
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fully offline: models come from the installed packages
os.environ.setdefault("KIVY_NO_ARGS", "1")  # the command line is ours (see run()), not Kivy's

import argparse
import contextlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROG = "edgeinfer-translator"
KIVY_MISSING = f'{PROG}: Kivy is not installed: pip install "edgeinfer[app]"'
NO_DISPLAY = (f"{PROG}: no display to open a window on ({{why}}): run it in a desktop session, or on a "
              f"virtual display: xvfb-run {PROG} (to translate on the command line: edgeinfer translate)")


def launch_check(environ: Mapping[str, str] = os.environ, system: str = sys.platform) -> str | None:
    """Why the app cannot start here, as the one line to print instead; None when nothing is missing.

    Checked before Kivy is imported: Kivy must be installed, and on Linux (Android aside) there must be a
    display, DISPLAY or WAYLAND_DISPLAY. Without one, SDL2 quietly opens an invisible "offscreen" window
    and the app would run unseen. SDL_VIDEODRIVER or KIVY_WINDOW, set on purpose (the tests' offscreen
    window, kmsdrm on a console), choose the window themselves: then this leaves it to `window_check`."""
    try:
        kivy = importlib.util.find_spec("kivy")
    except ImportError:  # a parent or an import hook refused it: not importable either
        kivy = None
    if kivy is None:
        return KIVY_MISSING
    if _linux_desktop(environ, system) and not any(
            environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", "KIVY_WINDOW")):
        return NO_DISPLAY.format(why="DISPLAY and WAYLAND_DISPLAY are not set")
    return None


def window_check(environ: Mapping[str, str] = os.environ, system: str = sys.platform) -> str | None:
    """After `launch_check`: creates Kivy's window and returns the no-display line if it cannot be seen.

    When no window provider starts, Kivy logs "Unable to find any valuable Window provider" and leaves
    Window None (App.run would then exit with status 1). When SDL2 cannot open the display it was given
    (DISPLAY naming no X server, a Wayland session SDL was built without), it falls back to its offscreen
    driver without a word; Kivy's get_window_info() is then None, where a window on X11 or Wayland gives
    its handles. SDL_VIDEODRIVER set on purpose may choose offscreen: that is not checked."""
    from kivy.core.window import Window

    if Window is None:
        return NO_DISPLAY.format(why="Kivy could not create a window")
    window_info = getattr(Window, "get_window_info", None)  # the SDL2 window's; other providers lack it
    if (_linux_desktop(environ, system) and not environ.get("SDL_VIDEODRIVER") and window_info is not None
            and window_info() is None):
        shown = [f"{name}={environ[name]}" for name in ("DISPLAY", "WAYLAND_DISPLAY") if environ.get(name)]
        return NO_DISPLAY.format(why=f"{' or '.join(shown) or 'the display'} could not be opened")
    return None


def _linux_desktop(environ: Mapping[str, str], system: str) -> bool:
    """Linux (or FreeBSD) but not Android: what Kivy calls the 'linux' platform (see kivy.utils)."""
    android = environ.get("KIVY_BUILD") in ("android", "ios") or "P4A_BOOTSTRAP" in environ \
        or "ANDROID_ARGUMENT" in environ
    return system.startswith(("linux", "freebsd")) and not android


def _refuse(message: str) -> int:
    """Prints `message` as the one line on the console (not through Kivy's log, which holds sys.stderr
    once Kivy is imported) and returns the exit status."""
    print(message, file=sys.__stderr__ or sys.stderr, flush=True)
    return 2


_problem = launch_check()
if _problem == KIVY_MISSING:  # nothing below exists without Kivy; both entry points import this module
    raise SystemExit(_refuse(_problem))
if _problem is not None:  # run() will refuse to start: Kivy's import stays off the console and out of files
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")  # no console or file handlers, sys.stderr left alone
    logging.getLogger("kivy").addHandler(logging.NullHandler())  # and not Python's last-resort handler

from kivy.config import Config
from kivy.utils import platform

if platform not in ("android", "ios"):
    # a desktop window of a useful size; must be set before kivy.core.window is imported
    Config.set("graphics", "width", "960")
    Config.set("graphics", "height", "720")
    Config.set("graphics", "minimum_width", "420")
    Config.set("graphics", "minimum_height", "560")
    Config.set("input", "mouse", "mouse,multitouch_on_demand")  # no red dots on right click

from edgeinfer_converters.preparation import prepare_for_use
from kivy.app import App
from kivy.clock import Clock
from kivy.properties import (
    BooleanProperty,
    ColorProperty,
    ListProperty,
    NumericProperty,
    StringProperty,
)
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button

import edgeinfer as ei

logging.getLogger("edgeinfer.llama_cpp").setLevel(logging.WARNING)  # llama.cpp's load log: not for the app
KV_FILE = Path(__file__).with_name("translator.kv")
DEFAULT_MODEL = "gemma-3-270m"
DETECT = "Detect language"
HISTORY_LIMIT = 20


# --- widgets styled in translator.kv --------------------------------------------------------------
class FlatButton(Button):
    """A flat, rounded button (colours set in the kv file)."""

    bg = ColorProperty("#2f6feb")
    bg_down = ColorProperty("#1f56c2")
    bg_disabled = ColorProperty("#a9bde6")
    border_rgba = ColorProperty([0, 0, 0, 0])


class HistoryItem(ButtonBehavior, BoxLayout):
    """A recent translation; tapping it restores it."""

    index = NumericProperty(0)
    title = StringProperty("")
    source_text = StringProperty("")
    text = StringProperty("")


class TranslatorRoot(BoxLayout):
    """The whole window (laid out in translator.kv)."""


# --- the app --------------------------------------------------------------------------------------
class TranslatorApp(App):
    """The translator. `translator_options` go to `edgeinfer.Translator` (model, memory, n_threads)."""

    title = "edgeinfer · Offline Translator"
    kv_file = str(KV_FILE)

    loaded = BooleanProperty(False)
    load_failed = BooleanProperty(False)
    load_progress = NumericProperty(0.0)  # 0..1
    load_message = StringProperty("Starting…")
    streaming = BooleanProperty(False)
    source_name = StringProperty("English")
    target_name = StringProperty("French")
    output_text = StringProperty("")
    output_caption = StringProperty("Translation")
    error_text = StringProperty("")
    status_text = StringProperty("Loading the model…")
    history_data = ListProperty([])
    language_names = ListProperty([])
    source_names = ListProperty([])

    def __init__(self, translator_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.translator_options = {"model": DEFAULT_MODEL, **(translator_options or {})}
        if self.translator_options.get("n_threads") is None:
            self.translator_options["n_threads"] = default_threads()
        self.language_names = list(ei.LANGUAGES.values())
        self.source_names = [DETECT, *self.language_names]
        self._codes = {name: code for code, name in ei.LANGUAGES.items()}
        self._translator: Any = None
        self._described: dict[str, str] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="translator")
        self._lock = threading.Lock()
        self._job = 0  # number of the translation the UI wants; older jobs' results are dropped
        self._stream: Any = None  # the stream being read by the worker, to cancel it
        self._history: list[Any] = []
        self._last: Any = None  # the last Translation shown
        self._stopped = False

    # --- Kivy lifecycle -------------------------------------------------------------------------
    def build(self) -> TranslatorRoot:
        return TranslatorRoot()

    def on_start(self) -> None:
        from kivy.core.window import Window

        Window.bind(on_key_down=self._on_key_down)
        self._submit(self._load_job)

    def on_stop(self) -> None:
        if self._stopped:  # Kivy may dispatch on_stop twice (stop(), then the window closing)
            return
        self._stopped = True
        self._cancel_current()  # a running job ends quickly; queued ones see they are stale
        self._worker.submit(self._close_job)
        self._worker.shutdown(wait=True)

    # --- actions (UI thread) --------------------------------------------------------------------
    def translate(self) -> None:
        """Translate the input; a translation still streaming is cancelled first."""
        if not self.loaded:
            return
        text = self.root.ids.source_input.text
        job = self._cancel_current()
        self.error_text = ""
        self.output_text = ""
        self.streaming = True
        self.output_caption = f"{self.target_name} · translating…"
        source = self._codes.get(self.source_name)  # None: detect
        target = self._codes[self.target_name]
        self._submit(self._translate_job, job, text, source, target, job=job)

    def swap(self) -> None:
        """Swap the languages; the last translation becomes the new input."""
        source = self._codes.get(self.source_name) or (self._last.source if self._last else None)
        if source is None:
            self.error_text = "Pick the source language before swapping (it has not been detected yet)."
            return
        was_streaming = self.streaming
        self._cancel_current()
        self.streaming = False
        new_source, new_target = self.target_name, ei.LANGUAGES[source]
        if new_target == new_source:
            return
        self.source_name, self.target_name = new_source, new_target
        if self.output_text and not was_streaming:  # a finished translation becomes the input
            self.root.ids.source_input.text = self.output_text
            self.output_text = ""
            self.output_caption = "Translation"
        self.error_text = ""

    def copy(self) -> None:
        if self.output_text:
            from kivy.core.clipboard import Clipboard

            Clipboard.copy(self.output_text)
            self.output_caption = f"{self.target_name} · copied"

    def clear(self) -> None:
        self._cancel_current()
        self.streaming = False
        self.root.ids.source_input.text = ""
        self.output_text = ""
        self.output_caption = "Translation"
        self.error_text = ""

    def restore(self, index: int) -> None:
        """Show a translation from the history again."""
        if not 0 <= index < len(self._history):
            return
        item = self._history[int(index)]
        self._cancel_current()
        self.streaming = False
        self.source_name = ei.LANGUAGES.get(item.source, self.source_name)
        self.target_name = ei.LANGUAGES.get(item.target, self.target_name)
        self.root.ids.source_input.text = item.source_text
        self.output_text = item.text
        self.output_caption = f"{self.target_name} · from history"
        self.error_text = ""

    def _on_key_down(self, _window: Any, key: int, _scancode: int, _codepoint: str, modifiers: list) -> bool:
        if key in (13, 271) and ("ctrl" in modifiers or "meta" in modifiers):  # Ctrl+Enter
            self.translate()
            return True
        return False

    # --- the worker -----------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., None], *args: Any, job: int | None = None) -> None:
        self._worker.submit(self._guarded, job, fn, *args)

    def _guarded(self, job: int | None, fn: Callable[..., None], *args: Any) -> None:
        """Runs a job on the worker; any failure becomes a message in the window."""
        try:
            fn(*args)
        except ei.EdgeInferError as e:
            self._post(self._on_error, job, _sentence(str(e)))
        except Exception as e:  # noqa: BLE001 - the app must show any failure, never die of it
            self._post(self._on_error, job, f"Something went wrong: {type(e).__name__}: {e}")

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        Clock.schedule_once(lambda _dt: fn(*args), 0)

    def _cancel_current(self) -> int:
        """Supersede the current translation; returns the number of the next one."""
        with self._lock:
            self._job += 1
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
        return self._job

    def _load_job(self) -> None:
        def progress(fraction: float, message: str) -> None:
            self._post(self._on_progress, fraction, message)

        _lower_priority()  # this thread, and the model's threads started from it, yield to the UI
        self._post(self._on_progress, 0.0, f"Loading {self.translator_options['model']}…")
        if self.translator_options.get("shortlist", True):  # the vocabulary cut to our languages, once
            prepare_for_use(self.translator_options["model"], offline=self.translator_options.get("offline"),
                            on_progress=lambda message: progress(0.3, message))
        translator = ei.Translator(**self.translator_options, on_progress=progress)
        self._translator = translator
        described = translator.describe()
        history = translator.history(limit=HISTORY_LIMIT)
        self._post(self._on_loaded, described, history)
        source = self._codes.get(self.source_name)
        if source is not None and source != self._codes[self.target_name]:
            translator.warm(source, self._codes[self.target_name])  # the pair's prompt prefix, cached now

    def _close_job(self) -> None:
        if self._translator is not None:
            self._translator.close()
            self._translator = None

    def _translate_job(self, job: int, text: str, source: str | None, target: str) -> None:
        if job != self._job:
            return
        stream = self._translator.stream(text, to=target, source=source)
        with self._lock:
            current = job == self._job
            if current:
                self._stream = stream
        if not current:
            stream.cancel()
            return
        for piece in stream:
            if job != self._job:
                return  # cancelled from the UI thread
            if piece:
                self._post(self._on_piece, job, piece)
        if job != self._job:
            return
        result = stream.result()  # already read to its end: returns the Translation
        with self._lock:
            if self._stream is stream:
                self._stream = None
        history = self._translator.history(limit=HISTORY_LIMIT)
        self._post(self._on_done, job, result, history)

    # --- results, back on the UI thread ---------------------------------------------------------
    def _on_progress(self, fraction: float, message: str) -> None:
        if not self.loaded:
            self.load_progress = max(0.0, min(1.0, float(fraction)))
            self.load_message = _sentence(message, end="…" if fraction < 1 else ".")

    def _on_loaded(self, described: dict[str, str], history: list[Any]) -> None:
        self._described = described
        self.load_progress = 1.0
        self.load_message = "Ready"
        self.loaded = True
        self.status_text = self._status()
        self._set_history(history)

    def _on_piece(self, job: int, piece: str) -> None:
        if job == self._job:
            self.output_text += piece

    def _on_done(self, job: int, result: Any, history: list[Any]) -> None:
        self._set_history(history)
        if job != self._job:
            return
        self._last = result
        self.streaming = False
        self.output_text = result.text
        caption = ei.LANGUAGES.get(result.target, self.target_name)
        if self._codes.get(self.source_name) is None and result.source in ei.LANGUAGES:
            caption += f" · from {ei.LANGUAGES[result.source]} (detected)"
        if result.from_memory:
            caption += " · from translation memory"
        self.output_caption = caption
        self.status_text = self._status(result)

    def _on_error(self, job: int | None, message: str) -> None:
        if not self.loaded and self._translator is None:  # loading failed
            self.load_failed = True
            self.load_message = "The model could not be loaded."
            self.status_text = "No model loaded"
            self.error_text = message
            return
        if job is not None and job != self._job:
            return
        self.streaming = False
        self.output_caption = "Translation"
        self.error_text = message

    def _set_history(self, history: list[Any]) -> None:
        self._history = list(history)
        self.history_data = [
            {
                "index": i,
                "title": f"{ei.LANGUAGES.get(h.source, h.source)} → {ei.LANGUAGES.get(h.target, h.target)}",
                "source_text": " ".join(h.source_text.split()),
                "text": " ".join(h.text.split()),
            }
            for i, h in enumerate(self._history)
        ]

    def _status(self, result: Any = None) -> str:
        d = self._described
        parts = [f"Model: {d.get('model', '?')}", f"{d.get('backend', '?')} / {d.get('device', '?')}"]
        if result is not None:
            stats = result.stats
            if result.from_memory:
                parts.append("from translation memory")
            else:
                parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
            parts.append(f"{stats.cached_tokens} cached tokens")
        else:
            parts.append("ready")
        return "  ·  ".join(parts)


def default_threads() -> int:
    """Model threads: every physical core but one, which stays free for the UI (and a software
    renderer). llama.cpp's threads spin while they wait for each other, so sharing every core with the
    UI thread slows both down many times over."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 2
    return max(1, cores - 1)


def _lower_priority(niceness: int = 10) -> None:
    """Lower the calling thread's CPU priority (Linux and Android: per thread, and inherited by the
    threads it starts), so that on a busy CPU the UI thread still gets its frames."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError:  # not allowed here: run at normal priority
        pass


def _sentence(message: str, end: str = ".") -> str:
    """An error or progress message as a sentence: capital first letter, closing punctuation."""
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message[-1] in ".!?…" else message + end


def run(argv: list[str] | None = None) -> int:
    """Entry point of `edgeinfer-translator` and `python -m edgeinfer_apps.translator`."""
    parser = argparse.ArgumentParser(prog=PROG, description="Offline translation app.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name or .gguf path (default: %(default)s)")
    parser.add_argument("--memory", default=None,
                        help="translation memory (SQLite) path; 'off' disables it (default: the user's own)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model (default: all physical cores but one)")
    with contextlib.redirect_stderr(sys.__stderr__ or sys.stderr):  # usage errors: plain, not Kivy's log
        args = parser.parse_args(argv)
    problem = launch_check() or window_check()  # no display: one line instead of an invisible window
    if problem is not None:
        return _refuse(problem)
    options: dict[str, Any] = {"model": args.model, "n_threads": args.threads}
    if args.memory is not None:
        options["memory"] = False if args.memory == "off" else args.memory
    TranslatorApp(translator_options=options).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
