"""The FastAPI app: OpenAI-compatible routes over one or more loaded models."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from ..engine import CompletionStream
from ..errors import EdgeInferError, InvalidRequestError
from ..lock import ModelLock
from ..model import Model
from ..routing import Router
from ..structured import OutputFormat, output_format
from ..tools import (
    Tool,
    call_schema,
    parse_choice,
    parse_tools,
    template_tools,
    tool_format,
    tool_messages,
    tool_output,
)
from .errors import APIError, from_edgeinfer, install_handlers
from .guards import LOOPBACK_ORIGIN, Guard
from .prometheus import prometheus_registry
from .pump import Admission, Pump
from .responses import CHAT, TEXT, EventStream, Reply, Shape, ToolUse, ended
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest, GenerationRequest, parse

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
TEXT_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to a stop or the context


@dataclass
class ServerOptions:
    """How the server admits requests. ``max_queue``: requests a model takes beyond those it runs
    (None: 4 x its sequences); ``loopback``: the server is bound to loopback (guards on);
    ``header_timeout`` / ``body_timeout``: seconds a client has to send a request's headers / its whole
    body before the connection is dropped / the request refused (a slow client holds no slot)."""

    api_key: str | None = None
    max_queue: int | None = None
    max_body: int = 1 << 20
    loopback: bool = True
    header_timeout: float = 10.0
    body_timeout: float = 30.0


class Served:
    """A model the server serves (a Model, or a Router: a routed virtual model over served models),
    under its id, with its admission counter."""

    def __init__(self, model: Model | Router, max_queue: int | None) -> None:
        self.model = model
        self.id = model.name
        running = _sequences(model)
        self.admission = Admission(running + (4 * running if max_queue is None else max_queue))
        self.created = int(time.time())

    def card(self) -> dict:
        """The /v1/models entry (OpenAI fields plus what a client may want to know)."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "edgeinfer",
                "n_ctx": self.model.n_ctx, "chat": self.model.role == "chat"}

    def health(self) -> dict:
        """Admitted requests against capacity, and the engine's own running / waiting count."""
        running, waiting = _occupancy(self.model)
        return {"admitted": self.admission.admitted, "capacity": self.admission.capacity,
                "running": running, "waiting": waiting}


def _lock_aliases(served: Mapping[str, Served]) -> dict[str, Served]:
    """The models.lock aliases of the served models, by alias (none when the lock cannot be read)."""
    try:
        lock = ModelLock.load()
    except EdgeInferError:
        return {}
    out = {}
    for name, s in served.items():
        entry = lock.entries.get(name)
        for alias in entry.aliases if entry is not None else ():
            out[alias] = s
    return out


def _sequences(model: Any) -> int:
    """Requests a served model runs at once: its sequences; a Router's tiers', together."""
    if isinstance(model, Router):
        return sum(_sequences(tier.model) for tier in model.tiers.values())
    caps = getattr(getattr(model, "backend", None), "caps", None)
    return caps.max_sequences if caps is not None else 1


def _occupancy(model: Any) -> tuple[int, int]:
    """(running, waiting) requests in a model's engine; a Router's tiers', together."""
    if isinstance(model, Router):
        counts = [_occupancy(tier.model) for tier in model.tiers.values()]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    engine = getattr(model, "engine", None)
    return engine.occupancy() if engine is not None else (0, 0)


class Registry:
    """The served models by id (and by the aliases they were asked for); picks one per request."""

    def __init__(self, models: Sequence[Model | Router], aliases: Mapping[str, Model], max_queue: int | None,
                 ) -> None:
        self.served = {m.name: Served(m, max_queue) for m in models}
        if len(self.served) != len(models):
            raise ValueError("two of the models have the same name; serve each model once")
        by_model = {id(s.model): s for s in self.served.values()}
        self.aliases = {alias: by_model[id(m)] for alias, m in aliases.items() if id(m) in by_model}
        for alias, served in _lock_aliases(self.served).items():  # "smollm2", as the CLI takes it
            self.aliases.setdefault(alias, served)

    def get(self, name: str | None) -> Served:
        """The model a request names; without a name, the only one served."""
        if name is None:
            if len(self.served) == 1:
                return next(iter(self.served.values()))
            raise APIError(400, f"say which model: one of {sorted(self.served)}", param="model")
        served = self.served.get(name) or self.aliases.get(name)
        if served is None:
            raise APIError(404, f"the model {name!r} is not served here; served: {sorted(self.served)}",
                           code="model_not_found", param="model")
        return served


