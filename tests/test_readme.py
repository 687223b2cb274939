"""The README's code blocks, run as a reader runs them on a fresh clone.

Every fenced block of README.md is classified in PLANS: it runs, or it is skipped with the reason (it
starts a server, installs packages, rebuilds llama.cpp for a GPU, needs buildozer or a display, needs a
checkpoint from the hub, or is output rather than a command). A block that PLANS does not classify fails
``test_every_block_is_classified``, so an example cannot join the README untested; an entry that matches
no block fails it too.

Blocks run in one folder (the reader's working directory, a temporary one) with the session's
EDGEINFER_HOME / EDGEINFER_DATA and HF_HUB_OFFLINE=1. A Python block runs in a fresh interpreter; one that
continues an earlier block (uses its ``model``) runs in the same interpreter after it (``joins``). A shell
block runs command by command (a trailing ``\\`` joins lines; comment lines are not commands). Each
command or block must exit 0 without a traceback, print something, leak no chat markup, and print what the
README says it prints (a key word of it, or JSON that parses). Where a block reads a file that is the
reader's own (labels.jsonl), its plan's ``setup`` writes one; where a Python block prints nothing, its
``epilogue`` prints what it made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELLS = ("bash", "sh", "shell", "console", "zsh")
MARKUP = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>")
END = "=====README-BLOCK-END====="  # printed between joined Python blocks, to split their output
COMMAND_TIMEOUT_S = 240

Key = tuple[str, str]  # (the heading a block sits under, a prefix of its first line)
Check = Callable[[str], None]  # raises AssertionError on a bad answer (gets stdout)


# --- the README's blocks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    lang: str
    heading: str
    lines: tuple[str, ...]
    at: int  # README line of the opening fence

    @property
    def first(self) -> str:
        return next((line.strip() for line in self.lines if line.strip()), "")

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    @property
    def shell(self) -> bool:
        return self.lang in SHELLS


def _blocks(text: str) -> list[Block]:
    """Fenced blocks with their language and the heading above them."""
    blocks: list[Block] = []
    heading, fence, lang, body, start = "", None, "", [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.lstrip().startswith("```"):
                fence, lang, body, start = line.strip()[:3], line.strip()[3:].strip().lower(), [], n
        elif line.strip() == fence:
            blocks.append(Block(lang, heading, tuple(body), start))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"README.md:{start}: a code block is never closed"
    return blocks


BLOCKS = _blocks(README.read_text(encoding="utf-8"))


def _commands(block: Block) -> list[str]:
    """A shell block's commands: continuation lines joined, blank and comment lines left out (in a
    console block, only ``$ `` lines and their continuations are commands: the rest is output)."""
    commands, pending = [], ""
    for line in block.lines:
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        line = f"{pending} {line.strip()}" if pending else line.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def _without_optional(command: str) -> str:
    """A usage line as a command: its ``[optional]`` parts left out."""
    return re.sub(r"\s+\[[^\]]*\]", "", command)


# --- how each block runs, and what it must print ---------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """One command of a shell block that runs; commands without a Line run as written."""

    expect: tuple[str, ...] = ()  # key words of the answer (case-insensitive)
    json: bool = False  # stdout is one JSON document
    check: Check | None = None
    stdin: str | None = None  # what the reader types
    usage: bool = False  # a usage line: run without its [optional] parts
    quiet: bool = False  # prints nothing by design (it writes a file)
    skip: str | None = None


@dataclass(frozen=True)
class Plan:
    skip: str | None = None
    joins: Key | None = None  # a Python block run after this one, in the same interpreter
    needs: tuple[Key, ...] = ()  # blocks run first, in the same folder (they write files this one reads)
    setup: Callable[[Path], None] | None = None  # writes the reader's own input files into the folder
    epilogue: str = ""  # a Python block that prints nothing: code the test adds to print what it made
    expect: tuple[str, ...] = ()
    check: Check | None = None
    lines: dict[str, Line] = field(default_factory=dict)  # shell: command prefix -> how it runs
    xfail: str | None = None  # a known failure, until it is fixed
    hub: Callable[[], dict[str, dict[str, Any]]] | None = None  # repos a local hub serves to a shell block


def _json_of(stdout: str) -> Any:
    try:
        return json.loads(stdout)
    except ValueError as exc:
        raise AssertionError(f"not JSON ({exc}): {stdout[:300]!r}") from exc


def _text_answer(stdout: str) -> None:
    assert _json_of(stdout)["text"].strip(), "empty text"


def _person(stdout: str) -> None:
    person = _json_of(stdout)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str), person
    assert isinstance(person["age"], int), person


def _route(kind: str) -> Check:
    def check(stdout: str) -> None:
        assert kind in _json_of(stdout)["route"], f"route is not {kind}"
    return check


def _first_turn_reused(stdout: str) -> None:
    """The line before the overflow message is the second chat turn's cached_tokens."""
    lines = stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if "context holds" in line)
    assert int(lines[at - 1]) > 0, f"the second turn reused no tokens: {lines[at - 1]!r}"


