"""One backend of ``edgevqa bench``, run in its own process so that its peak RSS is its own and
the onnxruntime side never has torch loaded.

    python -m edgevqa.bench.worker SPEC.json OUT.json

SPEC: {"backend": "torch-fp32" or a runtime report name (bench.targets) with its "precision" and
       "runtime_backend", "bundle": dir, "run" or "model_dir": dir (torch),
       "items": [[image_path, question], ...], "warmup": n, "repeats": n,
       "max_new_tokens": n, "min_new_tokens": n, "threads": n}
OUT:  {"answers": [...], "token_ids": [...], "latency_ms": [...], "first_answer_s": s, "peak_rss_mb": mb}
With "prime_only": only {"first_answer_s", "peak_rss_mb"} of a first load (it fills the
optimized-graph cache that the measured run then starts from).
Latency is one whole answer: image file -> preprocessing -> graphs/model -> text.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("preprocess_ms", "vision_ms", "question_ms", "decode_ms")


def peak_rss_mb() -> float:
    """This process's peak resident memory.

    VmHWM belongs to the process's own address space. ru_maxrss does not do: Linux carries it
    across fork + exec, so a worker would report its parent's peak (measured here: every backend
    showed the parent's 726 MB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def onnx_answerer(spec: dict[str, Any]):
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.decoding import DecodingOptions
    from edgevqa.runtime.session import use_global_pool

    if spec.get("global_pool", True):
        use_global_pool(spec.get("threads", 0))
    # no image cache for the main figures: PyTorch encodes every image, so must the runtime here;
    # follow-up questions are measured on their own (follow_up_ms)
    pipe = VQAPipeline.from_bundle(
        spec["bundle"],
        precision=spec["precision"],
        threads=spec.get("threads", 0),
        image_cache=0,
        backend=spec.get("runtime_backend", "cpu"),
    )
    t = pipe.manifest.text
    opts = DecodingOptions(t.eos, t.pad_id, spec["max_new_tokens"], spec.get("min_new_tokens", 0))

    def answer(image: str, question: str) -> tuple[str, list[int], dict[str, float]]:
        a = pipe.ask(image, question, opts)
        return a.text, a.token_ids, a.timings_ms

    def follow_ups(groups: list[list]) -> list[float]:
        """Whole-answer ms of each question after the first about its image (encoding cached)."""
        pipe.image_cache, times = 1, []
        for image, questions in groups:
            pipe.forget_images()
            pipe.ask(image, questions[0], opts)
            for q in questions[1:]:
                s = time.perf_counter()
                assert pipe.ask(image, q, opts).image_cached
                times.append(1e3 * (time.perf_counter() - s))
        pipe.image_cache = 0
        return times

    def rank(items: list[list]) -> dict[str, list]:
        """Rank mode (yes/no scored in one decoder pass) on closed questions, image encoded each time."""
        texts, times = [], []
        for image, question in items:
            s = time.perf_counter()
            texts.append(pipe.rank(image, question).text)
            times.append(1e3 * (time.perf_counter() - s))
        return {"answers": texts, "latency_ms": times}

    return answer, {"follow_ups": follow_ups, "rank": rank}


class TokenTimes:
    """A transformers streamer that notes when generate() emits each token (the first call
    carries the prompt): time to first token and per token, measured inside one generate()."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def put(self, value: Any) -> None:
        self.marks.append(time.perf_counter())

    def end(self) -> None:
        pass

    def timings(self, t0: float) -> dict[str, float]:
        tokens = self.marks[1:]  # after the prompt's
        out = {"first_token_ms": 1e3 * (tokens[0] - t0)} if tokens else {}
        if len(tokens) > 1:
            out["ms_per_token"] = 1e3 * (tokens[-1] - tokens[0]) / (len(tokens) - 1)
        return out


def torch_answerer(spec: dict[str, Any]):
    import torch

    from edgevqa.families import registry
    from edgevqa.runtime.images import load_image
    from edgevqa.runtime.preprocess import preprocess

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("run"):  # a training run: the merged model, exactly what export shipped
        from edgevqa.export.merge import load_run

        loaded = load_run(Path(spec["run"])).loaded
    else:
        family = registry.family_of_folder(Path(spec["model_dir"])) or "blip-vqa"
        loaded = registry.side(family, "train").load_pretrained(spec["model_dir"])
    loaded.model.eval()
    fam = registry.side(loaded.family, "train")

    # torch-bf16: what a PyTorch user gets from autocast on a CPU with bf16 (AMX / AVX-512 BF16)
    bf16 = spec.get("autocast") == "bf16"

    def answer(image: str, question: str) -> tuple[str, list[int], dict[str, float]]:
        t0, streamer = time.perf_counter(), TokenTimes()
        pixels = preprocess(load_image(image), loaded.image)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            text, ids = fam.answer(loaded, pixels, question, spec, streamer)
        return text, ids, streamer.timings(t0)

    return answer, None  # generate() has neither image-encoding reuse nor a rank mode to measure


def run(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    answer, extras = torch_answerer(spec) if spec["backend"].startswith("torch") else onnx_answerer(spec)
    items = spec["items"]
    answer(*items[0])  # first call pays lazy initialisation; counted in first_answer_s, not latency
    load_s = time.perf_counter() - t0
    if spec.get("prime_only"):  # a first start on this machine: builds the optimized-graph cache
        return {"first_answer_s": load_s, "peak_rss_mb": peak_rss_mb()}
    for i in range(spec.get("warmup", 2)):
        answer(*items[i % len(items)])
    texts, ids, lat, first, per_token = [], [], [], [], []
    stages: dict[str, list[float]] = {}  # the runtime's own split of each answer (vision, question, decode)
    for _ in range(spec.get("repeats", 1)):
        for image, question in items:
            s = time.perf_counter()
            text, seq, timings = answer(image, question)
            lat.append(1e3 * (time.perf_counter() - s))
            texts.append(text)
            ids.append(seq)
            first += [timings["first_token_ms"]] if "first_token_ms" in timings else []
            for key in STAGES:
                if key in timings:
                    stages.setdefault(key, []).append(timings[key])
            per_token += [timings["ms_per_token"]] if "ms_per_token" in timings else []
    n = len(items)
    out = {"answers": texts[:n], "token_ids": ids[:n], "latency_ms": lat, "first_answer_s": load_s}
    out.update(first_token_ms=first, ms_per_token=per_token, stages_ms=stages)
    if extras is not None and spec.get("follow_up_groups"):
        out["follow_up_ms"] = extras["follow_ups"](spec["follow_up_groups"])
    if extras is not None and spec.get("rank_items"):
        out["rank"] = extras["rank"](spec["rank_items"])
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run(spec)))


if __name__ == "__main__":
    main()
