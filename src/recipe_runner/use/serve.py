"""stage=serve: an OpenAI-compatible HTTP server, one base model with several persona adapters.

This is the front; what generates is the engine serve.engine names (load_engine below): the
in-process one (use/personas.py, batched by use/batching.py), llama.cpp (use/engine_llamacpp.py)
or vLLM (use/engine_vllm.py). Every engine offers names, system_prompt, encode, stream, reply and
close, so what a client sees does not depend on it.

    POST /v1/chat/completions   the request's `model` picks the persona (`base` = no adapter)
    GET  /v1/models             the personas and `base`
    GET  /health                liveness (no key needed)

A persona speaks with its trained system prompt (persona.json) unless the request brings its own
system message. The serve.* limits answer in OpenAI's error shape: 413 for a large body, 400 for
max_tokens or a prompt beyond the limits, 429 (Retry-After) when max_concurrent generations run
and max_queue more wait. A failing request gets a 500; the server carries on. docs/serving.md.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import socket
import threading
import time
import traceback
import uuid

import uvicorn
from jinja2 import TemplateError
from fastapi import FastAPI, Request
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from recipe_runner.config.choices import ServeEngine
from recipe_runner.errors import RecipeError
from recipe_runner.use.openai_api import (
    ApiError, parse, read_body, request_sampling, sse, usage_of,
)
from recipe_runner.use.replies import Reply, Sampling

class Slots:
    """max_concurrent generations at once, max_queue more waiting, anyone beyond refused (429).
    Used on the event loop only, so the counting needs no lock."""

    def __init__(self, concurrent: int, queue: int):
        self.sem, self.limit, self.inside = asyncio.Semaphore(concurrent), concurrent + queue, 0

    async def acquire(self) -> "Lease":
        if self.inside >= self.limit:
            raise ApiError(429, f"server busy: {self.inside} requests running or waiting (serve.max_concurrent + "
                           f"serve.max_queue = {self.limit}); retry later", code="rate_limit_exceeded",
                           kind="rate_limit_error", headers={"Retry-After": "1"})
        self.inside += 1
        try:
            await self.sem.acquire()
        except BaseException:
            self.inside -= 1
            raise
        return Lease(self)


class Lease:
    """One generation's slot, given back once: when the generation ends, or has stopped because its client left."""

    def __init__(self, slots: Slots):
        self.slots, self.done = slots, False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.slots.sem.release()
            self.slots.inside -= 1


def create_app(personas, serve_cfg, sampling_defaults: Sampling) -> FastAPI:
    """The app over a loaded Personas (or anything with .names, .system_prompt, .encode, .stream, .reply)."""
    app = FastAPI(title="recipe-runner", docs_url=None, redoc_url=None, openapi_url=None)
    key = os.environ.get(serve_cfg.api_key_env) if serve_cfg.api_key_env else None
    slots, started = Slots(serve_cfg.max_concurrent, serve_cfg.max_queue), int(time.time())
    app.state.stats = {"requests": 0, "errors": 0, "completion_tokens": 0}
    app.add_middleware(LogRequests, stats=app.state.stats)

    def authorize(request: Request) -> None:
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if key is not None and not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(401, "invalid or missing API key: send Authorization: Bearer <key>",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        request.state.error = exc.message
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown path, wrong method
        return ApiError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": started,
                                            "owned_by": "recipe-runner"} for n in personas.names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        req = parse(await read_body(request, serve_cfg.max_body_bytes))
        if req.model not in personas.names:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server has: "
                           f"{', '.join(personas.names)}", param="model", code="model_not_found")
        messages = [m.plain() for m in req.messages]
        system = personas.system_prompt(req.model)
        if system and not any(m["role"] == "system" for m in messages):  # the client's own one wins
            messages.insert(0, {"role": "system", "content": system})
        try:  # counted here, generated from below
            ids = await run_in_threadpool(personas.encode, req.model, messages)
        except TemplateError as exc:  # the persona's template refuses this order (Llama's: roles must alternate)
            raise ApiError(400, f"the chat template of {req.model!r} refuses these messages: {exc}",
                           param="messages", code="invalid_value") from None
        prompt_tokens = int(ids.shape[1])
        sampling = request_sampling(req, prompt_tokens, sampling_defaults, serve_cfg)
        note = request.state.note = {"model": req.model, "prompt": prompt_tokens}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
        lease = await slots.acquire()
        if req.stream:
            pieces = personas.stream(req.model, messages, sampling, ids)
            usage = bool((req.stream_options or {}).get("include_usage"))
            return Stream(events(pieces, head, usage, note, lease), pieces, lease)
        try:
            reply: Reply = await run_in_threadpool(personas.reply, req.model, messages, sampling, ids)
        except Exception as exc:  # noqa: BLE001 - this request fails, the server stays
            traceback.print_exc()
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error") from None
        finally:
            lease.release()
        note["completion"] = reply.completion_tokens
        return {**head, "object": "chat.completion", "usage": usage_of(reply),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}]}

    return app