def _structured(stdout: str) -> None:
    value, _ = json.JSONDecoder().raw_decode(stdout.splitlines()[0])
    assert value == {"name": "Alice", "age": 31}, value


def _detected_english(stdout: str) -> None:
    """The first line is ``done.text, done.source, ...``: the source language was detected."""
    assert re.search(r"\ben\b", stdout.splitlines()[0]), "the source was not detected as English"


def _chat_answered(stdout: str) -> None:
    assert stdout.replace(">>>", "").strip(), "chat printed no answer"


def _labels(folder: Path) -> None:
    """The reader's labelled requests (none ship with a clone): the shipped evaluation set's prompts,
    translation and extraction labelled as needing the large tier."""
    shipped = (ROOT / "edgeinfer" / "data" / "routing_eval.jsonl").read_text(encoding="utf-8")
    lines = []
    for row in map(json.loads, shipped.splitlines()):
        label = "large" if row["task"] in ("translation", "extraction") else "small"
        lines.append(json.dumps({"prompt": row["prompt"], "label": label}) + "\n")
    (folder / "labels.jsonl").write_text("".join(lines), encoding="utf-8")


def _hub_repos() -> dict[str, dict[str, Any]]:
    """The Hub repos the README pulls, as a local hub serves them: SmolLM2's GGUF (Q4_1, the bundled file)
    and its safetensors checkpoint (rebuilt from that GGUF by tests/hf_fixtures.py)."""
    from hf_fixtures import gguf_source, rebuilt_checkpoint

    checkpoint = rebuilt_checkpoint("smollm2")
    gguf = {"SmolLM2-135M-Instruct-Q4_1.gguf": gguf_source("smollm2")[0]}
    return {"bartowski/SmolLM2-135M-Instruct-GGUF": gguf,
            "HuggingFaceTB/SmolLM2-135M-Instruct": {p.name: p for p in checkpoint.iterdir() if p.is_file()}}


PYTHON: Key = ("Python", "import edgeinfer as ei")
ROUTER: Key = ("Routing", "import edgeinfer as ei")
ROUTER_TRAIN: Key = ("Routing", "# {\"prompt\"")

