"""OpenAI-compatible chat completions on the same pipeline, as llama-server and ollama offer them.

``POST /v1/chat/completions`` takes OpenAI's request: ``messages`` whose user ``content`` is a
string or a list of parts, ``{"type": "text", "text": ...}`` and ``{"type": "image_url",
"image_url": {"url": "data:image/png;base64,..."}}``. The model answers one question about one
image, so of a conversation the server uses the text of the last message (which must be the
user's) as the question and the last image sent in a user message as the image; a system prompt
and earlier questions and answers are ignored. Images come only as ``data:`` URLs (the server
fetches nothing); ``data:application/dicom;base64,...`` marks a DICOM file without its preamble.

Sampling: without ``temperature``, or with 0, the answer is greedy, the one ``/v1/ask`` gives; above
0 one answer is sampled (runtime/decoding.py) with ``top_p``, ``top_k`` (llama-server's extension)
and ``seed``. ``max_tokens`` (or ``max_completion_tokens``) caps the answer below the bundle's own
limit. ``n`` must be 1. Every other field (``model``, ``stop``, penalties, ``logprobs``, tools,
``response_format``, ``stream_options``, ``user``, ...) is ignored, and no ``usage`` is reported.
With ``"stream": true`` the answer, once complete, goes out as server-sent events: a role chunk,
one content chunk, a finish chunk and ``data: [DONE]``. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``. ``GET /v1/models`` lists the one model served.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from edgevqa.runtime.decoding import SamplingOptions
from edgevqa.runtime.dicom import DicomOptions
from edgevqa.serve.engine import Engine
from edgevqa.serve.metrics import Metrics
from edgevqa.serve.middleware import OPENAI_ROUTES
from edgevqa.serve.upload import ApiError, Upload, client_of, question_text, read_json
from edgevqa.serve.work import admitted, answer

if TYPE_CHECKING:
    from edgevqa.serve.app import ServeSettings

ROUTES = OPENAI_ROUTES
DICOM_TYPES = ("application/dicom", "application/dicom+file")
_FIELDS = {
    "messages": {
        "type": "array",
        "items": {"type": "object"},
        "description": "the last message's text is the question; the last image_url (a data: URL) the image",
    },
    "stream": {"type": "boolean"},
    "temperature": {"type": "number", "minimum": 0, "description": "absent or 0: greedy"},
    "top_p": {"type": "number"},
    "top_k": {"type": "integer"},
    "seed": {"type": "integer"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
}
CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["messages"], "properties": _FIELDS}
            }
        },
    }
}


@dataclass(frozen=True)
class ChatRequest:
    upload: Upload  # the last image and the last message's text
    stream: bool
    max_tokens: int | None  # None: the bundle's limit
    sampling: SamplingOptions | None  # None: greedy
    seed: int | None


def parse_chat(body: Any, max_question_chars: int) -> ChatRequest:
    """The image, question and options of an OpenAI chat request.

    Raises:
        ApiError: 400 for anything malformed or missing, naming the field.
    """
    if not isinstance(body, dict):
        raise ApiError(400, 'the JSON body must be an object: {"messages": [...]}')
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects")
    if messages[-1].get("role") != "user":
        raise ApiError(400, "the last message must be the user's question")
    user = [_parts(m.get("content")) for m in messages if m.get("role") == "user"]
    texts = [p.get("text") for p in user[-1] if p.get("type") == "text"]
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "a text content part needs a string 'text'")
    question = question_text(" ".join(texts), max_question_chars)
    urls = [_url(p) for parts in user for p in parts if p.get("type") == "image_url"]
    if not urls:
        raise ApiError(400, "no image: send one as an image_url content part with a data: URL")
    data, name = data_url(urls[-1])
    if body.get("n", 1) not in (1, None):
        raise ApiError(400, "n must be 1: the server gives one answer per request")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false")
    max_tokens = _number(body, "max_completion_tokens", int, 1) or _number(body, "max_tokens", int, 1)
    return ChatRequest(
        Upload(data, name, question, DicomOptions()),
        stream,
        max_tokens,
        _sampling(body),
        _number(body, "seed", int, 0),
    )


def _parts(content: Any) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        for p in content:
            if p.get("type") not in ("text", "image_url"):
                raise ApiError(
                    400, f"content part type {str(p.get('type'))[:40]!r} is not supported (text, image_url)"
                )
        return content
    raise ApiError(400, "a message's content must be a string or a list of content parts")


def _url(part: dict) -> Any:
    image = part.get("image_url")
    return image.get("url") if isinstance(image, dict) else image


def data_url(url: Any) -> tuple[bytes, str]:
    """The bytes of a base64 ``data:`` URL, and the name load_image gets (``.dcm`` for DICOM)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(
            400, "image_url must be a data: URL (data:image/png;base64,...); the server fetches nothing"
        )
    head, comma, payload = url[5:].partition(",")
    if not comma or not head.lower().endswith(";base64"):
        raise ApiError(400, "image_url must be a base64 data: URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_url holds invalid base64") from None
    if not data:
        raise ApiError(400, "the image is empty")
    mime = head[: -len(";base64")].strip().lower()
    return data, "image.dcm" if mime in DICOM_TYPES else "<upload>"


