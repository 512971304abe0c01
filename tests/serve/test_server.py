"""The real `edgevqa serve` process (torch blocked) on a free loopback port: answers over HTTP,
load (no errors below the queue limit, 503 above it, stable memory, right answers throughout),
hostile clients (slow bodies and headers, clients that leave, tokens in query strings, forged
X-Forwarded-For), the official OpenAI client, and the clinician's page in a headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgevqa.runtime import VQAPipeline  # noqa: E402
from edgevqa.runtime.images import load_image  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
MAX_QUEUE = 4
# the decoded size of the preview <img> (waits until the PNG is decoded)
PREVIEW_SIZE = "e => e.decode().then(() => [e.naturalWidth, e.naturalHeight])"
QUESTIONS = ("is there a lesion?", "what modality is this?", "which side is the lesion on?")
SERVER_ENV = {k: v for k, v in os.environ.items() if k != "EDGEVQA_TOKEN"}


@dataclass
class Server:
    url: str
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def png(seed: int, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


@contextlib.contextmanager
def start_server(bundle: Path, log: Path, *flags: str, env: dict | None = None):
    """A real `edgevqa serve` (torch blocked) on a free loopback port, until the block ends."""
    port = free_port()
    cmd = edgevqa_cmd("serve", "--model", str(bundle), "--port", str(port), *flags, block_torch=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env or SERVER_ENV
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"edgevqa serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"edgevqa serve did not come up:\n{log.read_text()}")
        time.sleep(0.1)
    try:
        yield Server(url, proc.pid, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with start_server(bundle, log, "--max-queue", str(MAX_QUEUE), "--no-access-log") as s:
        yield s


@pytest.fixture(scope="module")
def reference(bundle):
    return VQAPipeline.from_bundle(bundle)


def post(client, data: bytes, question: str, name: str = "x.png"):
    return client.post("/v1/ask", files={"image": (name, data)}, data={"question": question})


# ---------------------------------------------------------------- the real process


def test_real_server_answers_over_http(server, reference):
    pydicom = pytest.importorskip("pydicom")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/v1/model").json()["limits"]["max_queue"] == MAX_QUEUE
        r = post(c, png(1), QUESTIONS[0])
        assert (
            r.status_code == 200
            and r.json()["answer"] == reference.ask(load_image(png(1)), QUESTIONS[0]).text
        )
        ct = (Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm").read_bytes()
        r = post(c, ct, "what modality is this?", name="CT_small.dcm")
        assert (
            r.status_code == 200
            and r.json()["answer"] == reference.ask(load_image(ct), "what modality is this?").text
        )
        assert "edgevqa_requests_total" in c.get("/metrics").text
    assert "Traceback" not in server.log.read_text()


def test_load_below_and_above_the_queue_limit(server, reference):
    images = [png(100 + i) for i in range(6)]
    expected = {(i, q): reference.ask(load_image(images[i]), q).text for i in range(6) for q in QUESTIONS}
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss.append(rss_mb(server.pid))
            time.sleep(0.05)

    def worker(k: int, n: int, out: list, big: bytes | None = None, barrier=None) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.get("/healthz")  # connect before the barrier
            if barrier is not None:
                barrier.wait()
            for j in range(n):
                i, q = (k + j) % 6, QUESTIONS[(k + 2 * j) % 3]
                r = post(c, big or images[i], q)
                out.append((i, q, r.status_code, r.json(), r.headers.get("retry-after"), big is not None))

    def run(threads: int, per_thread: int, big: bytes | None = None) -> list:
        out: list = []
        barrier = threading.Barrier(threads)
        ts = [
            threading.Thread(target=worker, args=(k, per_thread, out, big, barrier)) for k in range(threads)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        return out

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        warm = run(MAX_QUEUE, 10)  # at most MAX_QUEUE in flight: never refused
        rss_warm = rss_mb(server.pid)
        steady = run(MAX_QUEUE, 50)
        rss_steady = rss_mb(server.pid)
        burst: list = []
        big = png(7, size=1024)  # ~1 MB of noise: decoding keeps each request in flight longer
        for _ in range(3):  # three tries at overfilling the queue; the first one does it on this machine
            burst += run(6 * MAX_QUEUE, 2, big)
            if any(s == 503 for _, _, s, _, _, _ in burst):
                break
        after = run(MAX_QUEUE, 10)  # recovered: all answered again
    finally:
        stop.set()
        sampler.join()

    for i, q, status, body, _, _ in warm + steady + after:
        assert status == 200, body
        assert body["answer"] == expected[i, q]
    big_answers = {q: reference.ask(load_image(big), q).text for q in QUESTIONS}
    refused = [(s, body, ra) for _, _, s, body, ra, _ in burst if s == 503]
    served = [(q, body) for _, q, s, body, _, _ in burst if s == 200]
    assert refused, "no 503 although 24 requests arrived at once for a queue of 4"
    assert len(refused) + len(served) == len(burst)  # nothing else: no 5xx, no timeouts
    assert all(ra == "1" and body["error"].startswith("busy:") for _, body, ra in refused)
    assert all(body["answer"] == big_answers[q] for q, body in served)
    growth = rss_steady - rss_warm
    assert growth < 16, f"RSS grew {growth:.1f} MB over 200 requests (from {rss_warm:.1f} MB)"
    assert max(rss) < rss_warm + 120, f"peak RSS {max(rss):.1f} MB vs {rss_warm:.1f} MB after warm-up"
    print(
        f"requests {len(warm + steady + burst + after)}, 503s {len(refused)}, RSS warm {rss_warm:.1f} MB, "
        f"after 200 more {rss_steady:.1f} MB, peak {max(rss):.1f} MB"
    )


# ---------------------------------------------------------------- hostile clients

TOKEN = "hostile-test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE_S = 2  # --body-timeout and --header-timeout of the hostile server
GENEROUS_S = 15  # what "within the deadline" allows for on a loaded 2-core machine


@pytest.fixture(scope="module")
def hostile(bundle, tmp_path_factory):
    """A server with a token (from EDGEVQA_TOKEN), one queue slot, 2 s deadlines, the access log on."""
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    flags = ("--max-queue", "1", "--body-timeout", str(DEADLINE_S), "--header-timeout", str(DEADLINE_S))
    with start_server(bundle, log, *flags, env=SERVER_ENV | {"EDGEVQA_TOKEN": TOKEN}) as s:
        yield s


def head(path: str, length: int) -> bytes:
    """A POST's request line and headers, announcing a multipart body of ``length`` bytes."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: multipart/form-data; boundary=b0undary",
        f"Content-Length: {length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def trickle(url: str, first: bytes, drip: bytes, give_up_s: float = 20) -> tuple[bytes, bool, float]:
    """Send ``first``, then ``drip`` every 0.25 s, reading meanwhile: what came back, whether the
    server closed the connection, and after how many seconds."""
    host, port = url.removeprefix("http://").split(":")
    got, closed, t0 = b"", False, time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(first)
        while not closed and time.monotonic() - t0 < give_up_s:
            try:
                s.sendall(drip)
                if select.select([s], [], [], 0.25)[0]:
                    chunk = s.recv(65536)
                    got, closed = got + chunk, not chunk
            except OSError:  # reset or broken pipe: closed by the server
                closed = True
    return got, closed, time.monotonic() - t0