PLANS: dict[Key, Plan] = {
    ("Two commands", 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[models]"'): Plan(
        skip="creates a venv and pip-installs the package (network, minutes); its last command, `edgeinfer "
             "chat`, runs in the command-line block"),
    ("Two commands", 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"'): Plan(
        skip="creates a venv, pip-installs the test extra and runs the whole test suite, this test included"),
    ("The command line", "edgeinfer run smollm2-135m-instruct"): Plan(lines={
        'edgeinfer run smollm2-135m-instruct "What is the capital of France?"': Line(expect=("paris",)),
        'edgeinfer run smollm2 "Write a haiku': Line(json=True, check=_text_answer),
        "echo '{\"type\": \"object\"": Line(quiet=True),
        'edgeinfer run smollm2 "Alice, 31, as JSON"': Line(check=_person, expect=("alice",)),
        "edgeinfer chat": Line(usage=True, stdin="Name three primary colors.\n/exit\n", check=_chat_answered),
        "edgeinfer env": Line(expect=("backend", "smollm2-135m-instruct")),
        "edgeinfer list": Line(expect=("smollm2-135m-instruct", "gemma-3-270m")),
        "edgeinfer pull": Line(usage=True, expect=("gemma-3-270m",)),
        "edgeinfer lock verify": Line(expect=("ok",)),
        "edgeinfer serve": Line(skip="starts a server that runs until stopped (tests/test_server.py)"),
    }),
    PYTHON: Plan(expect=("paris", "context"), check=_first_turn_reused),
    ("Python", "s = model.stream("): Plan(joins=PYTHON, expect=("length", "cancelled")),
    ("Structured output", "import edgeinfer as ei"): Plan(
        check=_structured, expect=("blue", "1945", "tokens needed no sampling step")),
    ("Server", "edgeinfer serve"): Plan(
        skip="starts servers that run until stopped (tests/test_server.py, tests/test_serve_router.py)"),
    ("Server", "from openai import OpenAI"): Plan(
        skip="a client of a running `edgeinfer serve` on port 8000 (tests/test_server.py uses the openai "
             "client the same way)"),
    ("Server", "$ curl -s localhost:8000/metrics"): Plan(
        skip="a curl against a running server, then its output (tests/test_server_metrics.py)"),
    ("Memory budget", "import edgeinfer as ei"): Plan(expect=("fits at most", "4096 1")),
    ("KV-cache reuse", "import edgeinfer as ei"): Plan(
        epilogue='print(chat.messages[-1]["role"], chat.messages[-1]["content"])', expect=("assistant",)),
    ("Your own models from the Hugging Face Hub", "edgeinfer pull hf:"): Plan(hub=_hub_repos, lines={
        "edgeinfer pull hf:bartowski/": Line(expect=("smollm2-135m-instruct-q4_1", "pinned")),
        "edgeinfer pull hf:HuggingFaceTB/": Line(expect=("smol-mine: pinned", "mean kl")),
        "edgeinfer run smol-mine": Line(expect=("paris",)),
        "edgeinfer list": Line(expect=("smol-mine", "user")),
        "edgeinfer rm smol-mine": Line(expect=("removed smol-mine",))}),
    ("Converting Hugging Face models", "pip install -e \".[convert]\""): Plan(
        skip="pip-installs the convert extra, then converts checkpoint folders (./SmolLM2-135M-Instruct, "
             "./my-model, ./all-MiniLM-L6-v2) downloaded from the Hugging Face hub, not in a clone "
             "(tests/test_convert_*.py convert checkpoints they build)"),
    ("Converting Hugging Face models", "from edgeinfer_converters import convert"): Plan(
        skip="converts ./SmolLM2-135M-Instruct, a checkpoint folder downloaded from the Hugging Face hub, "
             "not in a clone (tests/test_convert_gguf.py)"),
    ("Converting Hugging Face models", "edgeinfer run smollm2-135m-instruct"): Plan(lines={
        'edgeinfer run smollm2-135m-instruct "What is the capital of France?" --backend onnx': Line(
            expect=("paris",))}),
    ROUTER: Plan(expect=("cascade",)),
    ("Routing", "edgeinfer run smollm2-135m-instruct"): Plan(lines={
        "edgeinfer run": Line(json=True, check=_route("cascade"))}),
    ROUTER_TRAIN: Plan(setup=_labels, lines={
        "edgeinfer router train": Line(expect=("trained on", "cross-validated")),
        "edgeinfer run": Line(json=True, check=_route("learned"))}),
    ("Routing", "embedder = ei.load(\"all-minilm-l6-v2\")"): Plan(
        joins=ROUTER, needs=(ROUTER_TRAIN,),
        epilogue='print(router.generate("Translate to French: The cat sleeps.", max_tokens=16).stats.route)',
        expect=("learned",)),
    ("Translation", "import edgeinfer as ei"): Plan(check=_detected_english),
    ("Translation", "edgeinfer translate"): Plan(lines={
        "echo": Line(json=True, check=_text_answer)}),
    ("The translator app", "pip install"): Plan(
        skip="pip-installs the app extra, then opens the Kivy app's window until it is closed "
             "(tests/test_app_translator.py runs the app headless)"),
    ("The translator app", "cd apps/translator"): Plan(
        skip="needs buildozer, Java 17, the Android SDK/NDK (downloaded on first run, ~1 h) and a phone"),
    ("GPUs", 'CMAKE_ARGS="-DGGML_CUDA=on"'): Plan(
        skip="rebuilds llama-cpp-python from source for CUDA or Metal (needs that toolkit and GPU)"),
    ("Benchmarks", "edgeinfer bench"): Plan(
        skip="./smollm2-int4-onnx is an ONNX conversion of a checkpoint from the Hugging Face hub, not in a "
             "clone, and the benchmark runs every model 3 times in fresh processes (tests/test_bench.py)"),
}


