"""Time to first token with and without KV reuse: edgeinfer's PromptCache against llama-cpp-python.

Per model, every variant gets the same prompt token ids (a chat's history is built from
edgeinfer's greedy answers with reuse as the run goes, then replayed, so it is identical for all),
with the variants interleaved request by request and their order rotating, so that machine drift
hits all alike:

  (a) one chat of 8 turns (short user messages, answers of up to 160 tokens) growing to ~1.5k
      tokens: edgeinfer with reuse vs edgeinfer cold (``engine.reset()`` before every request);
      anchor: llama-cpp-python ``Llama`` (in-context prefix reuse) on the same chat.
  (b) 4 chats interleaved (A1 B1 C1 D1 A2 ...): edgeinfer with reuse (one sequence per chat) vs
      ``Llama`` default vs ``Llama`` + ``LlamaRAMCache``.
  (c) resume a ~1.4k-token chat in a new process: edgeinfer ``KVOptions(disk=...)`` (``save_cache()``
      in process 1, restored in process 2) vs a process that re-prefills; anchor: ``Llama`` +
      ``LlamaDiskCache`` across processes.
  (d) one ~300-token system prompt shared by 20 short requests: edgeinfer with reuse vs cold, and
      ``Llama`` default / + ``LlamaRAMCache`` on the same requests.

Every request generates the same fixed number of greedy tokens (temperature 0, no repeat penalty),
and edgeinfer's outputs with reuse are compared token for token with its cold outputs.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.cache [--models NAME ...] [--quick]
Writes benchmarks/results/cache.json and cache.md and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    quiet_logging,
    ratio,
    without_weight_repacking,
    write_report,
)
from edgeinfer.kv_options import KVOptions

DEFAULT_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
CONVS = "ABCD"
N_TURNS = 8
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}

CHAT_SYSTEM = "You are a helpful, practical assistant for small local organisations. Answer in plain prose."

# (name, person, what it offers, where it is, a recent problem)
TOPICS = {
    "A": ("a neighbourhood bakery", "Rosa", "sourdough bread and pastries",
          "a quiet street near the train station", "the new supermarket that opened two streets away"),
    "B": ("a community garden", "Tomas", "vegetable plots, herbs and gardening lessons",
          "an empty lot behind the primary school", "a dry summer that doubled the water bill"),
    "C": ("a bicycle repair shop", "Amara", "repairs, used bicycles and spare parts",
          "a corner of the old market hall", "a chain store that now offers cheap repairs"),
    "D": ("a small public library branch", "Kenji", "books, reading groups and homework help",
          "a former post office on the main square", "a budget cut that removed one staff position"),
}

# Eight user turns as people type them: a first message that sets the scene, then short questions
# (~25-40 tokens once filled in); the chat grows mostly by the answers. {n} {p} {o} {w} {x} = TOPICS.
TURNS = (
    "I am helping {p}, who runs {n} in {w}, focused on {o}. Most visitors come in the morning and few "
    "after two. What kinds of people does {n} probably serve, and which group is easiest to grow?",
    "The biggest worry now is {x}. What are three things {p} could try next month without lowering "
    "prices?",
    "{p} works almost every opening hour alone. How could the week be rearranged so more hours fall "
    "when people are around?",
    "{p} keeps the accounts in a paper ledger. Is a spreadsheet worth it for a place this size?",
    "Two neighbours offered to volunteer a few hours a week. What should {p} think about before "
    "saying yes?",
    "The sign outside is small and faded. What should a new sign and the window say?",
    "{n} has eleven online reviews and an unused social media account. What is the smallest useful "
    "routine?",
    "Please put all of this into a short three month plan that {p} can pin behind the counter.",
)

SHARED_SYSTEM = (
    "You are the customer support assistant of Northwind Outdoor Supply, a small shop that sells "
    "tents, sleeping bags, stoves, backpacks and hiking clothes online and in one store in Lyon. "
    "Follow these rules in every answer. Be polite, brief and concrete, and never invent order "
    "details you were not given. Orders ship within two working days from the warehouse in Lyon; "
    "delivery in France takes two to four working days and elsewhere in the European Union four to "
    "eight working days. Shipping is free above eighty euros, otherwise it costs six euros in France "
    "and twelve euros elsewhere. Customers may return unused items within thirty days of delivery "
    "for a full refund; used items can only be returned if they are faulty. Refunds are paid to the "
    "original payment method within five working days after the return arrives. Tents and stoves "
    "have a two year warranty, clothes one year, and repairs under warranty are free. The store in "
    "Lyon is open Tuesday to Saturday from ten to seven. Gift cards are valid for two years and cannot "
    "be exchanged for cash. If a customer is angry, acknowledge the problem first, then explain what "
    "happens next. If a question needs an order number and none was given, ask for it. If a question "
    "is about something other than the shop, say politely that you can only help with Northwind "
    "orders and products. Never promise a discount; you may mention that the newsletter sometimes "
    "contains seasonal offers. Answer in the language of the customer and end with one helpful next "
    "step the customer can take."
)

REQUESTS = (
    "Where is my order? I placed it on Monday.",
    "Can I return a tent I used once because it leaks?",
    "How much is shipping to Belgium for a forty euro order?",
    "Do you sell gas cartridges for the compact stove?",
    "Is the store open on Mondays?",
    "My sleeping bag zipper broke after three months, what now?",
    "Could you tell me the weather in Lyon tomorrow?",
    "Why has my refund not arrived yet? I returned the jacket last week.",
    "Are gift cards refundable if I never use them?",
    "Which backpack is best for a three day hike?",
    "Hello, I want to change the delivery address of order 55812.",
    "Your courier left my parcel in the rain and the box is soaked.",
    "Does free shipping apply to Switzerland?",
    "Please give me a discount, I am a loyal customer.",
    "What warranty do hiking trousers have?",
    "Can I pick up my online order in the Lyon store?",
    "Tell me a joke about camping.",
    "Is it possible to pay by bank transfer?",
    "Help, the stove I bought does not light at all.",
    "Recommend a tent for two people in windy weather.",
)


# --------------------------------------------------------------------------- prompts
class PromptFormat:
    """Token ids of a chat so far: the model's chat template, or plain 'User:/Assistant:' text
    for a base model without one (the engine reuses cached prefixes of any prompt)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.templated = bool(model.chat_template)

    def chat(self, system: str, turns: Sequence[tuple[str, str | None]]) -> list[int]:
        """``turns``: (user, assistant) pairs; the last one's assistant is None (to be generated)."""
        if self.templated:
            messages = [{"role": "system", "content": system}]
            for user, answer in turns:
                messages.append({"role": "user", "content": user})
                if answer is not None:
                    messages.append({"role": "assistant", "content": answer})
            return self.model.chat_prompt(messages)
        text = system + "\n\n"
        for user, answer in turns:
            text += f"User: {user}\nAssistant:"
            if answer is not None:
                text += answer + "\n\n"
        return self.model.tokenize(text)


