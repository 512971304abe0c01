"""The FastAPI app in-process (TestClient): answers equal the pipeline's, every bad input is a
4xx JSON error, the token and host checks, the bounded queue, metrics and the schema."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_user_error

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from edgevqa.runtime import VQAPipeline  # noqa: E402
from edgevqa.runtime.images import load_image  # noqa: E402
from edgevqa.serve.app import ServeSettings, build_app  # noqa: E402

TOKEN = "correct-horse-battery"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Q = "is there a lesion?"


def png(seed: int, size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def ct_bytes() -> bytes:
    pydicom = pytest.importorskip("pydicom")
    return (Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm").read_bytes()


@pytest.fixture(scope="module")
def reference(bundle):
    """A second pipeline, outside the app, whose answers the server must reproduce."""
    return VQAPipeline.from_bundle(bundle)


def make_client(bundle, **settings) -> TestClient:
    pipe = VQAPipeline.from_bundle(bundle)
    kw = {"allowed_hosts": ("testserver",)} | settings
    return TestClient(build_app(pipe, ServeSettings(**kw)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(bundle):
    with make_client(bundle, max_queue=3) as c:
        yield c


def ask_multipart(c: TestClient, data: bytes, question: str = Q, name: str = "x.png", **fields) -> dict:
    r = c.post(
        "/v1/ask",
        files={"image": (name, data, "application/octet-stream")},
        data={"question": question} | fields,
    )
    return {"status": r.status_code, **r.json()}


# ---------------------------------------------------------------- answers


def test_multipart_and_json_answer_like_the_pipeline(client, reference):
    img = png(1)
    first = ask_multipart(client, img)
    expected = reference.ask(load_image(img), Q)
    assert (first["status"], first["answer"], first["image_cached"]) == (200, expected.text, False)
    assert first["question"] == Q and first["precision"] == reference.precision and first["latency_ms"] > 0
    assert {"decode_ms", "queue_ms", "preprocess_ms", "vision_ms", "total_ms"} <= set(first["timings_ms"])
    again = client.post(
        "/v1/ask", json={"image_base64": base64.b64encode(img).decode(), "question": Q}
    ).json()
    assert (
        again["answer"] == expected.text and again["image_cached"] is True
    )  # the same pixels: no vision pass


def test_dicom_answer_and_preview(client, reference):
    from edgevqa.runtime.dicom import DicomOptions

    data = ct_bytes()
    got = ask_multipart(client, data, "what modality is this?", name="ct.dcm", window="40,400")
    expected = reference.ask(load_image(data, dicom=DicomOptions(window=(40, 400))), "what modality is this?")
    assert (got["status"], got["answer"]) == (200, expected.text)
    r = client.post("/v1/preview", files={"image": ("ct.dcm", data)}, data={"window": "40,400"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-image-size"] == "128x128" and r.headers["cache-control"] == "no-store"
    preview = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(preview, np.asarray(load_image(data, dicom=DicomOptions(window=(40, 400)))))
    assert preview[33, 37].tolist() == [128, 128, 128]  # 40 HU at the window's centre (test_dicom.py)
    r = client.post("/v1/preview", json={"image_base64": base64.b64encode(data).decode()})
    assert np.asarray(Image.open(io.BytesIO(r.content)))[33, 37].tolist() == [116, 116, 116]  # min-max
    r = client.post(
        "/v1/preview", json={"image_base64": base64.b64encode(data).decode(), "window": [40, 400]}
    )
    assert np.asarray(Image.open(io.BytesIO(r.content)))[33, 37].tolist() == [128, 128, 128]


# ---------------------------------------------------------------- bad input


def test_every_bad_input_is_a_json_4xx(client):
    b64 = base64.b64encode(png(2)).decode()
    half = ct_bytes()[: len(ct_bytes()) // 2]
    cases = [
        (
            client.post("/v1/ask", content=b"hello", headers={"content-type": "text/plain"}),
            415,
            "send multipart",
        ),
        (
            client.post("/v1/ask", content=b"{", headers={"content-type": "application/json"}),
            400,
            "not valid JSON",
        ),
        (client.post("/v1/ask", json=[1]), 400, "must be an object"),
        (client.post("/v1/ask", json={"question": Q}), 400, "image_base64 is missing"),
        (client.post("/v1/ask", json={"image_base64": "***", "question": Q}), 400, "not valid base64"),
        (client.post("/v1/ask", json={"image_base64": b64, "question": " "}), 400, "the question is empty"),
        (client.post("/v1/ask", json={"image_base64": b64, "question": "x" * 501}), 400, "limit is 500"),
        (
            client.post("/v1/ask", json={"image_base64": b64, "question": Q, "frame": "two"}),
            400,
            "frame must be",
        ),
        (
            client.post("/v1/ask", json={"image_base64": b64, "question": Q, "window": "40"}),
            400,
            "--window takes",
        ),
        (
            client.post("/v1/ask", data={"question": Q}, files={"other": ("a", b"x")}),
            400,
            "file field named 'image'",
        ),
        (
            client.post("/v1/ask", json={"image_base64": base64.b64encode(b"text").decode(), "question": Q}),
            400,
            "not an image PIL can read",
        ),
        (
            client.post("/v1/ask", files={"image": ("cut.dcm", half)}, data={"question": Q}),
            400,
            "cut.dcm is truncated",
        ),
        (
            client.post("/v1/ask", files={"image": ("e.png", b"")}, data={"question": Q}),
            400,
            "the image is empty",
        ),
        (client.get("/v1/nothing"), 404, "not found"),
        (client.get("/v1/ask"), 405, "method not allowed"),
    ]
    for r, status, fragment in cases:
        assert r.status_code == status, (fragment, r.status_code, r.text)
        body = r.json()
        assert list(body) == ["error"] and fragment in body["error"], (fragment, body)


def test_body_size_limit_by_header_and_while_streaming(bundle):
    with make_client(bundle, max_body_bytes=10_000) as c:
        big = {"image_base64": base64.b64encode(png(3, size=200)).decode(), "question": Q}
        r = c.post("/v1/ask", content=json.dumps(big), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json() == {
            "error": "the request body is larger than the 0.0 MB limit"
        }

        def chunks():  # no Content-Length: the limit applies while the body arrives
            for _ in range(20):
                yield b"x" * 1000

        r = c.post("/v1/ask", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        assert c.post("/v1/ask", files={"image": ("x.png", png(4))}, data={"question": Q}).status_code == 200


def test_pixel_limit(bundle):
    with make_client(bundle, max_pixels=1000) as c:
        r = c.post("/v1/ask", files={"image": ("x.png", png(5, size=48))}, data={"question": Q})
        assert (
            r.status_code == 400
            and r.json()["error"]
            == "x.png is 48x48 = 2304 px, larger than the 1000 px limit (downscale it first)"
        )


def test_token_and_host_checks(bundle):
    with make_client(bundle, token=TOKEN) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/").status_code == 200  # the page holds no data; it asks for the token
        for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": f"Basic {TOKEN}"}):
            for method, path in (
                ("get", "/v1/model"),
                ("get", "/metrics"),
                ("get", "/openapi.json"),
                ("post", "/v1/ask"),
            ):
                r = getattr(c, method)(path, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers)
                assert r.json() == {"error": "missing or wrong token: send Authorization: Bearer <token>"}
        r = c.post("/v1/ask", files={"image": ("x.png", png(6))}, data={"question": Q}, headers=AUTH)
        assert r.status_code == 200
        assert c.get("/v1/model", headers=AUTH).status_code == 200
        r = c.get("/healthz", headers={"host": "evil.example"})
        assert r.status_code == 400 and r.json() == {"error": "this Host header is not served here"}
    default = ServeSettings()
    assert set(default.hosts()) == {"127.0.0.1", "localhost", "::1"}
    assert ServeSettings(host="0.0.0.0", token=TOKEN).hosts() == ("*",)


def test_a_bug_is_a_500_without_traceback(bundle, monkeypatch):
    with make_client(bundle) as c:
        pipe = c.app.state.engine.pipeline

        def broken(*args, **kwargs):
            raise RuntimeError("secret internal detail /home/user/bundle")

        monkeypatch.setattr(pipe, "ask", broken)
        r = c.post("/v1/ask", files={"image": ("x.png", png(7))}, data={"question": Q})
        assert r.status_code == 500 and r.json() == {
            "error": "internal error (details are in the server log)"
        }
        assert "secret" not in r.text and "Traceback" not in r.text


# ---------------------------------------------------------------- queue, metrics, schema


def test_full_queue_answers_503_with_retry_after(bundle, reference):
    with make_client(bundle, max_queue=3, retry_after_s=2) as c:
        engine = c.app.state.engine
        results: list = [None] * 3

        def send(i: int) -> None:
            results[i] = c.post("/v1/ask", files={"image": ("x.png", png(10 + i))}, data={"question": Q})

        engine.lock.acquire()  # the model is busy: admitted requests wait for it
        try:
            threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            while engine.gate.inside < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.gate.inside == 3
            r = c.post("/v1/ask", files={"image": ("x.png", png(20))}, data={"question": Q})
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert r.json() == {"error": "busy: 3 requests are running or queued; retry in 2 s"}
            assert c.get("/healthz").status_code == 200  # not gated
        finally:
            engine.lock.release()
        for t in threads:
            t.join(timeout=30)
        for i, r in enumerate(results):
            assert (
                r.status_code == 200 and r.json()["answer"] == reference.ask(load_image(png(10 + i)), Q).text
            )
        assert engine.gate.inside == 0
        metrics = scrape(c)
        assert metrics["edgevqa_requests_total", ("route", "/v1/ask"), ("status", "200")] == 3
        assert metrics["edgevqa_requests_total", ("route", "/v1/ask"), ("status", "503")] == 1
        assert metrics["edgevqa_errors_total", ("kind", "overload"), ("route", "/v1/ask")] == 1


def scrape(c: TestClient) -> dict:
    """/metrics read by prometheus_client's own parser: (name, *sorted label pairs) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_text_format(bundle):
    with make_client(bundle) as c:
        for _ in range(2):
            c.post("/v1/ask", files={"image": ("x.png", png(30))}, data={"question": Q})
        c.post("/v1/ask", json={"question": Q})
        c.get("/no/such/path")
        m = scrape(c)
    ask = ("route", "/v1/ask")
    assert m["edgevqa_requests_total", ask, ("status", "200")] == 2
    assert m["edgevqa_requests_total", ask, ("status", "400")] == 1
    assert m["edgevqa_requests_total", ("route", "other"), ("status", "404")] == 1
    assert m["edgevqa_errors_total", ("kind", "client"), ask] == 1
    assert m["edgevqa_request_duration_seconds_bucket", ("le", "+Inf"), ask] == 3
    assert m["edgevqa_request_duration_seconds_count", ask] == 3
    assert m["edgevqa_image_encodings_total", ("cache", "hit")] == 1
    assert m["edgevqa_image_encodings_total", ("cache", "miss")] == 1
    assert m["edgevqa_requests_admitted",] == 0 and m["edgevqa_requests_admitted_max",] == 8
    assert m["process_resident_memory_bytes",] > 1e6
    buckets = [v for k, v in m.items() if k[0] == "edgevqa_request_duration_seconds_bucket" and ask in k]
    assert len(buckets) == 12 and buckets == sorted(buckets)  # 11 bounds and +Inf, cumulative


def test_model_summary_and_openapi(client, bundle):
    model = client.get("/v1/model").json()
    assert model["family"] == "blip-vqa" and model["precision"] in model["precisions"]
    assert model["backend"] == "cpu" and model["limits"]["max_queue"] == 3
    assert "edgevqa_server" in model["versions"] and "source" not in model
    assert str(bundle) not in json.dumps(model) and "/" not in json.dumps(model["versions"])
    schema = client.get("/openapi.json").json()
    assert {"/v1/ask", "/v1/preview", "/v1/model", "/healthz", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/ask"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["application/json"]["schema"]["required"] == ["image_base64", "question"]
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "does not replace, clinical judgement" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_missing_serve_extra_names_it(tmp_path):
    block = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'fastapi':\n"
        "            raise ImportError('blocked for this test')\n"
        "sys.meta_path.insert(0, _Block())\n"
        "from edgevqa.cli import main; main(sys.argv[1:])\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", block, "serve", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_user_error(p, "fastapi is not installed", "pip install 'edgevqa[serve]'")