def _keys(block: Block) -> list[Key]:
    return [key for key in PLANS if key[0] == block.heading and block.first.startswith(key[1])]


def _plan(block: Block) -> Plan:
    keys = _keys(block)
    assert len(keys) == 1, (f"README.md:{block.at}: the {block.lang or 'plain'} block under "
                            f"{block.heading!r} starting {block.first!r} matches {len(keys)} entries of "
                            "PLANS (each block needs exactly one: say how it runs, or why it cannot)")
    return PLANS[keys[0]]


def _by_key(key: Key) -> Block:
    found = [b for b in BLOCKS if key in _keys(b)]
    assert len(found) == 1, f"{key} matches {len(found)} README blocks"
    return found[0]


def _root(block: Block) -> Block:
    """The first block of the chain of Python blocks this one joins."""
    while (joins := _plan(block).joins) is not None:
        block = _by_key(joins)
    return block


def _line_rule(plan: Plan, command: str) -> Line:
    rules = [rule for prefix, rule in plan.lines.items() if command.startswith(prefix)]
    assert len(rules) <= 1, f"{command!r} matches {len(rules)} line rules"
    return rules[0] if rules else Line()


# --- running ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ran:
    what: str  # the command, or "the Python block"
    rc: int
    out: str
    err: str


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # edgeinfer, python
    return env


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _run(argv: list[str], cwd: Path, what: str, stdin: str | None = None,
         env: dict[str, str] | None = None) -> Ran:
    try:
        done = subprocess.run(argv, cwd=cwd, env={**_env(), **(env or {})}, input=stdin or "",
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:  # its output is bytes, whatever text= said
        out, err = (_text(x) for x in (exc.stdout, exc.stderr))
        return Ran(what, -1, out, f"timed out after {COMMAND_TIMEOUT_S} s\n{err}")
    return Ran(what, done.returncode, done.stdout, done.stderr)


class Reader:
    """Runs blocks in one working folder, each once, what a block needs before it."""

    def __init__(self, folder: Path, scripts: Path) -> None:
        self.folder, self.scripts = folder, scripts
        self.results: dict[int, list[Ran]] = {}

    def run(self, block: Block) -> list[Ran]:
        if block.at not in self.results:
            plan = _plan(block)
            for need in plan.needs:
                self.run(_by_key(need))
            if plan.setup is not None:
                plan.setup(self.folder)
            if block.shell:
                self.results[block.at] = self._shell(block, plan)
            else:
                self._python_group(block)
        return self.results[block.at]

    def _shell(self, block: Block, plan: Plan) -> list[Ran]:
        if plan.hub is None:
            return self._commands(block, plan)
        from local_hub import LocalHub

        with LocalHub() as hub:  # the Hub the block pulls from, on 127.0.0.1, with a lock of its own
            for repo, files in plan.hub().items():
                hub.add_repo(repo, files)
            env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "EDGEINFER_CONFIG": str(self.folder / "config")}
            return self._commands(block, plan, env)

    def _commands(self, block: Block, plan: Plan, env: dict[str, str] | None = None) -> list[Ran]:
        ran = []
        for command in _commands(block):
            rule = _line_rule(plan, command)
            if rule.skip is None:
                command = _without_optional(command) if rule.usage else command
                ran.append(_run(["bash", "-o", "pipefail", "-c", command], self.folder, command, rule.stdin,
                                env))
        return ran

    def _python_group(self, block: Block) -> None:
        """The block with the blocks it joins and those that join it, in one interpreter, README order."""
        root = _root(block)
        group = [b for b in BLOCKS if not b.shell and _root(b) is root]
        for member in group:
            plan = _plan(member)
            for need in plan.needs:
                self.run(_by_key(need))
            if plan.setup is not None:
                plan.setup(self.folder)
        mark = f"print({END!r}, flush=True); print({END!r}, file=__import__('sys').stderr, flush=True)\n"
        code = "".join(f"{m.text}{_plan(m).epilogue}\n{mark}" for m in group)
        script = self.scripts / f"readme_{root.at}.py"
        script.write_text(code, encoding="utf-8")
        whole = _run([sys.executable, str(script)], self.folder, "the Python block")
        outs, errs = whole.out.split(END + "\n"), whole.err.split(END + "\n")
        for n, member in enumerate(group):
            if n < len(outs) - 1:  # it printed its end mark: it ran through
                self.results[member.at] = [Ran(whole.what, 0, outs[n], errs[min(n, len(errs) - 1)])]
            elif n == len(outs) - 1:  # it failed
                self.results[member.at] = [Ran(whole.what, whole.rc or 1, outs[n], errs[-1])]
            else:
                self.results[member.at] = [Ran(whole.what, -1, "", "not run: a block it joins failed")]


