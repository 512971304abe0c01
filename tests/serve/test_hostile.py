"""The app in-process against hostile or careless clients: other sites' pages, caches, the CSP,
absurd JSON, strings that are not text, a bug (logged once), one client probing another's
images, and a non-loopback bind without a token. Slow clients and logs: test_server.py."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from test_app import AUTH, TOKEN, make_client, png, scrape
from test_cli import assert_user_error

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from edgevqa.errors import InputError  # noqa: E402
from edgevqa.runtime import VQAPipeline  # noqa: E402
from edgevqa.serve.app import PAGE, PAGE_HEADERS, ServeSettings, build_app  # noqa: E402

Q = "is there a lesion?"


def ask(c: TestClient, data: bytes, headers: dict | None = None) -> dict:
    r = c.post("/v1/ask", files={"image": ("x.png", data)}, data={"question": Q}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_requests_from_other_sites_are_refused(bundle):
    with make_client(bundle, token=TOKEN) as c:
        image = {"files": {"image": ("x.png", png(1))}, "data": {"question": Q}}
        for origin in (
            "http://evil.example",
            "null",
            "http://testserver:8080",
            "https://testserver",
            "nonsense",
        ):
            for method, path, kw in (
                ("post", "/v1/ask", image),
                ("get", "/v1/model", {}),
                ("get", "/healthz", {}),
            ):
                r = getattr(c, method)(path, headers=AUTH | {"Origin": origin}, **kw)
                assert r.status_code == 403, (origin, path, r.text)
                assert r.json() == {
                    "error": "cross-origin request refused: only this server's own page may call it"
                }
        assert c.post("/v1/ask", headers=AUTH | {"Origin": "http://testserver"}, **image).status_code == 200
        assert (
            c.post("/v1/ask", headers=AUTH | {"Origin": "HTTP://TestServer:80"}, **image).status_code == 200
        )
        assert c.post("/v1/ask", headers=AUTH, **image).status_code == 200  # no Origin: curl, scripts


def test_every_response_is_no_store(bundle):
    with make_client(bundle, token=TOKEN, max_body_bytes=10_000) as c:
        image = {"files": {"image": ("x.png", png(2))}, "data": {"question": Q}}
        responses = [
            c.get("/"),
            c.get("/healthz"),
            c.get("/v1/model", headers=AUTH),
            c.get("/v1/models", headers=AUTH),
            c.get("/metrics", headers=AUTH),
            c.get("/openapi.json", headers=AUTH),
            c.post("/v1/ask", headers=AUTH, **image),
            c.post("/v1/preview", headers=AUTH, files={"image": ("x.png", png(2))}),
            c.post("/v1/ask", headers=AUTH, json={"question": Q}),  # 400
            c.post("/v1/ask", **image),  # 401 from the middleware
            c.post("/v1/ask", headers=AUTH, content=b"x" * 20_000),  # 413
            c.get("/nothing", headers=AUTH),  # 404
        ]
    for r in responses:
        assert r.headers["cache-control"] == "no-store", (r.request.url, r.status_code)
        assert r.headers["x-content-type-options"] == "nosniff", r.request.url


def test_page_csp_allows_its_inline_code_by_hash_only():
    csp = PAGE_HEADERS["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for tag in ("script", "style"):
        [block] = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}';" in csp
    assert "style=" not in PAGE  # a style attribute would need 'unsafe-inline'


def test_absurd_json_and_non_text_strings_are_400(bundle):
    b64 = base64.b64encode(png(3)).decode()
    deep = b"[" * 100_000
    cases = [
        ("/v1/ask", deep, "nested too deeply"),
        (
            "/v1/ask",
            b'{"image_base64": "' + b64.encode() + b'", "question": ' + deep + b"}",
            "nested too deeply",
        ),
        ("/v1/chat/completions", deep, "nested too deeply"),
        (
            "/v1/ask",
            json.dumps({"image_base64": b64, "question": "\ud800 lesion?"}).encode(),
            "not valid text",
        ),
        (
            "/v1/ask",
            json.dumps({"image_base64": b64, "question": Q, "window": "\udfff"}).encode(),
            "window must",
        ),
        (
            "/v1/ask",
            json.dumps({"image_base64": b64, "question": Q, "frame": "\ud800"}).encode(),
            "frame must",
        ),
        ("/v1/preview", json.dumps({"image_base64": b64, "window": "4" * 100_000}).encode(), "window must"),
    ]
    with make_client(bundle) as c:
        for path, body, fragment in cases:
            r = c.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, fragment, r.status_code, r.text[:200])
            error = r.json()["error"]
            assert fragment in (error if isinstance(error, str) else error["message"]), error
            assert len(r.content) < 1000
        assert ask(c, png(3))["answer"]  # and the server goes on


def test_a_bug_is_logged_once_and_never_escapes_the_app(bundle, monkeypatch, caplog):
    app = build_app(VQAPipeline.from_bundle(bundle), ServeSettings(allowed_hosts=("testserver",)))
    # raise_server_exceptions=True: an exception raised out of the app (which uvicorn would log a
    # second time, "Exception in ASGI application") fails this test
    with TestClient(app, raise_server_exceptions=True) as c:
        pipe = c.app.state.engine.pipeline

        def broken(*args, **kwargs):
            raise RuntimeError("secret internal detail /home/user/bundle")

        monkeypatch.setattr(pipe, "ask", broken)
        caplog.set_level(logging.INFO)
        r = c.post("/v1/ask", files={"image": ("x.png", png(7))}, data={"question": Q})
        assert r.status_code == 500 and r.json() == {
            "error": "internal error (details are in the server log)"
        }
        errors = [x for x in caplog.records if x.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None, errors
        assert "secret" not in r.text and "Traceback" not in r.text
        metrics = scrape(c)
        assert metrics["edgevqa_errors_total", ("kind", "server"), ("route", "/v1/ask")] == 1


def test_an_image_is_cached_only_for_the_client_that_sent_it(bundle):
    with make_client(bundle) as alice:
        bob = TestClient(alice.app, client=("192.0.2.7", 40000), raise_server_exceptions=False)
        pipe = alice.app.state.engine.pipeline
        passes = []
        encode = pipe.model.encode_image
        pipe.model.encode_image = lambda *a, **kw: passes.append(1) or encode(*a, **kw)
        image = png(4)
        assert ask(alice, image)["image_cached"] is False and len(passes) == 1
        assert ask(alice, image)["image_cached"] is True and len(passes) == 1  # her own follow-up
        # bob sends the same image: a vision pass of his own, nothing says alice sent it
        assert ask(bob, image)["image_cached"] is False and len(passes) == 2
        assert ask(bob, image)["image_cached"] is True and len(passes) == 2
        assert ask(alice, image)["image_cached"] is False and len(passes) == 3
        # the page: each tab is a client of its own, even from one address
        tab = {"X-Edgevqa-Session": "0123456789abcdef"}
        assert ask(alice, image, tab)["image_cached"] is False and len(passes) == 4
        assert ask(alice, image, tab)["image_cached"] is True and len(passes) == 4
        m = scrape(alice)
        assert m["edgevqa_image_encodings_total", ("cache", "miss")] == 4
        assert m["edgevqa_image_encodings_total", ("cache", "hit")] == 3


def test_non_loopback_without_token_is_refused(bundle):
    with pytest.raises(InputError, match="--insecure-no-token"):
        ServeSettings(host="0.0.0.0")
    assert ServeSettings(host="0.0.0.0", insecure_no_token=True).hosts() == ("*",)
    assert ServeSettings(host="0.0.0.0", token=TOKEN).token == TOKEN
    assert ServeSettings(host="localhost").token is None  # loopback needs none
    env = {k: v for k, v in os.environ.items() if k != "EDGEVQA_TOKEN"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgevqa",
            "serve",
            "--model",
            str(bundle),
            "--host",
            "0.0.0.0",
            "--port",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert_user_error(p, "refusing to serve on 0.0.0.0 without a token", "--insecure-no-token")


def test_at_most_max_uploads_bodies_are_received_at_once():
    """Bodies are read into memory before admission: beyond the cap a request with a body gets
    503 before a byte is read; bodiless requests and the next upload after one completes pass."""
    import asyncio

    from edgevqa.serve.middleware import BodyLimit

    async def app(scope, receive, send):  # reads its whole body, then answers 200
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = BodyLimit(app, limit=1000, timeout_s=5, max_reading=1, retry_after_s=3)

    def scope(length):
        headers = [(b"content-length", str(length).encode())] if length else []
        return {"type": "http", "path": "/v1/ask", "method": "POST", "headers": headers}

    async def request(length, body_chunks):
        sent = []
        chunks = iter(body_chunks)

        async def receive():
            gate = next(chunks, None)
            if gate is None:  # no body
                return {"type": "http.request", "body": b"", "more_body": False}
            await gate.wait()
            return {"type": "http.request", "body": b"x", "more_body": gate is not body_chunks[-1]}

        async def send(message):
            sent.append(message)

        await limit(scope(length), receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start"), sent

    async def main():
        first_gates = [asyncio.Event(), asyncio.Event()]
        first = asyncio.create_task(request(2, first_gates))
        await asyncio.sleep(0.05)
        first_gates[0].set()  # the first upload is half in
        await asyncio.sleep(0.05)
        # its body never comes: were it read, this would wait until the deadline
        refused = await asyncio.wait_for(request(1, [asyncio.Event()]), 2)
        bodiless = await request(0, [])
        first_gates[1].set()
        done = await first
        opened = asyncio.Event()
        opened.set()
        after = await request(1, [opened])
        return refused, bodiless, done, after

    refused, bodiless, done, after = asyncio.run(main())
    assert refused[0] == 503
    assert (b"retry-after", b"3") in refused[1][0]["headers"]
    assert (bodiless[0], done[0], after[0]) == (200, 200, 200)
    assert limit.reading == 0
