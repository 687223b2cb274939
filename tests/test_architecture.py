"""The seams: one LanguageModel protocol, the public surface, a runtime that never imports the converters."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import edgeinfer as ei
from edgeinfer.backends.testing import FakeBackend
from edgeinfer.engine import Completion, CompletionStream
from edgeinfer.stats import Stats

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "edgeinfer"
INSTALLED_AS = {"edgeinfer": "edgeinfer", "converters": "edgeinfer_converters", "apps": "edgeinfer_apps"}

USER_SURFACE = {
    # loading and running
    "load", "Model", "KVOptions", "SamplingParams", "Completion", "CompletionStream", "Stats", "ModelMetrics",
    "Conversation", "LanguageModel", "Tokenizer", "Message", "RemoteModel", "ModelLock", "ModelEntry",
    # routing
    "Router", "Tier", "Rules", "Rule", "Always", "Cascade", "Learned", "train_router", "LocalCost",
    "TokenPrice",
    # translation
    "Translator", "Translation", "TranslationStats", "LANGUAGES",
    "__version__",
}


def test_the_user_surface_is_exactly_the_user_api_and_the_error_tree():
    errors = {n for n in ei.__all__ if n.endswith("Error")}
    assert set(ei.__all__) - errors == USER_SURFACE
    assert all(issubclass(getattr(ei, n), ei.EdgeInferError) for n in errors)
    # handled inside (an interrupted idle-time eval, a full KV cache), or caught as their public base
    internal = {"EvalInterrupted", "KVCacheFullError", "TemplateLimitError"}
    assert {cls.__name__ for cls in _subclasses(ei.EdgeInferError)} - errors == internal
    for name in ei.__all__:
        assert getattr(ei, name) is not None


PLUGIN_SURFACE = {
    # the contract a backend implements
    "Backend", "Capabilities", "EvalItem", "LogitsSampler", "Sampler",
    # what it declares, and the registry that chooses among the declared
    "BackendSpec", "BackendFactory", "ArtifactFormat", "Detector", "folder_with", "ENTRY_POINT_GROUP",
    "register_backend", "register_spec", "unregister_backend", "registered", "backend_names", "backend_specs",
    "get_backend", "get_spec", "known_formats", "format_of", "pick_backend",
    # the probe its hooks read, and the choice made from it
    "Probe", "GPU", "probe_system", "Artifact", "Choice", "choose",
}


def test_the_plugin_surface_is_edgeinfer_backends():
    import edgeinfer.backends as backends

    assert set(backends.__all__) == PLUGIN_SURFACE
    assert not PLUGIN_SURFACE & set(ei.__all__)  # one home per name
    for name in backends.__all__:
        assert getattr(backends, name) is not None


def _subclasses(cls: type) -> set[type]:
    direct = set(cls.__subclasses__())
    return direct.union(*(_subclasses(c) for c in direct))


@pytest.mark.parametrize("name, home", [("Engine", "edgeinfer.engine"), ("choose", "edgeinfer.backends"),
                                        ("register_backend", "edgeinfer.backends"),
                                        ("resolve", "edgeinfer.sources")])
def test_internal_names_moved_out_keep_working_for_now_with_a_warning(name: str, home: str):
    assert name not in ei.__all__ and name not in dir(ei)
    with pytest.warns(DeprecationWarning, match=f"import it from {home}"):
        assert getattr(ei, name) is getattr(__import__(home, fromlist=[name]), name)
    with pytest.raises(AttributeError):
        ei.no_such_name  # noqa: B018


# --- one model protocol ---------------------------------------------------------------------------------
class Shouter:
    """A LanguageModel written from scratch (not an edgeinfer class): answers in capitals."""

    name = "shouter"

    def __init__(self) -> None:
        self.closed = False

    def _done(self, text: str) -> Completion:
        return Completion(text.upper(), [], "stop", Stats(model=self.name))

    def generate(self, prompt: Any, params: Any = None, **options: Any) -> Completion:
        return self._done(str(prompt))

    def stream(self, prompt: Any, params: Any = None, **options: Any) -> CompletionStream:
        done = self._done(str(prompt))

        def run():  # noqa: ANN202
            yield done.text
            return done

        return CompletionStream(run())

    def complete_chat(self, messages: Sequence[dict], params: Any = None, **options: Any) -> Completion:
        return self._done(messages[-1]["content"])

    def stream_chat(self, messages: Sequence[dict], params: Any = None, **options: Any) -> CompletionStream:
        return self.stream(messages[-1]["content"])

    def chat(self, system: str | None = None, messages: Any = None, *, id: str | None = None) -> Any:  # noqa: A002
        return ei.Conversation(self, system=system, messages=messages)  # unsaved: keeps its messages only

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def local():
    model = ei.Model(FakeBackend(n_ctx=256, max_sequences=2), name="toy", speculation=None)
    yield model
    model.close()


def test_model_remote_model_router_and_a_users_class_are_all_language_models(local):
    remote = ei.RemoteModel("http://127.0.0.1:9", "m")
    router = ei.Router([ei.Tier("a", local)])
    try:
        for model in (local, remote, router, Shouter()):
            assert isinstance(model, ei.LanguageModel), model
        assert isinstance(local, ei.Tokenizer) and not isinstance(remote, ei.Tokenizer)
    finally:
        remote.close()


def test_a_router_tier_and_a_translator_take_any_language_model(local):
    shouter = Shouter()
    router = ei.Router([ei.Tier("small", local), ei.Tier("loud", shouter)],
                       ei.Rules([ei.Rule("loud", tasks=frozenset({"shout"}))]))
    assert router.generate("hello", task="shout").text == "HELLO"
    assert router.generate("hi", max_tokens=3, temperature=0).stats.route.startswith("small:")
    talk = shouter.chat(system="Be loud.")
    assert talk.send("hello").text == "HELLO" and [m["role"] for m in talk.messages] == [
        "system", "user", "assistant"]
    with ei.Translator(Shouter(), memory=False) as translator:
        assert translator.style == "few_shot" and translator.describe()["model"] == "shouter"
    router.close()
    assert shouter.closed


def test_every_model_kind_chats_through_the_same_conversation(local, tmp_path: Path):
    router = ei.Router([ei.Tier("small", local)])
    talk = router.chat(system="Be brief.", id="t1")
    answer = talk.send("hi", max_tokens=4, temperature=0)
    assert answer.stats.route.startswith("small:")
    assert [m["role"] for m in talk.messages] == ["system", "user", "assistant"]
    saved = talk.save()
    assert saved.is_file() and saved.parent.name.startswith("name-")  # "router(small)" is not a folder name
    assert router.resume("t1").messages == talk.messages
    direct = local.chat(system="Be brief.").send("hi", max_tokens=4, temperature=0)
    assert direct.text == answer.text  # the router only chose; the same model answered the same way


def test_one_speculation_type_at_every_level(local):
    from edgeinfer.engine import Engine
    from edgeinfer.speculative import DraftModel, PromptLookup

    draft = ei.Model(FakeBackend(n_ctx=256, max_sequences=1), name="draft", speculation=None)
    try:
        for value, kind in (("prompt-lookup", PromptLookup), (draft, DraftModel), (None, type(None))):
            engine = Engine(FakeBackend(n_ctx=64), speculation=value)
            assert isinstance(engine.proposer, kind)
            engine.close()
            model = ei.Model(FakeBackend(n_ctx=64), name="m", speculation=value)
            assert isinstance(model.engine.proposer, kind)
            model.close()
    finally:
        draft.close()
    with pytest.raises(ei.InvalidRequestError, match="unknown speculation"):
        ei.Model(FakeBackend(n_ctx=64), name="m", speculation="fast")


def test_kv_options_refuse_nonsense():
    assert ei.KVOptions().settle and ei.KVOptions(disk=True).disk_bytes == 2 << 30
    for bad in ({"ram_bytes": -1}, {"ram_bytes": True}, {"disk_bytes": 1.5}):
        with pytest.raises(ei.InvalidRequestError, match="KVOptions"):
            ei.KVOptions(**bad)


# --- the runtime does not import the conversion stack ----------------------------------------------------
CONVERSION_STACK = ("converters", "edgeinfer_converters", "apps", "edgeinfer_apps", "torch", "transformers")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any level (function-local imports included), made absolute."""
    folder = path.relative_to(ROOT).parts[:-1]
    package = ".".join([INSTALLED_AS.get(folder[0], folder[0]), *folder[1:]]) if folder else ""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def test_no_runtime_module_imports_the_converters_or_the_apps():
    """The CLI is a tool (``edgeinfer convert`` and ``pull`` run the converters); the runtime is not."""
    offenders = [f"{path.relative_to(ROOT)}: {name}"
                 for path in RUNTIME.rglob("*.py") if "cli" not in path.relative_to(RUNTIME).parts
                 for name in _imports(path) if name.split(".")[0] in CONVERSION_STACK]
    assert offenders == []


