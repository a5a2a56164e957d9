"""The OpenAI wire format: request models (validated strictly enough that bad input is a 400, never a 500),
response and SSE chunk builders, and the OpenAI-style error body."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from workloads.model import ByteTokenizer


class APIError(Exception):
    """Any request the server refuses: rendered as {"error": {...}} with a 4xx (or 5xx) status."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


DEFAULT_MAX_TOKENS = 16
"""Answer length of a request that gives none (OpenAI's completions default), within the server's limits."""
MAX_STOP_STRINGS = 4
"""OpenAI's limit on `stop` sequences per request."""


def whole_number(value: Any) -> Any:
    """An integer field's value as the server takes it: JSON Schema's `integer` admits 1.0 (a number whose fraction
    is zero), so the server does too and the schema it publishes agrees with what it accepts. Booleans, strings and
    1.5 are still refused. Applied before the field's own type and bounds (`_Request._integers`)."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Request(BaseModel):
    # Unknown fields (top_p, presence_penalty, user, ...) are accepted and ignored, as many servers do, so
    # clients that always send them keep working; the fields we honour are typed strictly.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    seed: Annotated[int, Field(ge=-(2 ** 63), le=2 ** 63 - 1)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    """Only one choice per request is supported."""
    ignore_eos: StrictBool = False
    """vLLM's extension: generate exactly max_tokens tokens."""

    @field_validator("temperature", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        return value

    @field_validator("max_tokens", "seed", "n", mode="before")
    @classmethod
    def _integers(cls, value: Any) -> Any:
        return whole_number(value)

    @field_validator("stop", mode="before")  # before the union, so the refusal names the limit
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings that can end a generation: an empty string matches nothing and is dropped, as the
        OpenAI API treats `"stop": ""` as no stop at all."""
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return tuple(stop for stop in stops if stop)

    def requested_max_tokens(self) -> int | None:
        """The answer length asked for; None when the request leaves it to the server."""
        return self.max_tokens

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


TOKENIZER_VOCAB = ByteTokenizer().vocab_size
"""Token ids a prompt given as ids may use: the served model's byte tokenizer's (bytes, BOS, EOS)."""


class CompletionRequest(_Request):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)] | \
        Annotated[list[Annotated[int, Field(ge=0, lt=TOKENIZER_VOCAB)]], Field(min_length=1)]

    @field_validator("prompt", mode="before")
    @classmethod
    def _token_ids(cls, value: Any) -> Any:
        """Token ids as any integer field: 1.0 is 1; a list mixing text and numbers is refused."""
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            return [whole_number(item) for item in value]
        return value

    def prompt_ids(self, tokenizer: ByteTokenizer) -> list[int]:
        if isinstance(self.prompt, str):
            return [tokenizer.bos_id, *tokenizer.encode(self.prompt)]
        if isinstance(self.prompt[0], str):
            return [tokenizer.bos_id, *tokenizer.encode(self.prompt[0])]
        if any(not 0 <= token < tokenizer.vocab_size for token in self.prompt):
            raise APIError(400, f"prompt token ids must lie in [0, {tokenizer.vocab_size})", param="prompt")
        return list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = None

    @field_validator("max_completion_tokens", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        return whole_number(value)

    def requested_max_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return super().requested_max_tokens()

    def prompt_ids(self, tokenizer: ByteTokenizer) -> list[int]:
        # A plain-text chat template: the byte-level model has no special role tokens.
        rendered = "".join(f"<|{message.role}|>\n{message.text()}\n" for message in self.messages)
        return [tokenizer.bos_id, *tokenizer.encode(rendered + "<|assistant|>\n")]


def published_schema(title: str, paths: dict[str, Any], served_name: str, max_tokens: int) -> dict[str, Any]:
    """The server's OpenAPI document: the request models' own JSON Schemas as the request bodies of the two
    generation routes, narrowed to what this deployment accepts (its model name, its max_tokens limit). A request
    the schema admits is answered 200, except one whose prompt does not fit the context (400 with code
    context_length_exceeded: a length in tokens that JSON Schema cannot state)."""
    components: dict[str, Any] = {}
    for path, model in (("/v1/completions", CompletionRequest), ("/v1/chat/completions", ChatCompletionRequest)):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        body["properties"]["model"] = {"type": "string", "enum": [served_name]}
        for limit in ("max_tokens", "max_completion_tokens"):
            if limit in body["properties"]:
                body["properties"][limit] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": max_tokens},
                                                       {"type": "null"}]}
        components[model.__name__] = body
        paths[path]["post"]["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/"
                                                                                   f"{model.__name__}"}}}}
        paths[path]["post"]["responses"]["200"] = {
            "description": "the answer: a JSON body, or with `stream: true` server-sent events ending in [DONE]",
            "content": {"application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}}}}
        paths[path]["post"]["responses"].update({str(status): {"description": why} for status, why in (
            (400, "invalid request, or the prompt does not fit the context (code context_length_exceeded)"),
            (401, "missing or wrong API key"), (404, "unknown model"), (413, "body too large"),
            (415, "not application/json"), (429, "too many requests waiting"), (503, "engine unavailable"))})
    return {"openapi": "3.1.0", "info": {"title": title, "version": "1"}, "paths": paths,
            "components": {"schemas": components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}


def validation_message(error: Exception) -> tuple[str, str | None]:
    """A one-line message and the offending parameter from a pydantic ValidationError."""
    errors = getattr(error, "errors", lambda: [])()
    if not errors:
        return str(error), None
    first = errors[0]
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    return f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid"), param


# -- responses -----------------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens`: prompt tokens served from the prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens, cached_tokens)}


def chat_body(request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
              completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens, cached_tokens)}


def completion_chunk(request_id: str, model: str, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def chat_chunk(request_id: str, model: str, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(request_id: str, model: str, kind: str, prompt_tokens: int, completion_tokens: int,
                cached_tokens: int = 0) -> dict:
    """The final chunk of `stream_options.include_usage`: no choices, only usage."""
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens, cached_tokens)}


class TextChunkEncoder:
    """The SSE event of one streamed piece of text, byte for byte `sse(completion_chunk(...))` (or the chat
    delta), with everything around the text rendered once per stream: only the text is JSON-encoded per token.
    `created` is fixed when the stream starts, as OpenAI's chunks of one stream all carry the same value."""

    _PLACEHOLDER = "\u0000"

    def __init__(self, request_id: str, model: str, chat: bool):
        chunk = (chat_chunk(request_id, model, {"content": self._PLACEHOLDER}, None) if chat
                 else completion_chunk(request_id, model, self._PLACEHOLDER, None))
        self.created = chunk["created"]
        self._prefix, self._suffix = sse(chunk).split(json.dumps(self._PLACEHOLDER).encode())

    def __call__(self, text: str) -> bytes:
        return self._prefix + json.dumps(text).encode() + self._suffix


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; the stream ends with sse("[DONE]")."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
