"""The FastAPI app of one replica: OpenAI-compatible routes, API-key auth, limits, SSE streaming, metrics.

Every refusal is an `APIError` rendered in OpenAI's error shape with a 4xx status; bodies are parsed by hand
(content type, size, JSON, schema) so that no malformed input can reach a code path that answers 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workloads.serving import metrics
from workloads.serving.engine import BatchingEngine, EngineOverloaded, SamplingParams, load_model, resolve_device
from workloads.serving.engine_process import EngineProcess, EngineUnavailable
from workloads.serving.protocol import (DEFAULT_MAX_TOKENS, APIError, ChatCompletionRequest, CompletionRequest, TextChunkEncoder,
                                        chat_body, chat_chunk, completion_body, completion_chunk, new_id,
                                        published_schema, sse, usage_chunk, validation_message)
from workloads.records import REPLICA_HEADER, mark_ready
from workloads.serving.settings import LimitSettings, ServerSettings, replica_id

ServingEngine = BatchingEngine | EngineProcess
"""What the routes submit to: the same interface in a thread (`BatchingEngine`) or in a process of its own."""

_ROUTES = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics", "/openapi.json"}


class BodyTooLarge(Exception):
    pass


class ServingMiddleware:
    """Pure ASGI (streaming-safe): body-size limit, replica header, request metrics, and `Connection: close` when
    requests are balanced over the replicas (ServerSettings.balance)."""

    def __init__(self, app: Any, max_body_bytes: int, close_connections: bool, replica_tag: str = ""):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.replica = replica_id(replica_tag).encode()  # built in the replica process: its own pid
        extra = [(REPLICA_HEADER.encode(), self.replica)]
        if close_connections:  # uvicorn closes the connection after a response that says so
            extra.append((b"connection", b"close"))
        self.response_headers = extra

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in _ROUTES else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), *self.response_headers]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                metrics.REQUESTS.labels(route, str(status["code"])).inc()
                metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            refusal = None
            if not declared.isdigit():
                refusal = APIError(400, "Content-Length is not a number")
            elif int(declared) > self.max_body_bytes:
                refusal = APIError(413, f"request body exceeds {self.max_body_bytes} bytes")
            if refusal:
                return await JSONResponse(refusal.body(), refusal.status)(scope, receive, send_tagged)
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send_tagged)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Starts the batching engine of this replica -- in its own process (EngineSettings.isolation), or in a thread
    here -- once its model is loaded and warmed up; then announces readiness with a `ready-<pid>` file in the state
    directory (the supervisor's and the checks' signal) and removes it on the way out."""
    settings: ServerSettings = app.state.settings
    device = resolve_device(settings.engine.device, settings.model.quantize)  # int8 on CUDA refused before loading
    if settings.engine.isolation == "process":
        engine: ServingEngine = EngineProcess(settings.model, settings.engine, str(device),
                                              max_pending=settings.limits.max_pending, observer=metrics.observe_step,
                                              load_observer=metrics.LoadMetrics(settings.model.served_name),
                                              on_lost=getattr(app.state, "exit_replica", None))
        await engine.start()
    else:
        engine = await start_engine_thread(settings, device)
    metrics.SERVED_PRECISION.labels(settings.model.precision).set(1)
    app.state.engine = engine
    ready_file = mark_ready(settings.state_dir) if settings.state_dir else None
    try:
        yield
    finally:
        if isinstance(engine, EngineProcess):
            await engine.stop()
        else:
            engine.stop()
        if ready_file:
            ready_file.unlink(missing_ok=True)


async def start_engine_thread(settings: ServerSettings, device: torch.device) -> BatchingEngine:
    """The engine in a thread of this process (`isolation: thread`)."""
    torch.set_num_threads(settings.engine.torch_threads)
    model, config = await asyncio.to_thread(load_model, settings.model)
    model = model.to(device)
    engine = BatchingEngine(model, config, settings.engine, max_pending=settings.limits.max_pending,
                            observer=metrics.observe_step,
                            load_observer=metrics.LoadMetrics(settings.model.served_name))
    await asyncio.to_thread(engine.warm_up)
    engine.start()
    return engine


# -- error rendering: every refusal in OpenAI's error shape -----------------------------------------------------

async def api_error(_: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), error.status)


