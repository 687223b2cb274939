"""Starting the translator app where it cannot run: one line that says what is missing, exit status 2.

Each test starts the app's real entry points in a subprocess, as a user would (`python -m
edgeinfer_apps.translator`, or the `edgeinfer-translator` console script's own code), in an environment
without a display or without Kivy. None of them gets as far as loading a model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("kivy") is None,
                                reason="Kivy is not installed (.[app])")

ROOT = Path(__file__).resolve().parents[1]
APP = "edgeinfer-translator"
# A guard against a hang only: the app answers in about a second. Without these checks it would open an
# invisible window and wait there, and this is how long the test waits before calling that a failure.
TIMEOUT = 60
# what chooses a display, a video driver or the platform, in the environment these tests start from
DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", "KIVY_WINDOW", "KIVY_BUILD",
                     "P4A_BOOTSTRAP", "ANDROID_ARGUMENT")
# the console script `edgeinfer-translator` that pip writes (edgeinfer_apps.translator.main:run)
CONSOLE_SCRIPT = "import sys\nfrom edgeinfer_apps.translator.main import run\nsys.exit(run())\n"
# Kivy, hidden from this interpreter as if it were not installed: `import kivy` raises what it raises
# when no kivy is on sys.path
WITHOUT_KIVY = textwrap.dedent("""\
    import sys

    class NoKivy:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "kivy" or name.startswith("kivy."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoKivy)
    """)


def start(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `python ARGS` from the repository, with no display (unless `env` sets one) and its own
    Kivy home; the app, should it start anyway, gets a model that does not exist and no memory."""
    environ = {k: v for k, v in os.environ.items() if k not in DISPLAY_VARIABLES}
    environ.update(KIVY_HOME=str(tmp_path / "kivy-home"), HF_HUB_OFFLINE="1", **env)
    command = [sys.executable, *args, "--model", str(tmp_path / "missing.gguf"), "--memory", "off"]
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=TIMEOUT)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_without_a_display_it_says_so_in_one_line(tmp_path: Path) -> None:
    proc = start(["-m", "edgeinfer_apps.translator"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    [line] = lines(proc.stderr)  # nothing else: not Kivy's log either
    assert line.startswith(f"{APP}: no display")
    assert "DISPLAY and WAYLAND_DISPLAY are not set" in line
    assert f"xvfb-run {APP}" in line and "edgeinfer translate" in line


def test_a_display_that_cannot_be_opened_gets_the_same_line(tmp_path: Path) -> None:
    """DISPLAY names an X server that is not there: SDL2 falls back to an invisible offscreen window
    without a word; the app notices once the window exists (Kivy has logged its start by then)."""
    display = ":4242"
    assert not Path(f"/tmp/.X11-unix/X{display[1:]}").exists()
    proc = start(["-m", "edgeinfer_apps.translator"], tmp_path, DISPLAY=display)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = lines(proc.stderr)[-1]  # the last word on the console
    assert line.startswith(f"{APP}: no display"), proc.stderr[-3000:]
    assert f"DISPLAY={display} could not be opened" in line
    assert f"xvfb-run {APP}" in line
    assert not [ln for ln in lines(proc.stderr) if ln.startswith(APP) and ln != line]  # said once


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_without_kivy_it_says_how_to_install_it(tmp_path: Path, entry: str) -> None:
    launch = CONSOLE_SCRIPT if entry == "console script" else \
        "import runpy\nrunpy.run_module('edgeinfer_apps.translator', run_name='__main__', alter_sys=True)\n"
    proc = start(["-c", WITHOUT_KIVY + launch], tmp_path, DISPLAY=":0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert lines(proc.stderr) == [f'{APP}: Kivy is not installed: pip install "edgeinfer[app]"']


def test_the_checks_leave_a_usual_setup_alone(tmp_path: Path) -> None:
    """Displays, the tests' own offscreen window, Android, macOS and Windows: nothing to say."""
    code = textwrap.dedent("""\
        import json
        from edgeinfer_apps.translator.main import launch_check
        cases = {
            "x11": ({"DISPLAY": ":0"}, "linux"),
            "wayland": ({"WAYLAND_DISPLAY": "wayland-0"}, "linux"),
            "sdl offscreen": ({"SDL_VIDEODRIVER": "offscreen"}, "linux"),
            "kivy window": ({"KIVY_WINDOW": "egl_rpi"}, "linux"),
            "android": ({"P4A_BOOTSTRAP": "SDL2"}, "linux"),
            "macos": ({}, "darwin"),
            "windows": ({}, "win32"),
            "bare linux": ({}, "linux"),
        }
        print(json.dumps({name: launch_check(env, system) for name, (env, system) in cases.items()}))
        """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "KIVY_HOME": str(tmp_path / "kivy-home"),
                                                "SDL_VIDEODRIVER": "offscreen", "KIVY_WINDOW": "sdl2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found.pop("bare linux").startswith(f"{APP}: no display")
    assert found == dict.fromkeys(found)


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed")
def test_a_real_display_passes_both_checks(tmp_path: Path) -> None:
    """On an X server (Xvfb) the window is a real one: the app would start."""
    code = textwrap.dedent("""\
        import sys
        from edgeinfer_apps.translator.main import launch_check, window_check
        print(repr(launch_check()), repr(window_check()), file=sys.__stdout__)
        """)
    environ = {k: v for k, v in os.environ.items() if k not in DISPLAY_VARIABLES}
    environ["KIVY_HOME"] = str(tmp_path / "kivy-home")
    proc = subprocess.run(["xvfb-run", "-a", sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT, env=environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "None None", proc.stderr[-3000:]