def create_app(models: Sequence[Model | Router], options: ServerOptions | None = None, *,
               aliases: Mapping[str, Model] | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``models`` (the caller loads and closes them). A Router among
    them is a routed virtual model: a request that names it goes to the tier its policy picks."""
    options = options or ServerOptions()
    registry = Registry(models, aliases or {}, options.max_queue)
    app = FastAPI(title="edgeinfer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    install_handlers(app)
    _add_routes(app, registry)
    app.add_middleware(Guard, api_key=options.api_key, max_body=options.max_body, loopback=options.loopback,
                       body_timeout=options.body_timeout)
    if options.loopback:  # local web apps may call it; remote pages may not
        app.add_middleware(CORSMiddleware, allow_origin_regex=LOOPBACK_ORIGIN, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    return app


def _add_routes(app: FastAPI, registry: Registry) -> None:
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": {s.id: s.health() for s in registry.served.values()}}

    metrics = prometheus_registry({s.id: s.model for s in registry.served.values()},
                                  routers={s.id: s.model for s in registry.served.values()
                                           if isinstance(s.model, Router)},
                                  gauges=lambda: {s.id: s.health() for s in registry.served.values()})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format 0.0.4: per model (label ``model``) requests by finish reason, tokens,
        cached share, TTFT / tok/s / duration summaries, queue gauges; plus the process' memory and CPU.
        Behind the API key when one is set (a scraper sends ``Authorization: Bearer KEY``)."""
        body = await run_in_threadpool(generate_latest, metrics)  # /proc reads stay off the event loop
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [s.card() for s in registry.served.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        return registry.get(model_id).card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse(ChatRequest, await _body(request))
        served = registry.get(body.model)
        _refuse_embedding_model(served)
        if served.model.role != "chat":
            raise APIError(400, f"{served.id} is a base model without a chat template: use /v1/completions",
                           param="model")
        messages = body.sdk_messages()
        options = _generation_options(body, served.model, default_limit=served.model.n_ctx)
        tools = None
        if body.has_tools:  # tools offered, or earlier calls and results
            messages, tools, tool_options = await _tool_options(body, messages, served.model.chat_template)
            options.update(tool_options)
        options.update(await _output_option(body))  # tools with a JSON format are a 400 above
        start = lambda: served.model.stream_chat(messages, **options)
        return await _complete(request, served, body, CHAT, start, tools)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse(CompletionRequest, await _body(request))
        served = registry.get(body.model)
        _refuse_embedding_model(served)
        prompt = body.single_prompt()
        options = _generation_options(body, served.model, default_limit=TEXT_DEFAULT_MAX_TOKENS)
        options.update(await _output_option(body))
        start = lambda: served.model.stream(prompt, **options)
        return await _complete(request, served, body, TEXT, start)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        body = parse(EmbeddingRequest, await _body(request))
        served = registry.get(body.model)
        return await _embed(served, body)


async def _body(request: Request) -> bytes:
    """The request body; a client that leaves mid-upload ends the request quietly (no traceback)."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise APIError(400, "the client disconnected before sending the whole request",
                       code="client_disconnected") from None


def _refuse_embedding_model(served: Served) -> None:
    """Generation routes on an embedding model are a 400 pointing at /v1/embeddings."""
    if getattr(served.model, "is_embedding", False):
        raise APIError(400, f"{served.id} is an embedding model: it cannot generate text; use /v1/embeddings",
                       code="model_cannot_generate", param="model")


def _generation_options(body: GenerationRequest, model: Model, *, default_limit: int) -> dict:
    """Sampling options plus max_tokens, refused when it cannot fit the model's context at all."""
    limit = body.limit
    if limit is not None and limit > model.n_ctx:
        raise APIError(400, f"max_tokens is {limit} but the context of {model.name} holds {model.n_ctx} "
                       "tokens, prompt included: ask for fewer", param="max_tokens")
    return {**body.sampling(), "max_tokens": limit or default_limit}


async def _output_option(body: GenerationRequest) -> dict[str, OutputFormat]:
    """The ``response_format`` as the generation option it asks for: ``json_schema=`` compiled once here
    (off the event loop: a large schema takes a while), so a schema llguidance cannot take is a 400
    naming the construct, before the request is admitted. Empty for plain text."""
    schema = body.output_schema()
    if schema is None:
        return {}
    try:
        output = await run_in_threadpool(output_format, json_schema=schema)
    except InvalidRequestError as exc:
        raise APIError(400, f"response_format: {exc}", code="invalid_request", param="response_format") \
            from None
    return {"output": output}


async def _tool_options(body: ChatRequest, messages: list[dict], template: str | None,
                        ) -> tuple[list[dict], ToolUse | None, dict[str, Any]]:
    """``tools`` and ``tool_choice`` checked (a 400 before admission); the messages ready for the chat
    template (tools.tool_messages: in the template's own tool format when it has one); what to read the
    answer for; and the generation options: the constraint on the answer (a call with "required" or a
    named tool, a call or text with "auto", compiled off the event loop) and, for a template with its own
    format, the tools it renders."""
    if body.tools is not None and body.output_schema() is not None:
        raise APIError(400, "use one of tools and a JSON response_format, not both", param="response_format")
    try:
        tools = parse_tools(body.tools) if body.tools is not None else []
    except InvalidRequestError as exc:
        raise APIError(400, str(exc), code="invalid_request", param="tools") from None
    try:
        if tools:
            choice = parse_choice(body.tool_choice, tools)
        elif body.tool_choice not in (None, "none"):
            raise InvalidRequestError("tool_choice needs tools")
        else:
            choice = "none"
    except InvalidRequestError as exc:
        raise APIError(400, str(exc), code="invalid_request", param="tool_choice") from None
    fmt = tool_format(template)
    try:
        output = await run_in_threadpool(partial(tool_output, tools, choice, fmt,
                                                 parallel=body.parallel_tool_calls is not False))
    except InvalidRequestError as exc:
        raise await run_in_threadpool(_tool_error, tools, exc) from None
    if output is None:  # "none": no tools in the prompt, and nothing to read
        return tool_messages(messages, tools, choice, fmt), None, {}
    options = {"output": output, **({"tools": template_tools(tools)} if fmt.native else {})}
    return tool_messages(messages, tools, choice, fmt), ToolUse(tuple(tools), choice, fmt), options


def _tool_error(tools: list[Tool], error: InvalidRequestError) -> APIError:
    """The 400 for tools whose constraint llguidance refused, naming the first tool it refuses alone."""
    for i, tool in enumerate(tools):
        try:
            output_format(json_schema=call_schema([tool]))
        except InvalidRequestError as exc:
            return APIError(400, f"tools[{i}].function.parameters ({tool.name}): {exc}",
                            code="invalid_request", param=f"tools.{i}.function.parameters")
    return APIError(400, f"tools: {error}", code="invalid_request", param="tools")


async def _complete(request: Request, served: Served, body: GenerationRequest, shape: Shape,
                    start: Callable[[], CompletionStream], tools: ToolUse | None = None) -> Response:
    """Admit the request, start its stream (validation errors are 400s before any header is sent),
    then stream it as events or wait for the whole completion; the client leaving cancels it."""
    ticket = served.admission.acquire()
    try:
        stream = await run_in_threadpool(start)  # tokenizing a long prompt must not block the loop
    except BaseException as exc:
        ticket.release()
        if isinstance(exc, EdgeInferError):
            raise from_edgeinfer(exc, prompt_param=shape.param) from exc
        raise
    pump = Pump(stream, request.receive)
    reply = Reply(shape, served.id, tools)
    if body.stream:
        def on_close() -> None:
            pump.close()
            ticket.release()

        return EventStream(reply.events(pump, body.include_usage), on_close)
    try:
        async for _ in pump:
            pass
    finally:
        ticket.release()
    if pump.disconnected:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
    return JSONResponse(reply.body(ended(pump.completion)))


async def _embed(served: Served, body: EmbeddingRequest) -> dict:
    """Embeddings from a model that can make them (``model.embed(texts)``); others get a 400."""
    embed = getattr(served.model, "embed", None)
    if embed is None:
        raise APIError(400, f"{served.id} cannot embed: serve an embedding model (e.g. edgeinfer serve "
                       f"{served.id} all-minilm-l6-v2) and name it in 'model'", code="model_cannot_embed",
                       param="model")
    texts = body.texts()

    def run() -> tuple[Sequence[Sequence[float]], int]:  # tokenizing and embedding leave the event loop
        return embed(texts), sum(len(served.model.tokenize(t)) for t in texts)

    ticket = served.admission.acquire()
    try:
        vectors, n_tokens = await run_in_threadpool(run)
    except EdgeInferError as exc:  # a text over the context, or a model that is not an embedding one
        raise from_edgeinfer(exc, prompt_param="input") from exc
    finally:
        ticket.release()
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": served.id,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def _encode(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    array = np.asarray(vector, dtype="<f4")
    return base64.b64encode(array.tobytes()).decode() if encoding_format == "base64" else array.tolist()