def scrape(srv: Server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(srv.url + "/metrics", headers=AUTH, timeout=10).text
    return {
        (x.name, *sorted(x.labels.items())): x.value
        for family in text_string_to_metric_families(text)
        for x in family.samples
    }


def test_slow_body_gets_408_and_never_holds_a_slot(hostile, reference):
    slow: list = [None, None]

    def client(i: int) -> None:
        slow[i] = trickle(hostile.url, head("/v1/ask", 50_000) + b"--b0undary\r\n", b"x")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both heads are in and their bodies trickle
    with httpx.Client(base_url=hostile.url, headers=AUTH, timeout=30) as c:
        # one queue slot: were it held by a slow upload, this would be a 503
        r = post(c, png(3), QUESTIONS[0])
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == reference.ask(load_image(png(3)), QUESTIONS[0]).text
        for t in threads:
            t.join(timeout=60)
        for got, closed, took in slow:
            assert closed and took < GENEROUS_S, (got, took)
            assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got
        answered = [got for got, _, _ in slow if got]
        assert answered, "no 408 came back (each connection was closed without an answer)"
        assert all(b'{"error": "the request body did not arrive within 2 s"}' in got for got in answered)
        assert post(c, png(4), QUESTIONS[1]).status_code == 200  # and the server goes on
    metrics = scrape(hostile)
    assert metrics["edgevqa_requests_total", ("route", "/v1/ask"), ("status", "408")] >= 2


def test_slow_headers_are_cut_off(hostile):
    got, closed, took = trickle(
        hostile.url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n"
    )
    assert closed and took < GENEROUS_S and got == b"", (got, took)
    assert httpx.get(hostile.url + "/healthz", timeout=10).status_code == 200


def test_client_leaving_mid_upload_is_not_a_server_error(hostile):
    key = ("edgevqa_requests_total", ("route", "/v1/ask"), ("status", "499"))
    before = scrape(hostile).get(key, 0)
    host, port = hostile.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head("/v1/ask", 100_000) + b"--b0undary\r\n" + b"x" * 1000)
        time.sleep(0.3)  # the server is reading the body; then the client goes away
    deadline = time.monotonic() + GENEROUS_S
    while (metrics := scrape(hostile)).get(key, 0) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics.get(key, 0) == before + 1
    assert metrics["edgevqa_errors_total", ("kind", "aborted"), ("route", "/v1/ask")] >= 1
    assert not [k for k in metrics if k[0] == "edgevqa_errors_total" and ("kind", "server") in k]
    log = hostile.log.read_text()
    assert '"POST /v1/ask" 499' in log
    assert "Traceback" not in log and "ERROR" not in log and "internal error" not in log


