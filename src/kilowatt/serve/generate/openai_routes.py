"""The OpenAI-compatible HTTP API over a ``GenerationEngine``.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream: true`` answers with
server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /metrics`` and
``GET /health``. Every answer carries ``usage``; streams carry it on their last chunk.
Each answer also carries a ``kilowatt`` object: time to first token, inter-token latency and
joules per output token with the method that measured them.

The ``kilowatt-deadline-ms`` header bounds the whole generation. A request that passes it is
stopped and its KV blocks freed; the answer is an error, as OpenAI reports a failed request
(there is no OpenAI finish reason for a deadline, and a cut answer must not pass for a
whole one): HTTP 504 with ``{"error": {...}}``, or, for a stream that already sent tokens,
a last ``data: {"error": {...}}`` event before ``data: [DONE]`` (the ``openai`` client raises
``APIError`` on it).

>>> app = create_generate_app(engine, GenerateMetrics())  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from kilowatt.errors import KilowattError
from kilowatt.serve.app import DEADLINE_HEADER
from kilowatt.serve.errors import InvalidInput, UnknownModel, status_of
from kilowatt.serve.generate.engine import Finished, GenerationEngine, GenerationReport
from kilowatt.serve.generate.metrics import GenerateMetrics
from kilowatt.serve.generate.sampling import SamplingParams

__all__ = ["ChatRequest", "CompletionRequest", "create_generate_app"]


class _Common(BaseModel):
    # Unknown OpenAI fields (user, logit_bias, ...) are accepted and ignored, as clients
    # send them by default; the ones that change the answer are checked below.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stop),
            seed=self.seed,
        )


class CompletionRequest(_Common):
    """``POST /v1/completions``: a text prompt (one string, or a list of one)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # the OpenAI default

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidInput(f"prompt must be one string; got a list of {len(self.prompt)}")
        return self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidInput(f"only text content parts are supported, got {part!r}")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Common):
    """``POST /v1/chat/completions``: a list of role/content messages."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def create_generate_app(engine: GenerationEngine, metrics: GenerateMetrics) -> FastAPI:
    """The ASGI app serving ``engine`` under its runner's name; starts and stops it."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    api = FastAPI(title="kilowatt generate", lifespan=lifespan)
    name = engine.runner.name
    created = int(time.time())

    @api.exception_handler(KilowattError)
    async def _kilowatt_error(_: Request, exc: KilowattError) -> JSONResponse:
        return _error(status_of(exc), str(exc), type(exc).__name__)

    @api.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
        )
        return _error(400, f"invalid request: {problems}", "invalid_request_error")

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": created, "owned_by": "kilowatt"}
        return {"object": "list", "data": [card]}

    @api.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "running": engine.running}

    @api.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        _check_model(body.model, name)
        params = body.sampling(16)
        return await _answer(engine, body, body.text(), params, request, _CompletionShape())

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Any:
        _check_model(body.model, name)
        prompt = engine.encode(_chat_prompt(engine, body.messages))
        room = max(engine.runner.context - len(prompt), 1)
        params = body.sampling(body.max_completion_tokens or room)
        return await _answer(engine, body, prompt, params, request, _ChatShape())

    return api


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(_error_doc(status, message, kind), status_code=status)