async def events(pieces, head: dict, include_usage: bool, note: dict, lease: Lease):
    """Server-sent events: a role chunk, content deltas, the finish_reason chunk, [DONE]. The text is
    stripped as the non-streamed reply's is: leading whitespace dropped, trailing whitespace held back.
    The sync generator runs in the thread pool, so the event loop serves others meanwhile."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        return sse({**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    held, started, reply = "", False, None
    try:
        async for item in iterate_in_threadpool(pieces):
            if isinstance(item, Reply):
                reply = item
                continue
            text = held + item if started else (held + item).lstrip()
            body = text.rstrip()
            held, started = text[len(body):], started or bool(body)
            if body:
                yield chunk({"content": body})
    except Exception as exc:  # noqa: BLE001 - the 200 is sent already: the error goes in the stream
        traceback.print_exc()
        note["error"] = f"generation failed: {type(exc).__name__}: {exc}"
        yield sse({"error": {"message": note["error"], "type": "server_error", "param": None, "code": None}})
        return
    finally:
        if reply is not None or note.get("error"):
            lease.release()
    note["completion"] = reply.completion_tokens
    yield chunk({}, reply.finish_reason)
    if include_usage:
        yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage_of(reply)})
    yield "data: [DONE]\n\n"


class Stream(StreamingResponse):
    """The SSE response. A client that leaves mid-stream stops its generation: a thread closes the
    generator (it stops at the next token: the in-process engines' stop flag, the engine's HTTP stream
    closed) and then gives the slot back, so at most serve.max_concurrent generations ever run and a
    slot is not held for a reply nobody reads."""

    def __init__(self, content, pieces, lease: Lease):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.pieces, self.lease = pieces, lease

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)  # returns early when the client goes away
        finally:
            if not self.lease.done:
                threading.Thread(target=stop_then_release, args=(self.pieces, asyncio.get_running_loop(),
                                                                 self.lease), daemon=True).start()


def stop_then_release(pieces, loop, lease: Lease) -> None:
    while True:
        try:
            pieces.close()  # GeneratorExit at its yield: the generation stops there
            break
        except ValueError:  # "generator already executing": the thread pool is inside next(), one token
            time.sleep(0.005)
        except Exception:  # noqa: BLE001,S110 - nobody is listening any more
            break
    try:
        loop.call_soon_threadsafe(lease.release)
    except RuntimeError:  # the server has stopped
        pass


class LogRequests:
    """One plain line per request on stdout: time, method, path, status, seconds, model, tokens, error.
    Also where a bug in a request becomes its 500 (traceback printed, the server carries on)."""

    def __init__(self, app, stats: dict):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status, crashed = time.monotonic(), [None], None

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        # Not an exception_handler(Exception): Starlette's ServerErrorMiddleware re-raises after answering,
        # and uvicorn then closes the keep-alive connection, so another request already on its way over it
        # was reset (found by the load test: "Connection reset by peer" next to each 500).
        try:
            await self.app(scope, receive, send_status)
        except ClientDisconnect:  # the client left (before its body was read, say): nobody to answer
            if status[0] is None:
                status[0], crashed = 499, "the client went away before its request was answered"
        except Exception as exc:  # a bug: the request fails, the server stays
            traceback.print_exc()
            crashed = f"{type(exc).__name__}: {exc}"
            if status[0] is not None:  # the response has begun: only closing the connection can end it
                raise
            await ApiError(500, f"internal error: {crashed}", kind="server_error").response()(
                scope, receive, send_status)
        finally:
            state = scope.get("state", {})
            note = state.get("note") or {}
            error = crashed or state.get("error") or note.get("error")
            status[0] = status[0] or 500
            self.stats["requests"] += 1
            self.stats["errors"] += bool(status[0] >= 400 or error)
            self.stats["completion_tokens"] += note.get("completion") or 0
            line = f"{time.strftime('%H:%M:%S')} {scope['method']} {scope['path']} {status[0]} " \
                   f"{time.monotonic() - began:.2f}s"
            if note:
                line += f" {note['model']} prompt={note['prompt']} completion={note.get('completion', '-')}"
            print(line + (f" error: {error}" if error else ""), flush=True)


def model_name(card: dict) -> str:
    """A persona's model name: its bible name (else the recipe) in lower case, e.g. Alex -> alex."""
    name = str(card.get("persona") or card.get("recipe") or "persona").lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", name).strip("-")


