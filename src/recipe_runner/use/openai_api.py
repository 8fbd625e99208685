"""The OpenAI chat-completions wire format: the request model, its checks, errors in OpenAI's
shape, usage and server-sent events. stage=serve (serve.py) speaks it."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from recipe_runner.use.replies import Reply, Sampling


GREEDY_BELOW = 1e-5  # a temperature under this is greedy, as in vLLM: logits / 1e-300 overflow to inf, then NaN
UNSUPPORTED = ("stop", "tools", "tool_choice", "functions", "logprobs", "top_logprobs", "response_format",
               "logit_bias", "frequency_penalty", "presence_penalty")  # refused when set, never silently ignored


class ApiError(Exception):
    """A request's failure as OpenAI reports it: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = (
            status, message, param, code, kind, headers)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def plain(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    # not OpenAI's, but vLLM's and ours. At least 0.01: a smaller one (1e-300 is 0 in float32) divided the
    # logits into inf and sampling failed with a 500 (found by the load test)
    repetition_penalty: float | None = Field(None, ge=0.01)
    seed: int | None = Field(None, ge=-2**63, le=2**64 - 1)  # torch.manual_seed's range: beyond it was a 500
    n: int = Field(1, ge=1, le=1)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: by its Content-Length, or while it is read (chunked)."""
    too_big = ApiError(413, f"request body is larger than serve.max_body_bytes={limit}", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")  # Python's json reads NaN and Infinity; JSON has neither


def parse(body: bytes) -> ChatRequest:
    try:  # RecursionError: "[[[[..." nested deep was a 500 (found by the load test)
        data = json.loads(body, parse_constant=not_json)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    try:  # a lone surrogate ("\\ud800") is valid JSON, but the tokenizer raised on it: a 500 (the load test)
        json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        raise ApiError(400, "request body is not valid Unicode text: a lone surrogate escape (\\ud800-\\udfff)",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    unsupported = [k for k in UNSUPPORTED if data.get(k)]
    if unsupported:
        raise ApiError(400, f"not supported by this server: {', '.join(unsupported)}", param=unsupported[0],
                       code="unsupported_parameter")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:  # 400 in OpenAI's shape, never FastAPI's 422
        where = [".".join(str(x) for x in e["loc"]) for e in exc.errors()]
        problems = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where[:3], exc.errors()))
        raise ApiError(400, f"invalid request: {problems}", param=where[0], code="invalid_value") from None


def request_sampling(req: ChatRequest, prompt_tokens: int, d: Sampling, v) -> Sampling:
    """The request's sampling over cfg.sampling, within serve.max_tokens and serve.max_context_tokens.
    An unset max_tokens shrinks to fit the context; a set one that does not fit is refused."""
    asked = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if asked is not None and asked > v.max_tokens:
        raise ApiError(400, f"{param}={asked} is above this server's limit serve.max_tokens={v.max_tokens}",
                       param=param, code="invalid_value")
    room = v.max_context_tokens - prompt_tokens
    if asked is None:
        asked = max(min(d.max_new_tokens, v.max_tokens, room), 1)
    if asked > room:
        raise ApiError(400, f"the prompt has {prompt_tokens} tokens and max_tokens is {asked}: {prompt_tokens + asked}"
                       f" > serve.max_context_tokens={v.max_context_tokens}", param="messages",
                       code="context_length_exceeded")

    def pick(value, default):
        return default if value is None else value

    temperature = pick(req.temperature, d.temperature)
    return Sampling(0.0 if temperature < GREEDY_BELOW else temperature, pick(req.top_p, d.top_p), asked,
                    pick(req.repetition_penalty, d.repetition_penalty), pick(req.seed, d.seed))


def usage_of(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