ASK_DETAIL = " Please answer in detail, with examples."  # small models otherwise answer tersely


def user_turns(conv: str) -> list[str]:
    n, p, o, w, x = TOPICS[conv]
    return [t.format(n=n, p=p, o=o, w=w, x=x) + ASK_DETAIL for t in TURNS]


class LiveChat:
    """A chat whose history is built from edgeinfer's greedy answers with reuse (the variant
    ``ei-reuse``) as the run goes: every variant gets the same prompt for turn i, and turn i+1's
    prompt contains the answer of turn i. Prompts are kept for later rounds and processes."""

    def __init__(self, fmt_: PromptFormat, users: Sequence[str], system: str = CHAT_SYSTEM) -> None:
        self.fmt, self.users, self.system = fmt_, list(users), system
        self.history: list[tuple[str, str | None]] = []
        self.prompts: list[list[int]] = []

    def prompt(self, turn: int) -> list[int]:
        """Turn ``turn`` (1-based): built from the answers so far the first time, then replayed."""
        if turn > len(self.prompts):
            assert turn == len(self.prompts) + 1 == len(self.history) + 1
            self.prompts.append(self.fmt.chat(self.system, [*self.history, (self.users[turn - 1], None)]))
        return self.prompts[turn - 1]

    def answer(self, turn: int, text: str) -> None:
        if turn == len(self.history) + 1:
            self.history.append((self.users[turn - 1], text))


# --------------------------------------------------------------------------- variants
@dataclass
class Sample:
    """One timed request of one variant."""

    variant: str
    conv: str
    turn: int  # 1-based turn (or request number in (d))
    round: int
    prompt_tokens: int
    ttft_s: float  # edgeinfer: stats.ttft_s; llama-cpp-python: call -> first streamed chunk
    cached_tokens: int | None = None
    cache_source: str | None = None
    wall_ttft_s: float | None = None  # edgeinfer: call -> first streamed text piece
    idle_s: float | None = None  # edgeinfer with settling: end of request -> its KV settled
    completion_tokens: int = 0
    finish: str = ""
    text: str = ""
    tokens: list[int] | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("text", "tokens")}


class EIVariant:
    """edgeinfer ``Model.stream``; ``cold`` drops every cached sequence before each request. A
    model loaded with ``KVOptions(settle=True)`` gets its idle time after each request (the user reading the
    answer): the run waits, untimed, until the background settling is done, so it never overlaps
    another variant's request."""

    def __init__(self, key: str, model: Any, *, cold: bool) -> None:
        self.key, self.model, self.cold = key, model, cold

    def start(self) -> None:
        self.model.engine.reset()

    def run(self, prompt: list[int], max_tokens: int, conv: str = "", turn: int = 0,
            round_no: int = 0) -> Sample:
        if self.cold:
            self.model.engine.reset()
        t0 = time.perf_counter()
        stream = self.model.stream(prompt, max_tokens=max_tokens, **GREEDY)
        wall = None
        for _piece in stream:
            if wall is None:
                wall = time.perf_counter() - t0
        c = stream.completion
        assert c is not None
        idle = wait_settled(self.model)
        s = c.stats
        return Sample(self.key, conv, turn, round_no, s.prompt_tokens, s.ttft_s, s.cached_tokens,
                      s.cache_source, wall, idle, s.completion_tokens, c.finish_reason, c.text,
                      list(c.tokens))


def wait_settled(model: Any) -> float | None:
    """Seconds until the model's idle-time settling has nothing left (None: it does not settle)."""
    if not model.engine.settle_idle:
        return None
    t0 = time.perf_counter()
    while model.engine.cache.unsettled() is not None:
        time.sleep(0.002)
    return time.perf_counter() - t0


def lean_ram_cache(capacity_bytes: int = 2 << 30, max_entries: int = 8) -> Any:
    """llama-cpp-python's LlamaRAMCache with a bound on the number of states.

    LlamaRAMCache counts only the llama.cpp state bytes against ``capacity_bytes``, but each
    ``LlamaState`` also holds a copy of the logits buffer (n_batch x n_vocab float32: 100 MB for
    SmolLM2, 512 MB for Gemma 3), so 30 saved turns would take 3-16 GB. This subclass first drops
    the states whose tokens are a prefix of the new one (a longer match always exists for them, so
    lookups pick the same or an equivalent state), then keeps at most ``max_entries`` (LRU).
    """
    from llama_cpp import LlamaRAMCache

    class LeanRAMCache(LlamaRAMCache):
        def __setitem__(self, key: Sequence[int], value: Any) -> None:
            key = tuple(key)
            for k in [k for k in self.cache_state if len(k) < len(key) and key[: len(k)] == k]:
                del self.cache_state[k]
            super().__setitem__(key, value)
            while len(self.cache_state) > max_entries:
                self.cache_state.popitem(last=False)

    return LeanRAMCache(capacity_bytes=capacity_bytes)