def _error_doc(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _check_model(asked: str, served: str) -> None:
    if asked != served:
        raise UnknownModel(f"model {asked!r} is not served here; this server serves {served!r}")


def _chat_prompt(engine: GenerationEngine, messages: list[ChatMessage]) -> str:
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    tokenizer = engine.runner.tokenizer
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    # A model without a chat template sees a plain transcript ending on the assistant's turn.
    lines = [f"{turn['role']}: {turn['content']}" for turn in turns]
    return "\n".join([*lines, "assistant:"])


def _deadline(request: Request, engine: GenerationEngine) -> float | None:
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        return engine.clock() + float(raw) / 1000.0
    except ValueError:
        raise InvalidInput(
            f"{DEADLINE_HEADER} must be a number of milliseconds, got {raw!r}"
        ) from None


async def _answer(
    engine: GenerationEngine,
    body: _Common,
    prompt: str | list[int],
    params: SamplingParams,
    request: Request,
    shape: _Shape,
) -> Any:
    stream = await engine.submit(prompt, params, _deadline(request, engine))
    answer_id = f"{shape.prefix}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not body.stream:
        finished = await stream.collect()
        doc = shape.whole(finished, engine.runner.name)
        return {"id": answer_id, "created": created, **doc}

    async def events() -> AsyncIterator[bytes]:
        first = True
        try:
            async for item in stream:  # a client that leaves cancels this, which aborts
                if isinstance(item, Finished):
                    doc = shape.last_chunk(item, engine.runner.name)
                elif item.text or first:
                    doc = shape.chunk(item.text, first, engine.runner.name)
                    first = False
                else:
                    continue
                yield _sse({"id": answer_id, "created": created, **doc})
        except KilowattError as exc:  # the status line is gone: the error is the last event
            yield _sse(_error_doc(status_of(exc), str(exc), type(exc).__name__))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _accounts(report: GenerationReport) -> dict[str, Any]:
    """``usage`` (OpenAI's token counts) and ``kilowatt`` (latency and energy)."""
    usage = {
        "prompt_tokens": report.prompt_tokens,
        "completion_tokens": report.completion_tokens,
        "total_tokens": report.prompt_tokens + report.completion_tokens,
    }
    return {"usage": usage, "kilowatt": _measured(report)}


def _measured(report: GenerationReport) -> dict[str, Any]:
    gaps = report.inter_token_s
    return {
        "time_to_first_token_s": report.ttft_s,
        "inter_token_latency_s": statistics.mean(gaps) if gaps else None,
        "queue_s": report.queue_s,
        "energy_j": report.energy_j,
        "energy_per_output_token_j": report.energy_per_token_j,
        "energy_method": report.energy_method,
        "preemptions": report.preemptions,
    }


class _Shape:
    prefix = ""

    def whole(self, finished: Finished, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, text: str, first: bool, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def last_chunk(self, finished: Finished, model: str) -> dict[str, Any]:
        raise NotImplementedError


class _CompletionShape(_Shape):
    prefix = "cmpl"

    def whole(self, finished: Finished, model: str) -> dict[str, Any]:
        choice = {"index": 0, "text": finished.text, "logprobs": None,
                  "finish_reason": finished.finish_reason}  # fmt: skip
        return self._doc(model, choice, finished.report)

    def chunk(self, text: str, first: bool, model: str) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        return {"object": "text_completion", "model": model, "choices": [choice]}

    def last_chunk(self, finished: Finished, model: str) -> dict[str, Any]:
        choice = {"index": 0, "text": "", "logprobs": None,
                  "finish_reason": finished.finish_reason}  # fmt: skip
        return self._doc(model, choice, finished.report)

    @staticmethod
    def _doc(model: str, choice: dict[str, Any], report: GenerationReport) -> dict[str, Any]:
        return {"object": "text_completion", "model": model, "choices": [choice],
                **_accounts(report)}  # fmt: skip


class _ChatShape(_Shape):
    prefix = "chatcmpl"

    def whole(self, finished: Finished, model: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": finished.text}
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": finished.finish_reason}  # fmt: skip
        return {"object": "chat.completion", "model": model, "choices": [choice],
                **_accounts(finished.report)}  # fmt: skip

    def chunk(self, text: str, first: bool, model: str) -> dict[str, Any]:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return {"object": "chat.completion.chunk", "model": model, "choices": [choice]}

    def last_chunk(self, finished: Finished, model: str) -> dict[str, Any]:
        choice = {"index": 0, "delta": {}, "logprobs": None,
                  "finish_reason": finished.finish_reason}  # fmt: skip
        return {"object": "chat.completion.chunk", "model": model, "choices": [choice],
                **_accounts(finished.report)}  # fmt: skip