async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if error.status_code == 404 else None
    # error.headers carries Starlette's `Allow` on a 405, which HTTP requires on that answer.
    return JSONResponse(APIError(error.status_code, str(error.detail), code=code).body(), error.status_code,
                        headers=error.headers)


async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
    return JSONResponse(APIError(500, f"internal error: {type(error).__name__}", "server_error").body(), 500)


async def request_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(APIError(400, str(error.errors()[:1])).body(), 400)


# -- dependencies --------------------------------------------------------------------------------------------------

def server_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def loaded_engine(request: Request) -> ServingEngine:
    return request.app.state.engine


def require_api_key(request: Request, settings: ServerSettings = Depends(server_settings)) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not reveal how many leading characters were right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
        raise APIError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                       "invalid_request_error", code="invalid_api_key")


async def parse_body(request: Request, model_class: type, settings: ServerSettings) -> Any:
    """The request body as `model_class`, checked in order: content type (415), size (413), JSON (400), schema
    (400), served model (404)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
    try:
        raw = await request.body()
    except BodyTooLarge:
        raise APIError(413, f"request body exceeds {settings.limits.max_body_bytes} bytes") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise APIError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        parsed = model_class.model_validate(data)
    except ValidationError as error:
        message, param = validation_message(error)
        raise APIError(400, message, param=param) from None
    served = settings.model.served_name
    if parsed.model != served:
        raise APIError(404, f"The model {parsed.model!r} does not exist; this server serves {served!r}.",
                       param="model", code="model_not_found")
    return parsed


async def completion_request(request: Request,
                             settings: ServerSettings = Depends(server_settings)) -> CompletionRequest:
    return await parse_body(request, CompletionRequest, settings)


async def chat_request(request: Request, settings: ServerSettings = Depends(server_settings)) -> ChatCompletionRequest:
    return await parse_body(request, ChatCompletionRequest, settings)


# -- generation ----------------------------------------------------------------------------------------------------

def submit(engine: ServingEngine, limits: LimitSettings, body: CompletionRequest | ChatCompletionRequest):
    """The request checked against the limits and the context, queued on the engine (429 when it is full)."""
    prompt_ids = body.prompt_ids(engine.tokenizer)
    max_tokens = body.requested_max_tokens()
    if max_tokens is None:  # left to the server: a default it accepts itself, within the limit and the context
        max_tokens = max(1, min(DEFAULT_MAX_TOKENS, limits.max_tokens, engine.max_context - len(prompt_ids)))
    if not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(400, f"max_tokens must be between 1 and {limits.max_tokens}, got {max_tokens}",
                       param="max_tokens")
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, the limit is {limits.max_prompt_tokens}",
                       param="prompt", code="context_length_exceeded")
    if len(prompt_ids) + max_tokens > engine.max_context:
        raise APIError(400, f"This model's maximum context length is {engine.max_context} tokens; the prompt "
                       f"has {len(prompt_ids)} and max_tokens is {max_tokens}.", param="max_tokens",
                       code="context_length_exceeded")
    params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, seed=body.seed,
                            stop=body.stop_strings(), ignore_eos=body.ignore_eos)
    try:
        handle = engine.submit(prompt_ids, params)
    except EngineOverloaded as error:
        raise APIError(429, f"server overloaded: {error}", "rate_limit_error") from None
    except EngineUnavailable as error:
        raise APIError(503, f"{error}; retry on another replica", "server_error") from None
    metrics.PROMPT_TOKENS.inc(len(prompt_ids))
    return handle


async def respond(engine: ServingEngine, settings: ServerSettings, body: CompletionRequest | ChatCompletionRequest,
                  chat: bool) -> Response:
    handle = submit(engine, settings.limits, body)
    served = settings.model.served_name
    request_id = new_id("chatcmpl" if chat else "cmpl")
    submitted = time.perf_counter()
    if body.stream:
        return StreamingResponse(stream(handle, request_id, served, body, chat, submitted),
                                 media_type="text/event-stream", headers={"cache-control": "no-cache"})
    pieces, event = [], None
    try:
        async for event in handle.events():
            if not pieces:
                metrics.TTFT_SECONDS.observe(time.perf_counter() - submitted)
            pieces.append(event.text)
    finally:
        handle.cancel()
    metrics.GENERATED_TOKENS.inc(event.completion_tokens)
    if event.finish_reason == "error":
        raise APIError(500, "generation failed on the server", "server_error")
    build = chat_body if chat else completion_body
    return JSONResponse(build(request_id, served, "".join(pieces), event.finish_reason, handle.prompt_tokens,
                              event.completion_tokens, event.cached_tokens))


async def stream(handle, request_id: str, served: str, body: CompletionRequest | ChatCompletionRequest, chat: bool,
                 submitted: float) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    first = True
    text_event = TextChunkEncoder(request_id, served, chat)
    try:
        if chat:  # OpenAI opens a chat stream with the assistant role and empty content
            yield sse(chat_chunk(request_id, served, {"role": "assistant", "content": ""}, None))
        async for event in handle.events():
            if first:
                metrics.TTFT_SECONDS.observe(time.perf_counter() - submitted)
                first = False
            if event.finish_reason == "error":
                yield sse(APIError(500, "generation failed on the server", "server_error").body())
                break
            if event.text:
                yield text_event(event.text)
            if event.finish_reason:
                metrics.GENERATED_TOKENS.inc(event.completion_tokens)
                yield sse(chat_chunk(request_id, served, {}, event.finish_reason) if chat
                          else completion_chunk(request_id, served, "", event.finish_reason))
                if body.include_usage_in_stream():
                    yield sse(usage_chunk(request_id, served, kind, handle.prompt_tokens, event.completion_tokens,
                                          event.cached_tokens))
        yield sse("[DONE]")
    finally:
        handle.cancel()  # a client that went away frees its batch slot at the next step


# -- routes --------------------------------------------------------------------------------------------------------

router = APIRouter()
authorized = [Depends(require_api_key)]


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return JSONResponse({"status": "loading"}, 503)
    if isinstance(engine, EngineProcess) and engine.lost:
        return JSONResponse({"status": "engine process lost"}, 503)
    return JSONResponse({"status": "ready", "replica": replica_id(request.app.state.settings.replica_tag),
                         "queue_depth": engine.queue_depth,
                         "active_sequences": engine.active_sequences})


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)


@router.get("/v1/models", dependencies=authorized)
async def list_models(settings: ServerSettings = Depends(server_settings)) -> dict[str, Any]:
    served = settings.model.served_name
    # `precision` (fp32 | int8) is an extra field, as vLLM adds its own: lets a load test verify what is served.
    return {"object": "list", "data": [{"id": served, "object": "model", "created": 0, "owned_by": "dcforge",
                                        "precision": settings.model.precision}]}


@router.post("/v1/completions", dependencies=authorized)
async def completions(body: CompletionRequest = Depends(completion_request),
                      engine: ServingEngine = Depends(loaded_engine),
                      settings: ServerSettings = Depends(server_settings)) -> Response:
    return await respond(engine, settings, body, chat=False)


@router.post("/v1/chat/completions", dependencies=authorized)
async def chat_completions(body: ChatCompletionRequest = Depends(chat_request),
                           engine: ServingEngine = Depends(loaded_engine),
                           settings: ServerSettings = Depends(server_settings)) -> Response:
    return await respond(engine, settings, body, chat=True)


def create_app(settings: ServerSettings) -> FastAPI:
    """One replica's app: the routes above, the settings in `app.state.settings`, the engine (once loaded) in
    `app.state.engine`."""
    if not settings.api_key:
        raise ValueError("an API key is required: set DCFORGE_API_KEY or DCFORGE_API_KEY_FILE")
    app = FastAPI(title="dcforge OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.settings = settings
    app.add_middleware(ServingMiddleware, max_body_bytes=settings.limits.max_body_bytes,
                       close_connections=settings.balance == "requests", replica_tag=settings.replica_tag)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.include_router(router)
    app.openapi = lambda: openapi(app)
    return app


def openapi(app: FastAPI) -> dict[str, Any]:
    """`/openapi.json`: FastAPI's paths with the request bodies the routes parse themselves (`published_schema`)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        settings: ServerSettings = app.state.settings
        paths = get_openapi(title=app.title, version="1", routes=app.routes)["paths"]
        app.openapi_schema = published_schema(app.title, paths, settings.model.served_name, settings.limits.max_tokens)
    return app.openapi_schema