class LLVariant:
    """llama-cpp-python's high-level ``Llama.create_completion(tokens, stream=True)``."""

    def __init__(self, key: str, llm: Any, cache_factory: Callable[[], Any] | None = None) -> None:
        self.key, self.llm, self.cache_factory = key, llm, cache_factory

    def start(self) -> None:
        self.llm.reset()  # n_tokens = 0: the next prompt matches nothing in context
        self.llm.set_cache(self.cache_factory() if self.cache_factory else None)

    def run(self, prompt: list[int], max_tokens: int, conv: str = "", turn: int = 0,
            round_no: int = 0) -> Sample:
        return ll_complete(self.llm, prompt, max_tokens, self.key, conv, turn, round_no)


def ll_complete(llm: Any, prompt: list[int], max_tokens: int, key: str, conv: str = "", turn: int = 0,
                round_no: int = 0) -> Sample:
    pieces: list[str] = []
    finish, chunks, first = "", 0, None
    t0 = time.perf_counter()
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, stream=True, **GREEDY):
        if first is None:
            first = time.perf_counter() - t0
        choice = chunk["choices"][0]
        if choice["text"]:
            chunks += 1
            pieces.append(choice["text"])
        if choice["finish_reason"]:
            finish = choice["finish_reason"]
    return Sample(key, conv, turn, round_no, len(prompt), first or 0.0, completion_tokens=chunks,
                  finish=finish, text="".join(pieces))


def load_llama(path: Path, args: argparse.Namespace) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=args.n_ctx, n_threads=args.threads,
                 n_threads_batch=args.threads, n_batch=512, verbose=False)


def load_ei(name: str, args: argparse.Namespace, **kw: Any) -> Any:
    import edgeinfer

    return edgeinfer.load(name, backend="llama.cpp", n_ctx=args.n_ctx, n_threads=args.threads,
                          max_sequences=4, **kw)


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    k %= len(items)
    return [*items[k:], *items[:k]]


# --------------------------------------------------------------------------- workloads
def workload_a(chat: LiveChat, reuse: EIVariant, nosettle: EIVariant, cold: EIVariant, lld: LLVariant,
               args: argparse.Namespace) -> list[Sample]:
    """One chat of 8 turns. Round 0: every variant plays every turn. Later rounds: edgeinfer
    reuse replays every turn; llama default and edgeinfer without settling replay turn 7 untimed
    (they then hold what they held before turn 8) and time turn 8; cold times turn 8 (a cold
    request does not depend on what came before)."""
    out: list[Sample] = []
    n = len(chat.users)
    for r in range(args.rounds):
        for v in (reuse, nosettle, cold, lld):
            v.start()
        for i in range(1, n + 1):
            prompt = chat.prompt(i)
            vs = [reuse] + ([lld, nosettle, cold] if r == 0 or i >= N_TURNS else [])
            if r and i == N_TURNS - 1:
                lld.run(prompt, args.max_tokens)
                nosettle.run(prompt, args.max_tokens)
            for v in rotated(vs, r * n + i):
                s = v.run(prompt, args.max_tokens, "A", i, r)
                out.append(s)
                if v is reuse:
                    chat.answer(i, s.text)
    return out


def workload_b(chats: dict[str, LiveChat], reuse: EIVariant, lld: LLVariant, llram: LLVariant,
               args: argparse.Namespace) -> list[Sample]:
    """Four chats interleaved turn by turn (chat A replays (a)'s prompts). llama default runs only
    ``--b-default-turns`` (its previous request is always another chat, so skipping turns does not
    change its TTFT) and generates one token (its answers are never reused)."""
    out: list[Sample] = []
    for v in (reuse, lld, llram):
        v.start()
    k = 0
    for i in range(1, N_TURNS + 1):
        for conv in CONVS:
            prompt = chats[conv].prompt(i)
            vs: list[Any] = [reuse, llram] + ([lld] if i in args.b_default_turns else [])
            for v in rotated(vs, k):
                s = v.run(prompt, 1 if v is lld else args.max_tokens, conv, i)
                out.append(s)
                if v is reuse:
                    chats[conv].answer(i, s.text)
            k += 1
    return out


def workload_d(prompts: list[list[int]], reuse: EIVariant, cold: EIVariant, lld: LLVariant,
               llram: LLVariant, args: argparse.Namespace) -> list[Sample]:
    out: list[Sample] = []
    for v in (reuse, cold, lld, llram):
        v.start()
    for j, prompt in enumerate(prompts, 1):
        for v in rotated([reuse, cold, lld, llram], j):
            out.append(v.run(prompt, args.d_max_tokens, "S", j))
    return out


# --------------------------------------------------------------------------- (c): new processes
def link_copy(src: Path, dst: Path) -> None:
    """Copy a LlamaDiskCache folder: value files as hard links (a pop only unlinks them), the
    SQLite index as real copies."""

    def copy(s: str, d: str) -> None:
        if ".db" in Path(s).name:
            shutil.copy2(s, d)
        else:
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def run_worker(role: str, spec: Path, folder: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.cache", "_worker", role, str(spec), str(folder),
           repr(time.time())]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {role} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_wall_s"] = wall
    return result