def _number(body: dict, key: str, kind: type, least: float) -> Any:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < least:
        raise ApiError(400, f"{key} must be {'an integer' if kind is int else 'a number'} >= {least:g}")
    return value


def _sampling(body: dict) -> SamplingOptions | None:
    temperature = _number(body, "temperature", float, 0)
    if not temperature:
        return None
    given = {"top_p": _number(body, "top_p", float, 0), "top_k": _number(body, "top_k", int, 0)}
    try:
        return SamplingOptions(temperature=temperature, **{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        raise ApiError(400, str(e)) from None


# ---------------------------------------------------------------------------------------------


def completion(cid: str, model: str, created: int, text: str, finish: str) -> dict:
    """The non-streaming answer: one choice, the assistant's message."""
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": [choice]}


def events(cid: str, model: str, created: int, text: str, finish: str) -> list[str]:
    """The streamed answer as server-sent events, ending with ``data: [DONE]``."""
    deltas = [({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, finish)]
    out = []
    for delta, reason in deltas:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        out.append(f"data: {json.dumps(chunk | {'choices': [choice]})}\n\n")
    return [*out, "data: [DONE]\n\n"]


def add_routes(
    app: FastAPI, engine: Engine, metrics: Metrics, settings: ServeSettings, model_id: str
) -> None:
    """``GET /v1/models`` and ``POST /v1/chat/completions`` on ``app``."""
    started = int(time.time())

    @app.get("/v1/models", summary="OpenAI-compatible: the model served")
    async def models() -> dict:
        card = {"id": model_id, "object": "model", "created": started, "owned_by": "edgevqa"}
        return {"object": "list", "data": [card]}

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI-compatible: answer the last question about the last image",
        openapi_extra=CHAT_BODY,
    )
    async def chat(request: Request) -> Any:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "send application/json: an OpenAI chat completion request")
        req = parse_chat(await read_json(request), settings.max_question_chars)
        pipe, client = engine.pipeline, client_of(request)
        options = pipe.options
        if req.max_tokens is not None:
            options = replace(options, max_new_tokens=min(req.max_tokens, options.max_new_tokens))
        with admitted(engine, settings):
            ans = await engine.run(
                lambda: answer(engine, settings, req.upload, client, options, req.sampling, req.seed)
            )
        if req.sampling is None:  # a sample does not say whether its image was cached
            metrics.image_cache(ans.image_cached)
        finish = "stop" if ans.token_ids and ans.token_ids[-1] in options.eos_ids else "length"
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if req.stream:
            sse = events(cid, model_id, created, ans.text, finish)
            return StreamingResponse(iter(sse), media_type="text/event-stream")
        return completion(cid, model_id, created, ans.text, finish)
