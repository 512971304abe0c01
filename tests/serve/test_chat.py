"""The OpenAI-compatible routes in-process: a conversation's last question about its last image,
sampling mapped onto the runtime's, the stream's events, and every bad request a 4xx in OpenAI's
error shape. The official client against the real server: test_server.py."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from test_app import AUTH, TOKEN, ct_bytes, make_client, png

pytest.importorskip("fastapi")

from edgevqa.runtime import VQAPipeline  # noqa: E402
from edgevqa.runtime.images import load_image  # noqa: E402

Q = "is there a lesion?"


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(text: str | None = None, *images: bytes, mime: str = "image/png") -> dict:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": data_url(i, mime)}} for i in images]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def reference(bundle):
    return VQAPipeline.from_bundle(bundle)


@pytest.fixture(scope="module")
def client(bundle):
    with make_client(bundle, max_question_chars=100) as c:
        yield c


def chat(c, messages: list, **fields) -> dict:
    r = c.post("/v1/chat/completions", json={"model": "anything", "messages": messages} | fields)
    assert r.status_code == 200, r.text
    return r.json()


def test_answers_equal_v1_ask_and_follow_ups_use_the_last_image(client, reference):
    first, second = png(1), png(2)
    got = chat(client, [{"role": "system", "content": "You are a radiologist."}, user(Q, first)])
    [choice] = got["choices"]
    assert choice["message"] == {"role": "assistant", "content": reference.ask(load_image(first), Q).text}
    assert got["object"] == "chat.completion" and got["id"].startswith("chatcmpl-")
    assert choice["finish_reason"] in ("stop", "length")
    schema = client.get("/openapi.json").json()["paths"]
    assert "messages" in json.dumps(schema["/v1/chat/completions"]["post"]["requestBody"])
    assert "get" in schema["/v1/models"]
    model = client.get("/v1/models").json()
    assert model["object"] == "list" and [m["id"] for m in model["data"]] == [got["model"]]
    assert got["model"] == f"blip-vqa-{reference.precision}"
    # a follow-up: earlier turns are ignored but for the last image; the question is the last text
    follow = "what modality is this?"
    conversation = [
        user(Q, first),
        {"role": "assistant", "content": "yes"},
        user("which side?", second),
        {"role": "assistant", "content": "left"},
        {"role": "user", "content": follow},
    ]
    answer = chat(client, conversation)["choices"][0]["message"]["content"]
    assert answer == reference.ask(load_image(second), follow).text
    # two text parts are one question
    parts = user("what", first)["content"] + [{"type": "text", "text": "modality is this?"}]
    answer = chat(client, [{"role": "user", "content": parts}])["choices"][0]["message"]["content"]
    assert answer == reference.ask(load_image(first), follow).text


def test_a_dicom_data_url(client, reference):
    headless = ct_bytes()[128 + 4 :]  # no preamble: only the media type says DICOM
    question = "what modality is this?"
    expected = reference.ask(load_image(headless, name="x.dcm"), question).text
    answer = chat(client, [user(question, headless, mime="application/dicom")])
    assert answer["choices"][0]["message"]["content"] == expected
    r = client.post("/v1/chat/completions", json={"messages": [user(question, headless)]})
    assert r.status_code == 400 and "not an image PIL can read" in r.json()["error"]["message"]


def test_stream_is_sse_ending_with_done(client, reference):
    r = client.post("/v1/chat/completions", json={"messages": [user(Q, png(3))], "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == reference.ask(load_image(png(3)), Q).text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_sampling_and_max_tokens_map_to_the_runtime(client, reference):
    messages = [user(Q, png(4))]
    greedy = reference.ask(load_image(png(4)), Q).text
    assert chat(client, messages, temperature=0)["choices"][0]["message"]["content"] == greedy
    a = chat(client, messages, temperature=1.5, top_p=0.9, top_k=20, seed=7)["choices"][0]
    b = chat(client, messages, temperature=1.5, top_p=0.9, top_k=20, seed=7)["choices"][0]
    assert a == b  # a seed reproduces a sample
    short = chat(client, messages, max_tokens=1)["choices"][0]
    one = reference.ask(load_image(png(4)), Q, replace(reference.options, max_new_tokens=1))
    assert short["message"]["content"] == one.text
    assert short["finish_reason"] == ("stop" if one.token_ids[-1] in reference.options.eos_ids else "length")


def test_bad_requests_are_4xx_in_openai_shape(bundle):
    ok = [user(Q, png(5))]
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    audio = {"type": "input_audio", "input_audio": {}}
    with make_client(bundle, token=TOKEN, max_question_chars=100) as c:
        cases = [
            ({"messages": ok}, {}, 401, "missing or wrong token"),
            ({"messages": ok}, {"Origin": "http://evil.example"}, 403, "cross-origin"),
            ("not json", AUTH | {"content-type": "text/plain"}, 415, "application/json"),
            ([1, 2], AUTH, 400, "must be an object"),
            ({"messages": []}, AUTH, 400, "non-empty list"),
            ({"messages": [{"role": "user", "content": Q}]}, AUTH, 400, "no image"),
            ({"messages": [*ok, {"role": "assistant", "content": "yes"}]}, AUTH, 400, "last message"),
            (
                {"messages": [{"role": "user", "content": [remote, {"type": "text", "text": Q}]}]},
                AUTH,
                400,
                "data:",
            ),
            ({"messages": [{"role": "user", "content": [audio]}]}, AUTH, 400, "not supported"),
            ({"messages": [user(None, png(5))]}, AUTH, 400, "the question is empty"),
            ({"messages": [user("x" * 101, png(5))]}, AUTH, 400, "limit is 100"),
            ({"messages": [user("\ud800", png(5))]}, AUTH, 400, "not valid text"),
            ({"messages": [user(Q, b"not an image")]}, AUTH, 400, "not an image PIL can read"),
            ({"messages": ok, "n": 2}, AUTH, 400, "n must be 1"),
            ({"messages": ok, "stream": "yes"}, AUTH, 400, "stream must be"),
            ({"messages": ok, "temperature": -1}, AUTH, 400, "temperature must be"),
            ({"messages": ok, "temperature": 1, "top_p": 0}, AUTH, 400, "top_p must be in (0, 1]"),
            ({"messages": ok, "max_tokens": 0}, AUTH, 400, "max_tokens must be an integer >= 1"),
        ]
        for body, headers, status, fragment in cases:
            content = body if isinstance(body, str) else json.dumps(body)
            headers = {"content-type": "application/json"} | headers
            r = c.post("/v1/chat/completions", content=content, headers=headers)
            assert r.status_code == status, (fragment, r.status_code, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == status, error
            assert fragment in error["message"], (fragment, error)
        assert c.get("/v1/models").json()["error"]["type"] == "authentication_error"
        assert c.post("/v1/chat/completions", json={"messages": ok}, headers=AUTH).status_code == 200