def worker_main(argv: list[str]) -> None:
    """Hidden sub-command ``_worker ROLE SPEC FOLDER SPAWN_TIME``: one process of workload (c)."""
    role, spec_path, folder, spawned = argv[0], Path(argv[1]), Path(argv[2]), float(argv[3])
    quiet_logging()
    without_weight_repacking()  # reference Llama objects load as edgeinfer does (no AMX repacking)
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    args = argparse.Namespace(n_ctx=spec["n_ctx"], threads=spec["threads"])
    prompts: list[list[int]] = spec["prompts"]
    last, k = len(prompts) - 1, spec["max_tokens"]
    t0 = time.perf_counter()
    res: dict[str, Any] = {"role": role}
    if role.startswith("ei"):
        kv = KVOptions() if role == "ei-prefill" else KVOptions(disk=folder)
        model = load_ei(spec["model"], args, kv=kv)
        res["load_s"] = time.perf_counter() - t0
        if role == "ei-save":
            for p in prompts[:last]:
                model.generate(p, max_tokens=k, **GREEDY)
            t1 = time.perf_counter()
            model.save_cache()
            res["save_s"] = time.perf_counter() - t1
            res["files"] = len(list(folder.rglob("*.kv")))
        else:
            t_req = time.time()
            s = EIVariant(role, model, cold=False).run(prompts[last], k, "A", last + 1)
            res.update(s.row(), tokens=s.tokens, text=s.text)
            res["spawn_to_first_token_s"] = t_req + s.ttft_s - spawned
        model.close()
    else:
        from llama_cpp import LlamaDiskCache

        llm = load_llama(Path(spec["model_path"]), args)
        res["load_s"] = time.perf_counter() - t0
        cache = LlamaDiskCache(cache_dir=str(folder))
        if role == "ll-save":
            # Earlier turns' states would never be the longest match: set the cache for turn 7 only.
            for p in prompts[: last - 1]:
                ll_complete(llm, p, k, role)
            llm.set_cache(cache)
            t1 = time.perf_counter()
            ll_complete(llm, prompts[last - 1], k, role)
            res["save_turn_s"] = time.perf_counter() - t1
        else:
            llm.set_cache(cache)
            t_req = time.time()
            s = ll_complete(llm, prompts[last], k, role, "A", last + 1)
            res.update(s.row(), text=s.text)
            res["spawn_to_first_token_s"] = t_req + s.ttft_s - spawned
        cache.cache.close()
        llm.close()
    print("RESULT " + json.dumps(res), flush=True)