def bind(host: str, port: int) -> socket.socket:
    """Take host:port before the model loads: a port in use is a one-line error at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise RecipeError(f"serve.host={host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a closed port's TIME_WAIT is fine
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RecipeError(f"serve: cannot listen on {host}:{port}: {exc.strerror} (another server there? "
                          f"choose another serve.port)") from None
    return sock


class Server(uvicorn.Server):
    """uvicorn with our ready line. Ctrl-C or SIGTERM stops it and serve() returns (uvicorn would
    re-raise the signal once shut down, and summary.json would not be written)."""

    def __init__(self, config: uvicorn.Config, ready: str):
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            print(self.ready, flush=True)

    def handle_exit(self, sig, frame):
        self.force_exit = self.should_exit  # a second Ctrl-C: do not wait for running requests
        self.should_exit = True


def serve(cfg, run_dir) -> dict:
    """Load the base and the adapters, serve until Ctrl-C or SIGTERM, return the summary."""
    from recipe_runner.train.adapter_card import read_card, resolve_adapter

    v = cfg.serve
    if v.adapters:  # serve.adapters, when set, replaces adapter=
        folders = {str(n): resolve_adapter(str(spec), cfg.paths.output_dir) for n, spec in v.adapters.items()}
    else:
        folder = resolve_adapter(str(cfg.adapter), cfg.paths.output_dir)
        folders = {model_name(read_card(folder)): folder}
    sock = bind(v.host, v.port)
    personas = load_engine(cfg, folders, run_dir)
    try:
        app = create_app(personas, v, Sampling.from_config(cfg.sampling))
        url = f"http://{f'[{v.host}]' if ':' in v.host else v.host}:{v.port}/v1"
        for name in personas.quantized_in_training():
            print(f"note: {name} trained on a 4-bit base; served on a higher-precision one, replies may differ a little")
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        Server(config, f"serving {', '.join(personas.names)} at {url} ({personas.described})").run(sockets=[sock])
    finally:
        personas.close()
    print(f"server stopped after {app.state.stats['requests']} requests", flush=True)
    return {"models": personas.names, "url": url, "engine": str(ServeEngine(v.engine).value), **app.state.stats}


def load_engine(cfg, folders: dict, run_dir):
    """The personas on the engine serve.engine names (use/engine_*.py); all answer through the same front."""
    engine = ServeEngine(cfg.serve.engine)
    if engine is ServeEngine.llamacpp:
        from recipe_runner.use.engine_llamacpp import LlamaCppPersonas

        return LlamaCppPersonas(folders, cfg.paths.cache_dir, cfg.model.name_or_path, cfg.serve, run_dir)
    if engine is ServeEngine.vllm:
        from recipe_runner.use.engine_vllm import VllmPersonas

        return VllmPersonas(folders, cfg.paths.cache_dir, cfg.model.name_or_path, cfg.serve, run_dir)
    from recipe_runner.use.personas import Personas

    return Personas(folders, cfg.paths.cache_dir, named_base=cfg.model.name_or_path, batch=int(cfg.serve.max_concurrent),
                    dtype=cfg.serve.dtype)
