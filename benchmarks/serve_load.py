"""Load test of `edgevqa serve`: latency, throughput, errors, 503s and memory of the real server.

What is measured, and how:

* The server is a real ``edgevqa serve`` process, started here on a free loopback port, with
  ``--max-queue`` admitted requests (running + waiting) at most.
* **Steady load**: ``--requests`` POST /v1/ask (multipart, one of ``--images`` synthetic 64x64 PNGs
  with one of three questions) from ``--concurrency`` client threads, each on its own keep-alive
  connection. Latency is client-side, from sending to the full response (``perf_counter``), after
  ``--warmup`` unmeasured requests. With concurrency at or below the queue limit no request should
  be refused.
* **Overload**: ``--burst`` threads each send one request of a 1024x1024 noise PNG (about 1 MB)
  at the same moment (a barrier); the bounded queue should refuse the excess with 503 +
  Retry-After instead of queueing it.
* **Errors** are responses other than 200 and 503, and 200s whose answer differs from the answer
  of a local ``VQAPipeline`` on the same image and question.
* **Memory**: the server's RSS is sampled every 50 ms (``/proc/PID/status`` VmRSS); peak RSS is its
  VmHWM at the end. RSS after warm-up vs after the steady phase shows whether memory grows.

Usage:
    python benchmarks/serve_load.py --model BUNDLE [--requests 400 --concurrency 4 --max-queue 8 --burst 32]

Writes ``report.json`` and ``report.md`` to ``--out`` (default ``benchmarks/results/serve``); the last
stdout line is the report as one compact JSON document.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from edgevqa import atomic
from edgevqa.runtime import VQAPipeline
from edgevqa.runtime.images import load_image

QUESTIONS = ("is there a lesion?", "what modality is this?", "which side is the lesion on?")


def png(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "edgevqa", "serve", "--model", str(args.model), "--port", str(port),
        "--max-queue", str(args.max_queue), "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"edgevqa serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("edgevqa serve did not come up in 120 s")


# ---------------------------------------------------------------------------------------------


def fire(url: str, jobs: list[tuple[bytes, str]], threads: int) -> list[dict]:
    """Send ``jobs`` (image, question) from ``threads`` threads, all starting together."""
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            c.get("/healthz")  # connect first: the barrier releases requests, not handshakes
            barrier.wait()
            for j in range(k, len(jobs), threads):
                data, q = jobs[j]
                t0 = time.perf_counter()
                r = c.post("/v1/ask", files={"image": ("x.png", data)}, data={"question": q})
                ms = 1e3 * (time.perf_counter() - t0)
                with lock:
                    results.append({"job": j, "status": r.status_code, "ms": ms, "body": r.json(),
                                    "retry_after": r.headers.get("retry-after")})  # fmt: skip

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def summarise(results: list[dict], jobs: list[tuple[bytes, str]], expected: dict, wall_s: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    wrong = [r for r in ok if r["body"]["answer"] != expected[jobs[r["job"]]]]
    refused = [r for r in results if r["status"] == 503]
    other = [r for r in results if r["status"] not in (200, 503)]
    lat = sorted(r["ms"] for r in ok)
    server = sorted(r["body"]["latency_ms"] for r in ok)  # admission to answer, inside the server
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(other) + len(wrong),
        "wrong_answers": len(wrong),
        "http_503": len(refused),
        "retry_after_on_all_503": all(r["retry_after"] is not None for r in refused),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        "server_p50_ms": round(float(np.percentile(server, 50)), 2) if server else None,
        "server_p95_ms": round(float(np.percentile(server, 95)), 2) if server else None,
        "answers_per_s": round(len(ok) / wall_s, 1),
        "wall_s": round(wall_s, 2),
    }


def run(args: argparse.Namespace) -> dict:
    reference = VQAPipeline.from_bundle(args.model)
    small = [png(i, 64) for i in range(args.images)]
    big = png(10_000, 1024)
    steady_jobs = [(small[i % args.images], QUESTIONS[(i // args.images) % 3]) for i in range(args.requests)]
    warm_jobs = steady_jobs[: args.warmup]
    burst_jobs = [(big, QUESTIONS[i % 3]) for i in range(args.burst)]
    expected = {(d, q): reference.ask(load_image(d), q).text for d, q in set(steady_jobs + burst_jobs)}

    port = free_port()
    proc = start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss.append(proc_kb(proc.pid, "VmRSS") / 1024)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rss_start = proc_kb(proc.pid, "VmRSS") / 1024
        fire(url, warm_jobs, args.concurrency)
        rss_warm = proc_kb(proc.pid, "VmRSS") / 1024
        t0 = time.perf_counter()
        steady = fire(url, steady_jobs, args.concurrency)
        steady_s = time.perf_counter() - t0
        rss_steady = proc_kb(proc.pid, "VmRSS") / 1024
        t0 = time.perf_counter()
        burst = fire(url, burst_jobs, args.burst)
        burst_s = time.perf_counter() - t0
        peak = proc_kb(proc.pid, "VmHWM") / 1024
        model = httpx.get(url + "/v1/model").json()
    finally:
        stop.set()
        sampler.join()
        proc.terminate()
        proc.wait(timeout=30)

    return {
        "bundle": {
            "family": model["family"],
            "precision": model["precision"],
            "backend": model["backend"],
            "manifest_sha256": model["manifest_sha256"],
            "image_size": model["image_size"],
        },  # fmt: skip
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "concurrency": args.concurrency,
            "max_queue": args.max_queue,
            "burst": args.burst,
            "images": args.images,
            "warmup": args.warmup,
        },  # fmt: skip
        "steady": summarise(steady, steady_jobs, expected, steady_s),
        "burst": summarise(burst, burst_jobs, expected, burst_s),
        "memory_mb": {
            "rss_at_start": round(rss_start, 1),
            "rss_after_warmup": round(rss_warm, 1),
            "rss_after_steady": round(rss_steady, 1),
            "rss_max_sampled": round(max(rss), 1),
            "peak_rss_vmhwm": round(peak, 1),
        },
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def markdown(r: dict) -> str:
    s, b, m, cfg, bundle = r["steady"], r["burst"], r["memory_mb"], r["settings"], r["bundle"]

    def row(name: str, x: dict, concurrency: int) -> str:
        cells = [
            name,
            x["requests"],
            concurrency,
            x["p50_ms"],
            x["p95_ms"],
            x["server_p50_ms"],
            x["answers_per_s"],
        ]
        return "| " + " | ".join(str(c) for c in [*cells, x["errors"], x["http_503"]]) + " |"

    return "\n".join(
        [
            "# edgevqa serve under load",
            "",
            f"Bundle {bundle['family']} {bundle['precision']} on {bundle['backend']} "
            f"(manifest {bundle['manifest_sha256']}), {r['machine']['cpus']} CPUs, "
            f"{r['machine']['platform']}; `--max-queue {cfg['max_queue']}`. "
            "Latency is client-side over loopback (the client threads share the CPUs with the server); "
            "server p50 is the server's own admission-to-answer time.",
            "",
            "| phase | requests | concurrency | p50 ms | p95 ms | server p50 ms | answers/s | errors | 503 |",
            "|---|---|---|---|---|---|---|---|---|",
            row("steady (64 px PNGs)", s, cfg["concurrency"]),
            row("burst (1024 px PNG)", b, cfg["burst"]),
            "",
            f"Server RSS: {m['rss_after_warmup']} MB after warm-up, {m['rss_after_steady']} MB after "
            f"the steady phase; peak (VmHWM) {m['peak_rss_vmhwm']} MB.",
            "",
            f"Command: `{r['command']}`",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="bundle folder")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--burst", type=int, default=32)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve")
    args = ap.parse_args()
    report = run(args)
    md = markdown(report)
    atomic.write_json(args.out / "report.json", report)
    atomic.write_text(args.out / "report.md", md)
    print(md)
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