def workload_c(name: str, path: Path, prompts: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """Process 1 runs turns 1-7 and saves (edgeinfer: ``save_cache()``; llama-cpp-python:
    LlamaDiskCache); then new processes, alternating, time turn 8."""
    tmp = Path(tempfile.mkdtemp(prefix="eibench-c-"))
    try:
        spec = tmp / "spec.json"
        spec.write_text(json.dumps({
            "model": name, "model_path": str(path), "n_ctx": args.n_ctx, "threads": args.threads,
            "max_tokens": args.max_tokens, "prompts": prompts,
        }), encoding="utf-8")
        ei_dir, ll_dir = tmp / "ei-kv", tmp / "ll-kv"
        setup = {"ei-save": run_worker("ei-save", spec, ei_dir),
                 "ll-save": run_worker("ll-save", spec, ll_dir)}
        runs: list[dict[str, Any]] = []
        roles = ["ei-resume", "ei-prefill", "ll-resume"]
        for r in range(args.resume_repeats):
            for role in rotated(roles, r):
                folder = ei_dir
                if role == "ll-resume":  # LlamaDiskCache pops the state it loads: use a fresh copy
                    folder = tmp / f"ll-kv-{r}"
                    link_copy(ll_dir, folder)
                res = run_worker(role, spec, folder)
                res["round"] = r
                runs.append(res)
                if role == "ll-resume":
                    shutil.rmtree(folder, ignore_errors=True)
        sizes = {"ei_bytes": sum(p.stat().st_size for p in ei_dir.rglob("*") if p.is_file()),
                 "ll_bytes": sum(p.stat().st_size for p in ll_dir.rglob("*") if p.is_file())}
        return {"setup": setup, "runs": runs, "disk": sizes}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- analysis
def ms(xs: Sequence[float]) -> list[float]:
    return [x * 1000 for x in xs]


def med(xs: Sequence[float]) -> float | None:
    return median_summary(xs)["median"]


def two_ratios(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """num/den as a ratio of medians and as the median of pairwise ratios."""
    return {"of_medians": ratio(med(num), med(den)), "paired": paired_ratios(num, den)}


def pick(samples: list[Sample], variant: str, **where: Any) -> list[Sample]:
    return [s for s in samples if s.variant == variant and all(getattr(s, k) == v for k, v in where.items())]


def equal_count(pairs: Sequence[tuple[Any, Any]]) -> dict[str, int]:
    eq = sum(1 for a, b in pairs if a == b)
    return {"equal": eq, "different": len(pairs) - eq}


def analyse_a(samples: list[Sample]) -> dict[str, Any]:
    cold0 = {s.turn: s for s in pick(samples, "ei-cold", round=0)}
    per_turn = []
    for i in sorted(cold0):
        reuse, lld = pick(samples, "ei-reuse", turn=i), pick(samples, "ll-default", turn=i)
        cold, nos = pick(samples, "ei-cold", turn=i), pick(samples, "ei-nosettle", turn=i)
        per_turn.append({
            "turn": i, "prompt_tokens": reuse[0].prompt_tokens,
            "cached_tokens": sorted({s.cached_tokens for s in reuse}),
            "cache_source": sorted({s.cache_source for s in reuse}),
            "ei_reuse_ms": median_summary(ms([s.ttft_s for s in reuse])),
            "ei_cold_ms": median_summary(ms([s.ttft_s for s in cold])),
            "ll_default_ms": median_summary(ms([s.ttft_s for s in lld])),
            "ei_nosettle_ms": median_summary(ms([s.ttft_s for s in nos])),
            "idle_ms": median_summary(ms([s.idle_s or 0.0 for s in reuse])),
        })
    rounds = sorted({s.round for s in samples})

    def at(v: str, turn: int) -> list[float]:
        return [pick(samples, v, turn=turn, round=r)[0].ttft_s for r in rounds]

    out: dict[str, Any] = {"per_turn": per_turn}
    for label, turn in (("last", N_TURNS),):
        t = {v: at(v, turn) for v in ("ei-reuse", "ei-cold", "ll-default", "ei-nosettle")}
        out[label] = {
            "turn": turn,
            "ms": {v: median_summary(ms(x)) for v, x in t.items()},
            "new_tokens": sorted({s.prompt_tokens - (s.cached_tokens or 0)
                                  for s in pick(samples, "ei-reuse", turn=turn)}),
            "cold_over_reuse": two_ratios(t["ei-cold"], t["ei-reuse"]),
            "ll_default_over_reuse": two_ratios(t["ll-default"], t["ei-reuse"]),
            "cold_over_ll_default": two_ratios(t["ei-cold"], t["ll-default"]),
            "cold_over_nosettle": two_ratios(t["ei-cold"], t["ei-nosettle"]),
            "ll_default_over_nosettle": two_ratios(t["ll-default"], t["ei-nosettle"]),
        }
    later = [s for s in pick(samples, "ei-reuse") if 2 <= s.turn <= N_TURNS]
    out["reuse_turns2plus_ms"] = median_summary(ms([s.ttft_s for s in later]))
    out["outputs"] = {
        "reuse_vs_cold": equal_count([(s.tokens, cold0[s.turn].tokens) for s in pick(samples, "ei-reuse")]),
        "cold_repeats_vs_cold": equal_count([(s.tokens, cold0[s.turn].tokens)
                                             for s in pick(samples, "ei-cold") if s.round > 0]),
        "nosettle_vs_cold": equal_count([(s.tokens, cold0[s.turn].tokens)
                                         for s in pick(samples, "ei-nosettle")]),
        "ll_default_text_vs_cold": equal_count([(s.text, cold0[s.turn].text)
                                                for s in pick(samples, "ll-default")]),
        "differing": [{"round": s.round, "turn": s.turn} for s in pick(samples, "ei-reuse")
                      if s.tokens != cold0[s.turn].tokens],
    }
    return out


def analyse_b(samples: list[Sample], a: dict[str, Any], cold_a: dict[int, Sample]) -> dict[str, Any]:
    def later(v: str) -> list[Sample]:
        return [s for s in pick(samples, v) if s.turn >= 2]

    ei = {(s.conv, s.turn): s for s in later("ei-reuse")}
    lld, ram = later("ll-default"), later("ll-ram")
    a_turns = {row["turn"]: row["ei_reuse_ms"]["median"] for row in a["per_turn"]}
    conv_a = [s for s in ei.values() if s.conv == "A"]
    return {
        "ei_reuse_ms": median_summary(ms([s.ttft_s for s in ei.values()])),
        "ll_default_ms": median_summary(ms([s.ttft_s for s in lld])),
        "ll_default_turns": sorted({s.turn for s in lld}),
        "ll_ram_ms": median_summary(ms([s.ttft_s for s in ram])),
        "ei_reuse_same_turns_as_ll_default_ms": median_summary(
            ms([ei[(s.conv, s.turn)].ttft_s for s in lld])),
        "cache_sources": sorted({s.cache_source for s in ei.values()}),
        "cached_fraction": median_summary([(s.cached_tokens or 0) / s.prompt_tokens for s in ei.values()]),
        "new_tokens": median_summary([s.prompt_tokens - (s.cached_tokens or 0) for s in ei.values()]),
        "interleaved_over_one_chat": ratio(med(ms([s.ttft_s for s in ei.values()])),
                                           a["reuse_turns2plus_ms"]["median"]),
        "interleaved_over_one_chat_conv_a_paired": median_summary(
            [s.ttft_s * 1000 / a_turns[s.turn] for s in conv_a if a_turns.get(s.turn)]),
        "ll_default_over_ei": two_ratios([s.ttft_s for s in lld], [ei[(s.conv, s.turn)].ttft_s for s in lld]),
        "ll_ram_over_ei": two_ratios([s.ttft_s for s in ram], [ei[(s.conv, s.turn)].ttft_s for s in ram]),
        "outputs": {
            "conv_a_vs_cold": equal_count([(s.tokens, cold_a[s.turn].tokens)
                                           for s in pick(samples, "ei-reuse", conv="A")]),
        },
    }


def analyse_c(c: dict[str, Any], cold_a: dict[int, Sample]) -> dict[str, Any]:
    roles = ("ei-resume", "ei-prefill", "ll-resume")
    by = {role: [r for r in c["runs"] if r["role"] == role] for role in roles}
    t = {role: [r["ttft_s"] for r in rs] for role, rs in by.items()}
    ref = cold_a[N_TURNS]
    return {
        "ttft_ms": {role: median_summary(ms(x)) for role, x in t.items()},
        "spawn_to_first_token_ms": {role: median_summary(ms([r["spawn_to_first_token_s"] for r in rs]))
                                    for role, rs in by.items()},
        "load_ms": {role: median_summary(ms([r["load_s"] for r in rs])) for role, rs in by.items()},
        "resume_sources": sorted({r["cache_source"] for r in by["ei-resume"]}),
        "resume_cached_tokens": sorted({r["cached_tokens"] for r in by["ei-resume"]}),
        "prompt_tokens": by["ei-resume"][0]["prompt_tokens"],
        "prefill_over_resume": two_ratios(t["ei-prefill"], t["ei-resume"]),
        "ll_disk_over_ei_disk": two_ratios(t["ll-resume"], t["ei-resume"]),
        "outputs": {
            "resume_vs_cold": equal_count([(r["tokens"], ref.tokens) for r in by["ei-resume"]]),
            "prefill_vs_cold": equal_count([(r["tokens"], ref.tokens) for r in by["ei-prefill"]]),
            "ll_disk_text_vs_cold": equal_count([(r["text"], ref.text) for r in by["ll-resume"]]),
        },
        "disk": c["disk"],
        "setup": c["setup"],
        "runs": [{k: v for k, v in r.items() if k not in ("tokens", "text")} for r in c["runs"]],
    }


def analyse_d(samples: list[Sample]) -> dict[str, Any]:
    t = {v: [s.ttft_s for s in pick(samples, v)] for v in ("ei-reuse", "ei-cold", "ll-default", "ll-ram")}
    reuse = pick(samples, "ei-reuse")
    cold = {s.turn: s for s in pick(samples, "ei-cold")}
    return {
        "ttft_ms": {v: median_summary(ms(x)) for v, x in t.items()},
        "prompt_tokens": median_summary([s.prompt_tokens for s in reuse]),
        "cached_tokens": median_summary([s.cached_tokens or 0 for s in reuse]),
        "cache_sources": sorted({s.cache_source for s in reuse}),
        "cold_over_reuse": two_ratios(t["ei-cold"], t["ei-reuse"]),
        "ll_default_over_reuse": two_ratios(t["ll-default"], t["ei-reuse"]),
        "ll_ram_over_reuse": two_ratios(t["ll-ram"], t["ei-reuse"]),
        "outputs": {
            "reuse_vs_cold": equal_count([(s.tokens, cold[s.turn].tokens) for s in reuse]),
            "ll_default_text_vs_cold": equal_count([(s.text, cold[s.turn].text)
                                                    for s in pick(samples, "ll-default")]),
        },
    }


# --------------------------------------------------------------------------- one model
def warm_up(variants: Sequence[Any], prompt: list[int]) -> None:
    """One short untimed request per variant (thread pools, allocations), then a clean start."""
    for v in variants:
        v.start()
        v.run(prompt, 2)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgeinfer.loader import locate_model

    path = locate_model(name).path
    t_model = time.perf_counter()
    ei_reuse_model = load_ei(name, args)
    ei_cold_model = load_ei(name, args, kv=KVOptions(settle=False))
    ei_nosettle_model = load_ei(name, args, kv=KVOptions(settle=False))
    fmt_ = PromptFormat(ei_reuse_model)
    reuse = EIVariant("ei-reuse", ei_reuse_model, cold=False)
    cold = EIVariant("ei-cold", ei_cold_model, cold=True)
    nosettle = EIVariant("ei-nosettle", ei_nosettle_model, cold=False)
    lld = LLVariant("ll-default", load_llama(path, args))
    llram = LLVariant("ll-ram", load_llama(path, args), lean_ram_cache)
    chats = {c: LiveChat(fmt_, user_turns(c)) for c in CONVS}
    d_prompts = [fmt_.chat(SHARED_SYSTEM, [(req, None)]) for req in REQUESTS[: args.requests]]
    warm_up([reuse, nosettle, cold, lld, llram], fmt_.chat(CHAT_SYSTEM, [("Hello!", None)]))
    out: dict[str, Any] = {"model": name, "model_path": str(path), "chat_template": fmt_.templated}
    samples: dict[str, list[Sample]] = {}
    timings: dict[str, float] = {}
    cold_a: dict[int, Sample] = {}
    steps = [("a", "(a) one chat")] + [(k, label) for k, label in (
        ("b", "(b) four chats interleaved"), ("d", "(d) shared system prompt")) if k in args.workloads]
    for key, label in steps:
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if key == "a":
            samples["a"] = workload_a(chats["A"], reuse, nosettle, cold, lld, args)
        elif key == "b":
            samples["b"] = workload_b(chats, reuse, lld, llram, args)
        else:
            samples["d"] = workload_d(d_prompts, reuse, cold, lld, llram, args)
        timings[key] = time.perf_counter() - t0
        if key == "a":
            cold_a = {s.turn: s for s in pick(samples["a"], "ei-cold", round=0)}
            out["a"] = analyse_a(samples["a"])
        elif key == "b":
            out["b"] = analyse_b(samples["b"], out["a"], cold_a)
        else:
            out["d"] = analyse_d(samples["d"])
    for v in (lld, llram):
        v.llm.set_cache(None)
        v.llm.close()
    for model in (ei_reuse_model, ei_cold_model, ei_nosettle_model):
        model.close()
    del lld, llram
    gc.collect()
    if "c" in args.workloads:
        print(f"[{name}] (c) resume in a new process ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out["c"] = analyse_c(workload_c(name, path, chats["A"].prompts[:N_TURNS], args), cold_a)
        timings["c"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_model
    out["prompt_tokens_per_turn"] = {c: [len(p) for p in ch.prompts] for c, ch in chats.items()}
    out["answers_A"] = [a for _, a in chats["A"].history]
    out["elapsed_s"] = timings
    out["samples"] = {k: [s.row() for s in v] for k, v in samples.items()}
    return out


# --------------------------------------------------------------------------- report
TARGETS = (
    # (key, path to a two_ratios dict or a number, label, target, predicate)
    ("a", ("a", "last", "cold_over_reuse"), "(a) cold / reuse, TTFT of turn 8", "~40x (llama's)", None),
    ("a", ("a", "last", "ll_default_over_reuse"), "(a) llama default / edgeinfer reuse, turn 8",
     ">= 0.9x (no worse)", lambda x: x >= 0.9),
    ("a", ("a", "last", "cold_over_nosettle"), "(a) cold / reuse with no idle time (answer recomputed)",
     "info", None),
    ("b", ("b", "interleaved_over_one_chat"), "(b) interleaved / one chat, edgeinfer median TTFT turns >= 2",
     "<= 1.5x", lambda x: x <= 1.5),
    ("b", ("b", "ll_default_over_ei"), "(b) llama default / edgeinfer, same interleaving (turns 6, 8)",
     ">= 20x",
     lambda x: x >= 20),
    ("b", ("b", "ll_ram_over_ei"), "(b) LlamaRAMCache / edgeinfer, same interleaving", "> 1x",
     lambda x: x > 1),
    ("c", ("c", "prefill_over_resume"), "(c) re-prefill / disk resume, new process", ">= 5x",
     lambda x: x >= 5),
    ("c", ("c", "ll_disk_over_ei_disk"), "(c) LlamaDiskCache / edgeinfer disk resume", "> 1x",
     lambda x: x > 1),
    ("d", ("d", "cold_over_reuse"), "(d) cold / shared system prompt reuse", ">= 3x", lambda x: x >= 3),
    ("d", ("d", "ll_default_over_reuse"), "(d) llama default / edgeinfer reuse", "info", None),
    ("d", ("d", "ll_ram_over_reuse"), "(d) LlamaRAMCache / edgeinfer reuse", "> 1x", lambda x: x > 1),
)


def dig(d: Any, path: Sequence[str]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def headline(m: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {}
    for _, path, label, _, _ in TARGETS:
        x = dig(m, path)
        if isinstance(x, dict):
            out[label] = {"of_medians": x["of_medians"], "paired": x["paired"]["median"]}
        else:
            out[label] = {"of_medians": x, "paired": None}
    return out


def eq_cell(d: dict[str, int] | None) -> str:
    return "-" if not d else f"{d['equal']}/{d['equal'] + d['different']}"


def stat_cell(x: dict[str, Any]) -> str:
    return f"{fmt(x['median'])} ({fmt(x['min'])}-{fmt(x['max'])})"


def render_model(m: dict[str, Any], s: dict[str, Any]) -> list[str]:
    lines = ["", f"## {m['model']}", ""]
    a = m["a"]
    lines += [f"(a) one chat, TTFT ms per turn: edgeinfer reuse, median of {s['rounds']} rounds; cold and "
              f"llama default: round 0, plus every round for turn {N_TURNS}:", ""]
    rows = []
    for r in a["per_turn"]:
        rows.append([r["turn"], r["prompt_tokens"], "/".join(map(str, r["cached_tokens"])),
                     "/".join(r["cache_source"]), fmt(r["ei_reuse_ms"]["median"]),
                     fmt(r["idle_ms"]["median"]), fmt(r["ei_nosettle_ms"]["median"]),
                     fmt(r["ei_cold_ms"]["median"]), fmt(r["ll_default_ms"]["median"]),
                     fmt(ratio(r["ei_cold_ms"]["median"], r["ei_reuse_ms"]["median"]))])
    lines.append(markdown_table(["turn", "prompt", "cached", "source", "edgeinfer reuse", "idle settle",
                                 "no idle time", "edgeinfer cold", "llama default", "cold/reuse"], rows))
    for label in ("last",):
        x = a[label]
        new = "/".join(map(str, x["new_tokens"]))
        lines += ["", f"Turn {x['turn']} ({new} new tokens), ms median (min-max) of "
                  f"{x['ms']['ei-reuse']['n']}: "
                  f"edgeinfer reuse {stat_cell(x['ms']['ei-reuse'])}, no idle time "
                  f"{stat_cell(x['ms']['ei-nosettle'])}, cold {stat_cell(x['ms']['ei-cold'])}, llama "
                  f"default {stat_cell(x['ms']['ll-default'])}."]
    if "b" in m:
        b = m["b"]
        lines += ["", "(b) four chats interleaved, TTFT ms of turns >= 2:", ""]
        rows = [[label, stat_cell(b[key]), b[key]["n"]] for key, label in (
            ("ei_reuse_ms", "edgeinfer reuse"),
            ("ll_default_ms", f"llama default (turns {b['ll_default_turns']})"),
            ("ei_reuse_same_turns_as_ll_default_ms", "edgeinfer reuse, same turns"),
            ("ll_ram_ms", "llama + LlamaRAMCache"))]
        lines.append(markdown_table(["variant", "median (min-max)", "n"], rows))
        lines += ["", f"edgeinfer sources {b['cache_sources']}, new tokens per request median "
                  f"{fmt(b['new_tokens']['median'], 0)}; one chat alone ((a), turns 2-8): "
                  f"{fmt(a['reuse_turns2plus_ms']['median'])} ms; chat A interleaved / alone, per turn: "
                  f"{fmt(b['interleaved_over_one_chat_conv_a_paired']['median'], 2)}."]
    if "c" in m:
        c = m["c"]
        lines += ["", f"(c) resume the chat in a new process at turn {N_TURNS} ({c['prompt_tokens']} prompt "
                  f"tokens), ms, median of {s['resume_repeats']}:", ""]
        rows = [[label, fmt(c["ttft_ms"][role]["median"]), fmt(c["load_ms"][role]["median"]),
                 fmt(c["spawn_to_first_token_ms"][role]["median"])]
                for role, label in (("ei-resume", "edgeinfer kv_disk resume"),
                                    ("ei-prefill", "edgeinfer re-prefill"),
                                    ("ll-resume", "llama + LlamaDiskCache"))]
        lines.append(markdown_table(["variant", "TTFT", "model load", "process spawn -> first token"], rows))
        lines += ["", f"edgeinfer resume: source {c['resume_sources']}, cached {c['resume_cached_tokens']}; "
                  f"on disk: edgeinfer {c['disk']['ei_bytes'] / 1e6:.1f} MB, LlamaDiskCache "
                  f"{c['disk']['ll_bytes'] / 1e6:.1f} MB."]
    if "d" in m:
        d = m["d"]
        lines += ["", f"(d) shared system prompt: {fmt(d['prompt_tokens']['median'], 0)} prompt tokens, "
                  f"{fmt(d['cached_tokens']['median'], 0)} cached (sources {d['cache_sources']}); "
                  "TTFT ms:", ""]
        rows = [[label, stat_cell(d["ttft_ms"][v])]
                for v, label in (("ei-reuse", "edgeinfer reuse"), ("ei-cold", "edgeinfer cold"),
                                 ("ll-default", "llama default"), ("ll-ram", "llama + LlamaRAMCache"))]
        lines.append(markdown_table(["variant", "median (min-max)"], rows))
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in m["elapsed_s"].items())]
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    s, mi, models = data["settings"], data["machine"], data["models"]
    lines = [
        "# KV reuse benchmark: time to first token, edgeinfer vs llama-cpp-python",
        "",
        f"Threads {s['threads']}; n_ctx {s['n_ctx']} for every variant; chats of {N_TURNS} turns "
        f"(short user messages), answers of up to {s['max_tokens']} greedy tokens; "
        f"(a) {s['rounds']} rounds; (b) llama default on turns {s['b_default_turns']}; (c) "
        f"{s['resume_repeats']} repeats; (d) {s['requests']} requests of {s['d_max_tokens']} tokens. "
        "Variants interleaved request by request, order rotating.",
        f"Machine: {mi['cpu_model']}, {mi['cpu_count']} CPUs, load {mi['loadavg']}; llama-cpp-python "
        f"{mi['llama_cpp_python']}; edgeinfer {mi['edgeinfer']}. Total {data['elapsed_s']:.0f} s.",
        "",
        "## Summary: ratios of TTFT medians (paired: median of same-round ratios)",
        "",
    ]
    rows = []
    for key, _path, label, target, ok in TARGETS:
        for m in models:
            if key not in m:
                continue
            h = headline(m)[label]
            x = h["of_medians"]
            verdict = "-" if ok is None or x is None else ("PASS" if ok(x) else "FAIL")
            rows.append([label, m["model"], fmt(x, 2), fmt(h["paired"], 2), target, verdict])
    lines.append(markdown_table(["ratio", "model", "x", "x paired", "target", ""], rows))
    lines += ["", "Greedy outputs of edgeinfer with reuse vs cold (equal / compared):", ""]
    rows = []
    for m in models:
        a, b, c, d = (m.get(k, {}).get("outputs", {}) for k in "abcd")
        rows.append([m["model"], eq_cell(a.get("reuse_vs_cold")), eq_cell(a.get("nosettle_vs_cold")),
                     eq_cell(b.get("conv_a_vs_cold")),
                     eq_cell(c.get("resume_vs_cold")), eq_cell(c.get("prefill_vs_cold")),
                     eq_cell(d.get("reuse_vs_cold")), eq_cell(a.get("cold_repeats_vs_cold")),
                     eq_cell(a.get("ll_default_text_vs_cold")), eq_cell(d.get("ll_default_text_vs_cold"))])
    lines.append(markdown_table(
        ["model", "(a) reuse", "(a) no idle time", "(b) chat A", "(c) disk resume", "(c) new-process prefill",
         "(d) reuse", "cold repeats", "(a) llama text", "(d) llama text"], rows))
    for m in models:
        lines += render_model(m, s)
    lines += [
        "",
        "Notes: edgeinfer TTFT is `stats.ttft_s` (request start -> first token sampled, including the "
        "cache lookup, copy or disk restore); llama-cpp-python's is call -> first streamed chunk "
        "(including its cache lookup and state load). The chat history is built from edgeinfer's "
        "greedy answers with reuse and replayed identically to every variant. In (b) llama default "
        "generates 1 token and runs only the listed turns: its previous request is always another "
        "chat, so its TTFT is the same as in the full interleaving. LlamaRAMCache keeps at most 8 "
        "states, dropping states that are prefixes of a newer one (its byte budget ignores the "
        "logits copy in each state). (c): llama-cpp-python's process 1 sets LlamaDiskCache for "
        "turn 7 only; each process 2 gets a fresh copy of that folder (LlamaDiskCache pops what it "
        "loads). Per-turn cold and llama default values before turn 8 are single samples. "
        "edgeinfer reuse gets idle time after each answer, as a user reading it would give: the run "
        "waits (untimed) until the background settling has recomputed the answer's KV as a prefill "
        "(column 'idle settle'); 'no idle time' is the same chat with KVOptions(settle=False), where each "
        "turn recomputes the previous answer itself.",
        "",
        "Reading the ratios: a reuse TTFT cannot beat prefilling the turn's new tokens, so cold/reuse "
        "(and llama default/reuse in (b)) is bounded by roughly prompt tokens / new tokens. edgeinfer "
        "gives each sequence its own KV stream (llama.cpp kv_unified=false), so a chat's turn costs "
        "the same whether or not other chats are held, and a prefix copy is a stream copy. Chat turns "
        "reuse the previous answer's KV, which came from one-token decode steps: a cold prefill "
        "computes those tokens in one batch, so its last bits (and rarely a greedy pick) can differ.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models.lock names or paths")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and requests (~20%% less time: the chats are a fixed cost)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096,
                   help="context window of every variant (edgeinfer: of each of its 4 sequences)")
    p.add_argument("--max-tokens", type=int, default=160, help="greedy tokens per chat answer")
    p.add_argument("--d-max-tokens", type=int, default=16, help="greedy tokens per (d) answer")
    p.add_argument("--rounds", type=int, default=None, help="(a) rounds (default 3, quick 2)")
    p.add_argument("--b-default-turns", default=None,
                   help="(b) turns llama default runs (default 6,8: the ~1-1.5k-token turns; quick 8)")
    p.add_argument("--resume-repeats", type=int, default=None, help="(c) repeats (default 3, quick 2)")
    p.add_argument("--requests", type=int, default=None, help="(d) requests (default 20, quick 10)")
    p.add_argument("--workloads", default="abcd",
                   help="which of a, b, c, d to run ((a) always runs: it is the reference of b and c)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results/")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (2 if q else 3)
    args.b_default_turns = [int(x) for x in (args.b_default_turns or ("8" if q else "6,8")).split(",")]
    args.resume_repeats = args.resume_repeats or (2 if q else 3)
    args.requests = min(args.requests or (10 if q else 20), len(REQUESTS))
    args.workloads = args.workloads.lower()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        worker_main(argv[1:])
        return {}
    args = parse_args(argv)
    quiet_logging()
    without_weight_repacking()  # reference Llama objects load as edgeinfer does (no AMX repacking)
    t0 = time.perf_counter()
    models = [bench_model(name, args) for name in args.models]
    elapsed = time.perf_counter() - t0
    data = {
        "benchmark": "cache",
        "machine": machine_info(),
        "settings": {
            "models": args.models, "threads": args.threads, "n_ctx": args.n_ctx,
            "max_tokens": args.max_tokens, "d_max_tokens": args.d_max_tokens, "rounds": args.rounds,
            "b_default_turns": args.b_default_turns, "resume_repeats": args.resume_repeats,
            "requests": args.requests, "quick": args.quick, "workloads": args.workloads,
            "sampling": GREEDY, "max_sequences": 4, "n_batch": 512,
        },
        "elapsed_s": elapsed,
        "headline": {m["model"]: headline(m) for m in models},
        "models": models,
    }
    markdown = render_markdown(data)
    print(markdown)
    if not args.no_write:
        paths = write_report("cache", data, markdown)
        print(f"\nwrote {paths[0]} and {paths[1]} ({elapsed:.0f} s)")
    return data


if __name__ == "__main__":
    main()