def test_access_log_holds_no_token_and_no_forged_address(hostile):
    secret, forged = "query-secret-9f3c", "203.0.113.9"
    with httpx.Client(base_url=hostile.url, timeout=10) as c:
        spoof = {"X-Forwarded-For": forged, "X-Forwarded-Proto": "https"}
        assert c.get(f"/v1/model?token={secret}", headers=spoof).status_code == 401
        assert c.get(f"/v1/model?access_token={secret}", headers=AUTH | spoof).status_code == 200
    time.sleep(0.2)
    log = hostile.log.read_text()
    assert secret not in log and forged not in log
    lines = [x for x in log.splitlines() if '"GET /v1/model"' in x]
    assert any(x.endswith(" ms") and '"GET /v1/model" 401' in x for x in lines), lines
    assert any('"GET /v1/model" 200' in x for x in lines), lines
    assert all(x.startswith("127.0.0.1:") for x in lines), lines


def test_openai_client_gets_the_answers_of_v1_ask(hostile, reference):
    openai = pytest.importorskip("openai")
    image, question = png(5), QUESTIONS[1]
    with httpx.Client(base_url=hostile.url, headers=AUTH, timeout=30) as c:
        expected = post(c, image, question).json()["answer"]
    assert expected == reference.ask(load_image(image), question).text
    client = openai.OpenAI(base_url=hostile.url + "/v1", api_key=TOKEN, max_retries=0, timeout=30)
    [model] = client.models.list().data
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]
    messages = [{"role": "user", "content": content}]

    done = client.chat.completions.create(model=model.id, messages=messages)
    assert done.model == model.id and len(done.choices) == 1
    assert done.choices[0].message.content == expected
    assert done.choices[0].finish_reason in ("stop", "length")

    chunks = list(client.chat.completions.create(model=model.id, messages=messages, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason

    wrong = openai.OpenAI(base_url=hostile.url + "/v1", api_key="wrong-token-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=model.id, messages=messages)
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": question}])


# ---------------------------------------------------------------- the page in a real browser


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; `make test` installs it)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install 'edgevqa[dev]')"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_page_in_headless_chromium(server, reference, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    scan = tmp_path / "scan.png"
    yy, xx = np.mgrid[:160, :160]
    image = (60 + 40 * np.sin(xx / 9.0) + 120 * (((xx - 110) ** 2 + (yy - 70) ** 2) < 300)).clip(0, 255)
    Image.fromarray(image.astype(np.uint8)).save(scan)
    question = "is there a lesion?"
    expected = reference.ask(load_image(scan), question).text
    assert expected.strip(), "the answer must be visible text for the screenshot check"
    shot = tmp_path / "page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(server.url + "/")
            assert "does not replace, clinical judgement" in page.inner_text("#notice")
            page.set_input_files("#file", str(scan))
            # no wait_for_function: it evaluates strings, which the page's CSP (rightly) forbids
            expect(page.locator("#imageinfo")).to_have_text("scan.png — 160x160 px", timeout=20_000)
            assert page.locator("#preview").evaluate(PREVIEW_SIZE) == [160, 160]
            page.fill("#question", question)
            page.click("#ask")
            expect(page.locator("#latency")).to_contain_text(" ms on the server", timeout=20_000)
            assert page.inner_text("#answer") == expected
            assert page.inner_text("#error") == ""
            assert page.inner_text("#history li").startswith(f"{question} → {expected} (")
            page.screenshot(path=str(shot), full_page=True)
            box = page.locator("#answer").bounding_box()
            # the CSP allows the inline script and style by their hashes: nothing was refused
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            browser.close()
    with Image.open(shot) as im:
        im.verify()  # a well-formed PNG
    with Image.open(shot) as im:
        assert im.format == "PNG"
        region = np.asarray(im.convert("L"))[
            int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])
        ]
    assert region.size > 0 and region.std() > 10, f"the answer region looks blank (std {region.std():.1f})"


@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_page_previews_a_dicom(server, reference, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from playwright.sync_api import expect, sync_playwright

    ct = tmp_path / "CT_small.dcm"
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", ct)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.set_input_files("#file", str(ct))
            expect(page.locator("#imageinfo")).to_have_text("CT_small.dcm — 128x128 px", timeout=20_000)
            assert page.locator("#preview").evaluate(PREVIEW_SIZE) == [128, 128]
            page.fill("#question", "what modality is this?")
            page.click("#ask")
            expect(page.locator("#latency")).to_contain_text(" ms on the server", timeout=20_000)
            assert page.inner_text("#answer") == reference.ask(load_image(ct), "what modality is this?").text
        finally:
            browser.close()