def test_loader_and_lock_do_not_import_each_other():
    graph = {p: {n for n in _imports(p)} for p in RUNTIME.rglob("*.py")}
    assert not any(n.startswith("edgeinfer.loader") for n in graph[RUNTIME / "lock.py"])
    assert not any(n.startswith("edgeinfer.loader") for n in graph[RUNTIME / "sources.py"])


@pytest.mark.slow
def test_loading_and_running_a_model_imports_nothing_of_the_conversion_stack(smollm2_path: Path):
    code = f"""
import sys, edgeinfer as ei
with ei.load({str(smollm2_path)!r}, n_ctx=256, n_threads=1) as m:
    assert m.generate("Hi", max_tokens=2, temperature=0).stats.completion_tokens > 0
    assert m.chat().send("Hi", max_tokens=2).text is not None
print(sorted(n for n in sys.modules if n.split(".")[0] in {CONVERSION_STACK!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"


# --- installed names -------------------------------------------------------------------------------------


def test_every_package_folder_installs_under_a_name_of_ours():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {".".join([INSTALLED_AS[init.parent.relative_to(ROOT).parts[0]],
                         *init.parent.relative_to(ROOT).parts[1:]])
               for top in INSTALLED_AS for init in (ROOT / top).rglob("__init__.py")}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {v: k for k, v in INSTALLED_AS.items() if k != v}


def test_nothing_imports_the_folders_by_their_repository_names():
    """`import converters` works only from a checkout; installed, the package is edgeinfer_converters."""
    offenders = [f"{path.relative_to(ROOT)}: {name}"
                 for top in ("edgeinfer", "converters", "apps", "tests", "benchmarks")
                 for path in (ROOT / top).rglob("*.py")
                 for name in _imports(path) if name.split(".")[0] in ("converters", "apps")]
    assert offenders == []
