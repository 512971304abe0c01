"""What a request to /v1/ask or /v1/preview carries, parsed and checked; the OpenAPI text for it.

Two encodings of the same fields: multipart (an ``image`` file, ``question``, optional ``window``
"C,W" and ``frame``) and JSON (``image_base64``, ``question``, optional ``filename``, ``window`` as
"C,W" or [C, W], ``frame``). Everything a client can get wrong is an :class:`ApiError` (or an
InputError for a bad window/frame) that the app renders as ``{"error": "..."}``: JSON nested too
deeply for the parser and strings that are not text (a lone surrogate such as ``"\\ud800"``)
included.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from edgevqa.runtime.dicom import DicomOptions, parse_window
from edgevqa.runtime.tokenizer import is_text


class ApiError(Exception):
    """A refusal with its HTTP status (and headers, e.g. Retry-After); rendered as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclass
class Upload:
    data: bytes
    name: str  # how messages call it: the uploaded file's base name, or "<upload>"
    question: str | None
    dicom: DicomOptions


async def read_upload(request: Request, max_question_chars: int, need_question: bool) -> Upload:
    """The image bytes, question and DICOM options of a multipart or JSON request.

    Raises:
        ApiError: 415 for another content type, 400 for a missing or malformed field.
        InputError: a bad window or frame (also a 400).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        fields = await _multipart(request)
    elif ctype == "application/json":
        fields = await _json_fields(request)
    else:
        raise ApiError(
            415,
            "send multipart/form-data (an 'image' file and a 'question' field) or application/json "
            '({"image_base64": ..., "question": ...})',
        )
    data, name = fields["data"], fields["name"]
    if not data:
        raise ApiError(400, "the image is empty")
    question = question_text(fields.get("question"), max_question_chars) if need_question else None
    window = fields.get("window")
    if isinstance(window, list) and len(window) == 2:
        window = ",".join(str(x) for x in window)
    if window is not None and (not isinstance(window, str) or len(window) > 64 or not is_text(window)):
        raise ApiError(400, 'window must be "CENTRE,WIDTH" or [centre, width]')
    frame = _frame(fields.get("frame"))
    return Upload(data, name, question, DicomOptions(parse_window(window) if window else None, frame))


async def _multipart(request: Request) -> dict:
    async with request.form(max_files=1, max_fields=8) as form:  # closes the spooled upload
        file = form.get("image")
        if not isinstance(file, UploadFile):
            raise ApiError(400, "multipart: send the image as a file field named 'image'")
        data = await file.read()
        text = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
    fields = {k: text[k] for k in ("question", "window", "frame") if k in text}
    return {"data": data, "name": _display_name(file.filename)} | fields


async def read_json(request: Request) -> Any:
    """The request's body parsed as JSON.

    Raises:
        ApiError: 400 for a body that is not JSON, or is nested too deeply to parse (json's
            parser recurses, so ``[[[[...`` 100000 deep raises RecursionError).
    """
    data = await request.body()
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None


def client_of(request: Request) -> str:
    """Who is asking, as far as the image-encoding cache goes: the peer's address, plus the
    page's per-tab ``X-Edgevqa-Session`` id when it sends one (see Engine.serving)."""
    address = request.client.host if request.client else ""
    return f"{address} {request.headers.get('x-edgevqa-session', '')[:64]}"


async def _json_fields(request: Request) -> dict:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, 'the JSON body must be an object: {"image_base64": ..., "question": ...}')
    encoded = body.get("image_base64")
    if not isinstance(encoded, str) or not encoded:
        raise ApiError(400, "image_base64 is missing: the image file's bytes, base64-encoded")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_base64 is not valid base64") from None
    name = body.get("filename")
    return {"data": data, "name": _display_name(name if isinstance(name, str) else None)} | {
        k: body[k] for k in ("question", "window", "frame") if body.get(k) is not None
    }


def _display_name(filename: str | None) -> str:
    """The uploaded file's base name (a ``.dcm`` name marks DICOM without a preamble), bounded."""
    name = Path(filename or "").name[:120]
    return name if name and name.isprintable() else "<upload>"


def question_text(value: Any, limit: int) -> str:
    """The question, stripped; 400 when it is missing, empty, too long or not text."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "the question is empty")
    if not is_text(value):
        raise ApiError(400, "the question is not valid text (it holds an unpaired UTF-16 surrogate)")
    if len(value) > limit:
        raise ApiError(400, f"the question is {len(value)} characters long; the limit is {limit}")
    return value.strip()


def _frame(value: Any) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"frame must be a whole number from 1, got {value!r}") from None


# ---------------------------------------------------------------- OpenAPI request bodies


def _object(required: list[str], fields: dict[str, Any]) -> dict:
    return {"type": "object", "required": required, "properties": fields}


_DICOM_FIELDS = {
    "window": {"type": "string", "description": "DICOM window CENTRE,WIDTH (default: the file's)"},
    "frame": {"type": "integer", "minimum": 1, "description": "DICOM frame, from 1 (default: the middle)"},
}
_MULTIPART = {"image": {"type": "string", "format": "binary", "description": "PNG, JPEG, DICOM, ..."}}
_JSON = {
    "image_base64": {"type": "string", "description": "the image file's bytes, base64"},
    "filename": {"type": "string", "description": "optional; a .dcm name marks DICOM without preamble"},
}
_Q = {"question": {"type": "string", "description": "at most --max-question-chars characters"}}
ASK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _object(["image", "question"], _MULTIPART | _Q | _DICOM_FIELDS)
            },
            "application/json": {"schema": _object(["image_base64", "question"], _JSON | _Q | _DICOM_FIELDS)},
        },
    }
}
PREVIEW_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _object(["image"], _MULTIPART | _DICOM_FIELDS)},
            "application/json": {"schema": _object(["image_base64"], _JSON | _DICOM_FIELDS)},
        },
    }
}