def _problems(ran: Ran, expect: tuple[str, ...], check: Check | None, as_json: bool,
              quiet: bool) -> list[str]:
    found = []
    if ran.rc != 0:
        found.append(f"exit status {ran.rc}")
    if "Traceback" in ran.err:
        found.append("a traceback on stderr")
    if not quiet and not ran.out.strip():
        found.append("printed nothing")
    found += [f"chat markup {m!r} in the output" for m in MARKUP if m in ran.out]
    found += [f"{word!r} not in the output" for word in expect if word.lower() not in ran.out.lower()]
    if not found and (as_json or check is not None):
        try:
            if as_json:
                _json_of(ran.out)
            if check is not None:
                check(ran.out)
        except (AssertionError, KeyError, ValueError, StopIteration, IndexError) as exc:
            found.append(f"{type(exc).__name__}: {exc}")
    if found:
        tails = f"--- stdout\n{ran.out[-2000:]}\n--- stderr\n{ran.err[-3000:]}"
        return [f"{ran.what}: {', '.join(found)}\n{tails}"]
    return []


# --- the tests --------------------------------------------------------------------------------------------
def _id(block: Block) -> str:
    n = sum(1 for b in BLOCKS[:BLOCKS.index(block)] if b.heading == block.heading) + 1
    return f"{re.sub(r'[^a-z0-9]+', '-', block.heading.lower()).strip('-')}-{n}-{block.lang}"


def test_every_block_is_classified():
    """Each README block matches exactly one PLANS entry, each entry and line rule matches something."""
    assert len(BLOCKS) > 20
    unclassified = [f"README.md:{b.at} ({b.heading}: {b.first})" for b in BLOCKS if len(_keys(b)) != 1]
    assert unclassified == [], "add these blocks to PLANS in tests/test_readme.py"
    stale = [key for key in PLANS if not any(key in _keys(b) for b in BLOCKS)]
    assert stale == [], "these PLANS entries match no README block"
    for block in BLOCKS:
        plan = _plan(block)
        assert plan.skip is None or not (plan.lines or plan.expect or plan.check), block.first
        assert plan.skip is not None or block.shell or block.lang == "python", (
            f"README.md:{block.at}: only shell and Python blocks run; skip a {block.lang or 'plain'} block "
            "with its reason (e.g. output, not a command)")
        commands = _commands(block) if block.shell else []
        unused = [prefix for prefix in plan.lines if not any(c.startswith(prefix) for c in commands)]
        assert unused == [], f"line rules of README.md:{block.at} that match no command"
        for key in (*plan.needs, *([plan.joins] if plan.joins else [])):
            assert _by_key(key).at < block.at, f"README.md:{block.at} depends on a block below it"


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Reader:
    return Reader(tmp_path_factory.mktemp("readme-reader"), tmp_path_factory.mktemp("readme-scripts"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_readme_block(block: Block, reader: Reader):
    plan = _plan(block)
    if plan.skip is not None:
        pytest.skip(plan.skip)
    ran = reader.run(block)
    problems = []
    if block.shell:
        runs = iter(ran)
        for command in _commands(block):
            rule = _line_rule(plan, command)
            if rule.skip is None:
                problems += _problems(next(runs), rule.expect, rule.check, rule.json, rule.quiet)
        assert ran, "a shell block that runs no command: skip it in PLANS instead"
    else:
        problems += _problems(ran[0], plan.expect, plan.check, False, False)
    if problems and plan.xfail is not None:
        pytest.xfail(plan.xfail)
    assert problems == [], f"README.md:{block.at}\n" + "\n\n".join(problems)
