"""The real `edgevqa serve` process (torch blocked) on a free loopback port: answers over HTTP,
load (no errors below the queue limit, 503 above it, stable memory, right answers throughout),
and the clinician's page driven in a headless Chromium."""

from __future__ import annotations

import importlib.util
import io
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


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    cmd = edgevqa_cmd(
        "serve",
        "--model",
        str(bundle),
        "--port",
        str(port),
        "--max-queue",
        str(MAX_QUEUE),
        "--no-access-log",
        block_torch=True,
    )
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
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
    yield Server(url, proc.pid, log)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
