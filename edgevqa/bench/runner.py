"""``edgevqa bench``: PyTorch vs every ONNX precision of a bundle, on the same inputs, in one run.

Each backend runs in its own subprocess (bench/worker.py) one after the other, so latencies do
not compete for cores and each peak RSS belongs to one backend. Reported per backend: exact-match
accuracy (overall / closed / open / per category), agreement with PyTorch's answers, latency per
answer (p50, p95, mean, std over all timed answers), peak RSS, bytes on disk; plus the
majority-answer baseline. Output: report.json, report.md and latency_vs_agreement.png.

``--arch`` (``bench_arch``) times a random-weight full-size architecture instead, and adds each
CPU precision's matmul floor (floor.py): what its weight matmuls alone cost per answer here.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic
from edgevqa.bundle import load_manifest
from edgevqa.config import OPENVINO_VISION
from edgevqa.data.records import load_split
from edgevqa.errors import InputError
from edgevqa.eval.metrics import agreement, majority_baseline, record_accuracy
from edgevqa.runtime.backends import probe

log = logging.getLogger("edgevqa.bench")


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one backend in its own process.

    onnxruntime backends run twice, on an optimized-graph cache that starts empty: a first start
    on this machine (it builds the cache; its time and peak RSS are reported as first_start_*),
    then the measured run, which starts the way every later start on this machine will.
    """
    with tempfile.TemporaryDirectory(prefix="edgevqa-bench-") as tmp:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "EDGEVQA_CACHE_DIR": str(Path(tmp) / "ort")}
        env.update(spec.get("env", {}))  # e.g. OpenVINO's precision for one comparison row
        first = None
        if not spec["backend"].startswith("torch"):
            first = _run_process({**spec, "prime_only": True}, Path(tmp) / "prime", env)
        out = _run_process(spec, Path(tmp) / "run", env)
        if first is not None:
            out["first_start_s"], out["first_start_peak_rss_mb"] = (
                first["first_answer_s"],
                first["peak_rss_mb"],
            )
        return out


class WorkerFailed(RuntimeError):
    """A backend's process failed (an exception, or killed: a model too large for this machine)."""


def _run_process(spec: dict[str, Any], folder: Path, env: dict[str, str]) -> dict[str, Any]:
    folder.mkdir()
    spec_path, out_path = folder / "spec.json", folder / "out.json"
    spec_path.write_text(json.dumps(spec))
    what = "first start of" if spec.get("prime_only") else "measuring"
    log.info("bench: %s %s on %d inputs", what, spec["backend"], len(spec["items"]))
    proc = subprocess.run(
        [sys.executable, "-m", "edgevqa.bench.worker", str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        why = (
            "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else f"exit code {proc.returncode}"
        )
        raise WorkerFailed(f"bench worker {spec['backend']} failed ({why})" + (f":\n{tail}" if tail else ""))
    return json.loads(out_path.read_text())


def latency_stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "n": int(a.size),
    }


def precision_bytes(bundle: Path, precision: str) -> int:
    """Bytes of the files one precision runs from: its folder, and a graph it shares from another
    precision's (an int4 bundle's prompts run int8's decoder_step), with their external weights."""
    own = [f for f in (bundle / precision).iterdir() if f.is_file()]
    return dir_bytes(own + load_manifest(bundle, verify=False).borrowed(bundle, precision))


def dir_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def machine() -> dict[str, Any]:
    import onnxruntime

    from edgevqa.runtime.session import default_threads

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": default_threads(),  # the cores this process may run on (taskset), as the runtime uses
        "onnxruntime": onnxruntime.__version__,
    }
    if os.cpu_count() != info["cores"]:
        info["machine_cores"] = os.cpu_count()
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["torch"] = importlib.metadata.version("torch")  # the version, without importing torch
    return info | cpu_info()


# the instruction sets that decide which kernels onnxruntime and PyTorch run (int8 on VNNI or AMX)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """This CPU for a report: its model name, family and model numbers (a "AMD EPYC" is Zen 3 or
    Zen 4 by these) and which of SPEED_FLAGS it has (``cpuinfo``: /proc/cpuinfo's text)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    info: dict[str, Any] = {"cpu": fields.get("model name") or platform.processor() or platform.machine()}
    if "cpu family" in fields:
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields.get('model', '?')}"
    if flags:
        info["cpu_flags"] = [f for f in SPEED_FLAGS if f in flags]
    return info


def cpu_words(mach: dict[str, Any]) -> str:
    """ "AMD EPYC (family/model 25/1; avx2)": the CPU as a report's reader needs it named."""
    extra = [f"family/model {mach['cpu_family_model']}"] if mach.get("cpu_family_model") else []
    if "cpu_flags" in mach:
        extra.append(", ".join(mach["cpu_flags"]) or "no AVX2")
    return f"{mach.get('cpu')} ({'; '.join(extra)})" if extra else str(mach.get("cpu"))


def torch_bytes(run: Path) -> int:
    """Weights PyTorch loads for a run: its model/, or its base model plus the LoRA adapter."""
    from edgevqa import config
    from edgevqa.config import TrainConfig
    from edgevqa.train.base import resolve_model_dir

    if (run / "model").is_dir():
        return dir_bytes([run / "model"])
    base = resolve_model_dir(config.load(TrainConfig, run / "config.json").base)
    return dir_bytes([p for p in (base, run / "adapter") if p is not None])


# ---------------------------------------------------------------------------------------------


def targets(m: Any, machine: Any) -> dict[str, dict[str, str]]:
    """Every backend x precision of bundle ``m`` this machine can run, by report name:
    ``onnx-<precision>`` on the CPU, ``cuda-``/``tensorrt-<precision>`` on onnxruntime's GPU
    providers, and the bundle's TensorRT engines under their own precision name."""
    from edgevqa.runtime import backends as rb

    out = {}
    for p in m.precisions:
        if p in m.trt:
            if rb.engine_mismatch(m.trt[p]["built_for"], machine) is None:  # also: no GPU or TensorRT
                out[p] = {"precision": p, "runtime_backend": "trt-engine"}
            continue
        if p in m.engines:  # an OpenVINO path: the CPU, with OpenVINO installed
            if machine.offers("openvino"):
                out[f"onnx-{p}"] = {"precision": p, "runtime_backend": "cpu"}
            continue
        for b in ("cpu", "cuda", "tensorrt"):
            if b == "cpu" or machine.offers(b):
                out[f"onnx-{p}" if b == "cpu" else f"{b}-{p}"] = {"precision": p, "runtime_backend": b}
    return out


# what `bench --arch` compares besides PyTorch eager fp32 and edgevqa's precisions
COMPARE = ("torch-bf16", "openvino")


def comparisons(
    compare: tuple[str, ...], machine: Any, precisions: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Report name -> worker spec of the comparison rows this machine can run: PyTorch with bf16
    autocast, and OpenVINO compiling the bundle's fp32 graphs at its default precision (bf16 on
    CPUs with AMX or AVX-512 BF16) and at f32, with edgevqa's decode loop around it; where the
    bundle has int8-static (``precisions``), OpenVINO on those Q/DQ graphs too, at f32 (their
    matmuls run in int8 either way; the bf16 hint only slowed the rest: blip-vqa-base's vision
    graph 161.4 vs 113.6 ms on a Xeon with AMX, 209.9 vs 211.6 ms on Zen 4). ``compare`` names
    "openvino" for all three, or single rows by their report names."""
    out: dict[str, dict[str, Any]] = {}
    if "torch-bf16" in compare:
        out["torch-bf16"] = {"autocast": "bf16"}
    if not machine.offers("openvino"):
        return out
    f32 = {"EDGEVQA_OPENVINO_PRECISION": "f32"}
    rows = {
        "openvino-fp32": {"precision": "fp32", "runtime_backend": "openvino"},
        "openvino-fp32-f32": {"precision": "fp32", "runtime_backend": "openvino", "env": f32},
        "openvino-int8-static": {"precision": "int8-static", "runtime_backend": "openvino", "env": f32},
    }
    for name, row in rows.items():  # "openvino": all three; or one by its name
        if ("openvino" in compare or name in compare) and row["precision"] in ("fp32", *precisions):
            out[name] = row
    return out


def run_rows(
    rows: dict[str, dict[str, Any]],
    common: dict[str, Any],
    bundle: Path,
    torch_source: dict[str, str],
    raw: dict[str, Any],
    sizes: dict[str, int],
) -> None:
    """Run each report row in a worker of its own into ``raw`` (its bytes into ``sizes``); a row
    whose worker fails (killed for memory, ...) is recorded as failed and the others still run."""
    for name, t in rows.items():
        if name.startswith("torch"):  # another PyTorch setting of the same weights
            sizes[name], t = sizes["torch-fp32"], {**t, **torch_source}
        else:  # with external weights (graphs over 2 GB) a precision's bytes are its whole folder
            sizes[name] = precision_bytes(bundle, t["precision"])
            t = {**t, "bundle": str(bundle)}
        try:
            raw[name] = run_worker({**common, **t, "backend": name})
        except WorkerFailed as e:
            log.warning("%s", e)
            raw[name] = {"failed": str(e).splitlines()[0]}


def bench_bundle(
    bundle: Path, data: Path, out: Path, run: Path | None = None, limit: int = 0
) -> dict[str, Any]:
    """Answer the test split of ``data`` with PyTorch and every precision in ``bundle``."""
    m = load_manifest(bundle)
    # the manifest names the run relative to the bundle (export/exporter.py: portable)
    run = Path(run) if run else Path(bundle) / m.source.get("run", "")
    if not (run / "config.json").is_file():
        raise InputError(
            f"bench needs the training run for the PyTorch side: {run} not found (pass --run RUN)"
        )
    test = load_split(data, "test")
    test = test[:limit] if limit else test
    items = [[str(r.image_path(data)), r.question] for r in test]
    groups: dict[str, list[str]] = {}
    for image, question in items:
        groups.setdefault(image, []).append(question)
    closed = [i for i, r in enumerate(test) if r.answer_type == "closed" and r.answer in ("yes", "no")]
    common = {
        "follow_up_groups": [[im, qs] for im, qs in groups.items() if len(qs) > 1][:100],
        "rank_items": [items[i] for i in closed],
        "items": items,
        "warmup": 3,
        "repeats": 1,
        "max_new_tokens": m.text.max_answer_tokens,
        "max_question_tokens": m.text.max_question_tokens,
    }
    backends: dict[str, Any] = {}
    raw = {"torch-fp32": run_worker({**common, "backend": "torch-fp32", "run": str(run)})}
    sizes = {"torch-fp32": torch_bytes(run)}
    run_rows(targets(m, probe()), common, bundle, {"run": str(run)}, raw, sizes)
    torch_answers = raw["torch-fp32"]["answers"]
    for name, r in raw.items():
        backends[name] = {
            "accuracy": record_accuracy(r["answers"], test),
            "agreement": agreement(torch_answers, r["answers"]),
            "token_agreement": sum(a == b for a, b in zip(raw["torch-fp32"]["token_ids"], r["token_ids"]))
            / len(items),
            "latency_ms": latency_stats(r["latency_ms"]),
            "peak_rss_mb": r["peak_rss_mb"],
            "first_answer_s": r["first_answer_s"],
            "first_start_s": r.get("first_start_s"),
            "first_start_peak_rss_mb": r.get("first_start_peak_rss_mb"),
            "bytes": sizes[name],
        }
        if r.get("follow_up_ms"):
            backends[name]["follow_up_ms"] = latency_stats(r["follow_up_ms"])
        if r.get("rank"):
            rk = r["rank"]
            backends[name]["rank"] = {
                "latency_ms": latency_stats(rk["latency_ms"]),
                "accuracy_closed": sum(a == test[i].answer for a, i in zip(rk["answers"], closed))
                / len(closed),
                "agreement_with_generate": agreement([torch_answers[i] for i in closed], rk["answers"]),
            }
    baseline = majority_baseline(load_split(data, "train"), test)
    report = {
        "kind": "bundle",
        "bundle": str(bundle),
        "data": str(data),
        "split": "test",
        "n": len(items),
        "backends": backends,
        "baseline": baseline,
        "machine": machine(),
        "auto": auto_pick(bundle, m, backends),
    }
    write_report(out, report)
    return report


def auto_pick(bundle: Path, m: Any, backends: dict[str, Any]) -> dict[str, Any] | None:
    """Which gated CPU precision answers fastest in this bench (p50 of the whole answer): what
    ``--precision auto`` picks on this machine (it measures its own at first start)."""
    from edgevqa.runtime import autotune

    p50 = {
        p: backends[f"onnx-{p}"]["latency_ms"]["p50"]
        for p in autotune.candidates(bundle, m, "cpu")
        if f"onnx-{p}" in backends
    }
    return {"precision": min(p50, key=p50.get), "p50_ms": p50} if p50 else None


def bench_arch(
    arch: str,
    out: Path,
    repeats: int = 10,
    answer_tokens: int = 8,
    question_tokens: int = 12,
    precisions: tuple[str, ...] = ("fp32", "int8", "int4"),
    compare: tuple[str, ...] = COMPARE,
) -> dict[str, Any]:
    """A random-weight ``arch`` (blip-vqa-base: full size), exported here: PyTorch eager fp32 vs
    each ONNX precision on one image and one question, answers of exactly ``answer_tokens``; and
    the ``compare`` rows this machine runs (``comparisons``)."""
    from edgevqa.data.synth import vocabulary

    if "fp32" not in precisions:  # the floors and the static quantizers' calibration read its graphs
        precisions = ("fp32", *precisions)
    if probe().offers("openvino"):  # edgevqa's OpenVINO paths of the precisions benched
        precisions = (*precisions, *(p for p, base in OPENVINO_VISION.items() if base in precisions))
        wants_static = "openvino" in compare or "openvino-int8-static" in compare
        if wants_static and "int8-static" not in precisions:
            precisions = (*precisions, "int8-static")  # OpenVINO's int8 path reads Q/DQ graphs
    out.mkdir(parents=True, exist_ok=True)
    # the random-weight model and its bundle (1-2 GB for blip-vqa-base) exist only for this run
    with tempfile.TemporaryDirectory(prefix=".arch-work-", dir=out) as tmp:
        work = Path(tmp)
        raw, sizes = _measure_arch(
            arch, work, precisions, list(vocabulary()), repeats, answer_tokens, question_tokens, compare
        )
        uses = arch_uses(arch, question_tokens, answer_tokens)
        floors = matmul_floors(work / "bundle" / "fp32", uses, precisions, work / "floor")
    ref = raw["torch-fp32"]
    torch_p50 = latency_stats(ref["latency_ms"])["p50"]
    backends = {}
    for name, r in raw.items():
        if "failed" in r:
            backends[name] = {"failed": r["failed"], "bytes": sizes[name]}
            continue
        lat = latency_stats(r["latency_ms"])
        backends[name] = {
            "latency_ms": lat,
            "speedup_vs_torch": torch_p50 / lat["p50"],
            "token_agreement": float(
                np.mean([a == b for a, b in zip(ref["token_ids"][0], r["token_ids"][0])])
            ),
            "peak_rss_mb": r["peak_rss_mb"],
            "rss_vs_torch": r["peak_rss_mb"] / ref["peak_rss_mb"],
            "bytes": sizes[name],
            "first_answer_s": r["first_answer_s"],
            "first_start_s": r.get("first_start_s"),
            "first_start_peak_rss_mb": r.get("first_start_peak_rss_mb"),
        }
        for key in ("first_token_ms", "ms_per_token"):  # inside each answer: TTFT, then per token
            if r.get(key):
                backends[name][key] = latency_stats(r[key])
        if r.get("stages_ms"):  # where an answer's time goes, to set beside the matmul floor's graphs
            backends[name]["stages_ms"] = {k: latency_stats(v)["p50"] for k, v in r["stages_ms"].items()}
        if r.get("follow_up_ms"):  # a second question about the same image: encoding reused
            fu = latency_stats(r["follow_up_ms"])
            backends[name]["follow_up_ms"] = fu
            backends[name]["follow_up_speedup_vs_torch"] = torch_p50 / fu["p50"]
    for f in floors.values():
        f["max_speedup_vs_torch"] = torch_p50 / f["ms"]
    report = {
        "kind": "arch",
        "arch": arch,
        "answer_tokens": answer_tokens,
        "question_tokens": question_tokens,
        "repeats": repeats,
        "backends": backends,
        "matmul_floor": floors,
        "machine": machine(),
        "note": "random weights: accuracy is not meaningful and not reported",
    }
    write_report(out, report)
    return report


def _measure_arch(
    arch: str,
    work: Path,
    precisions: tuple[str, ...],
    words: list[str],
    repeats: int,
    answer_tokens: int,
    question_tokens: int,
    compare: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, int]]:
    model_dir, bundle = work / "model", work / "bundle"
    image, question = build_arch_bundle(
        arch, work, model_dir, bundle, precisions, words, question_tokens, answer_tokens
    )
    common = {
        "items": [[str(image), question]],
        "warmup": 2,
        "repeats": repeats,
        "max_new_tokens": answer_tokens,
        "min_new_tokens": answer_tokens,
        "max_question_tokens": 64,
        "follow_up_groups": [[str(image), [question] * (repeats + 1)]],
    }
    raw = {"torch-fp32": run_worker({**common, "backend": "torch-fp32", "model_dir": str(model_dir)})}
    m = load_manifest(bundle, verify=False)
    sizes = {"torch-fp32": dir_bytes(sorted(model_dir.glob("*.safetensors")))}  # large models: shards
    rows = {**targets(m, probe()), **comparisons(compare, probe(), tuple(m.precisions))}
    run_rows(rows, common, bundle, {"model_dir": str(model_dir)}, raw, sizes)
    return raw, sizes


def arch_uses(arch: str, question_tokens: int, answer_tokens: int) -> list[Any]:
    """How one answer of the random-weight ``arch`` uses its graphs (floor.Use), as its family
    runs them (export/families/<family>.py: floor_uses)."""
    from edgevqa.families import registry

    family = registry.family_of_arch(arch)
    config = registry.side(family, "train").arch_config(arch)
    return registry.side(family, "export").floor_uses(config, question_tokens, answer_tokens)


def matmul_floors(
    fp32_dir: Path, uses: list[Any], precisions: tuple[str, ...], work: Path
) -> dict[str, dict[str, Any]]:
    """floor.py for each CPU precision of a bundle (fp16 is for GPUs; calibrated int8 needs data);
    an OpenVINO path has its base's weights (int4+ov: int8 vision, int4 decoder): its base's floor."""
    from edgevqa.bench import floor
    from edgevqa.export.quantize import QUANTIZERS

    floors = {
        p: floor.measure(fp32_dir, uses, p, work)
        for p in precisions
        if p == "fp32" or (p in QUANTIZERS and p != "fp16")
    }
    for p, base in OPENVINO_VISION.items():
        if p in precisions and base in floors:
            floors[p] = {**floors[base], "same_as": base}
    return floors


def export_in_child(family: str, model_dir: Path, root: Path) -> None:
    """``root/fp32``: the graphs of the model saved at ``model_dir``, exported by another process
    (its memory goes back to the system when it ends)."""
    code = "import sys; from edgevqa.bench.runner import _export_graphs; _export_graphs(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, family, str(model_dir), str(root)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(
            f"exporting {model_dir} failed in its process (exit code {proc.returncode}):\n{tail}"
        )


def _export_graphs(family: str, model_dir: str, root: str) -> None:
    from edgevqa.export.exporter import export_graphs
    from edgevqa.families import registry

    loaded = registry.side(family, "train").load_pretrained(model_dir)
    export_graphs(loaded.model, registry.get(family), Path(root))


def build_arch_bundle(
    arch: str,
    work: Path,
    model_dir: Path,
    bundle: Path,
    precisions: tuple[str, ...],
    words: list[str],
    question_tokens: int,
    answer_tokens: int,
) -> tuple[Path, str]:
    """Random-weight model saved for PyTorch and exported for onnxruntime (same weights)."""
    import torch

    from edgevqa.export.exporter import make_manifest, quantize_graphs, seal
    from edgevqa.families import registry
    from edgevqa.train.tokenizer import as_saved

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    family = registry.get(registry.family_of_arch(arch))
    fam = registry.side(family.family, "train")
    tok = fam.arch_tokenizer(words, work / "tokenizer")
    loaded = fam.arch(arch, tok)
    model = loaded.model
    log.info("bench: %s has %.1f M parameters", arch, sum(p.numel() for p in model.parameters()) / 1e6)
    with atomic.directory(model_dir, overwrite=True) as tmp:
        fam.save_model_dir(loaded, tmp)
    manifest = make_manifest(
        loaded, family, list(precisions), 64, answer_tokens, {"arch": arch, "random_weights": True}
    )
    # the ONNX export runs in a process of its own, from the saved folder: torch.export keeps
    # the last exported graph's weights referenced after the model is gone (measured: with a 3B
    # model, 8 GB still held when the quantizers started, which then ran out of memory)
    del model, loaded
    gc.collect()
    image = noise_image(work / "image.png", np.random.default_rng(0))
    # whole words of the tokenizer's own vocabulary: one token each (BLIP adds [CLS] and [SEP])
    question = " ".join([w for w in words * 4 if w.isalpha()][: question_tokens - 2])
    with atomic.directory(bundle, overwrite=True) as tmp:
        export_in_child(family.family, model_dir, tmp)
        as_saved(tok).backend_tokenizer.save(str(tmp / "tokenizer.json"))
        quantize_graphs(family, tmp, list(precisions))
        if static := [p for p in precisions if p == "int8-static" or p in OPENVINO_VISION]:
            static_graphs(family, tmp, manifest, work, question, static)
        seal(tmp, manifest)
    return image, question


def noise_image(path: Path, rng: np.random.Generator) -> Path:
    """A 512 px grey image of uniform noise at ``path`` (random weights: as typical as any)."""
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8), mode="L").save(path)
    return path


def static_graphs(
    family: Any, root: Path, manifest: Any, work: Path, question: str, precisions: list[str], n: int = 8
) -> None:
    """The calibrated graphs of ``precisions`` (int8-static, the OpenVINO paths' vision graphs),
    calibrated as ``edgevqa export`` does, on ``n`` random images of the bench's kind asked the
    bench's question (random weights: any input is as typical as another)."""
    from edgevqa.bundle import write_manifest
    from edgevqa.export.exporter import static_int8_graphs

    rng = np.random.default_rng(1)
    (work / "calibration").mkdir(parents=True, exist_ok=True)
    items = [(noise_image(work / "calibration" / f"{i}.png", rng), question) for i in range(n)]
    write_manifest(root, manifest)  # the fp32 graphs answer the calibration questions
    static_int8_graphs(root, family, items, precisions=precisions)


# ---------------------------------------------------------------------------------------------


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "report.json", report)
    atomic.write_text(out / "report.md", markdown_report(report))
    plot(out, report)


def first_start_what(name: str) -> str:
    """What a backend's first start on a machine does beyond a later one."""
    if name.startswith("openvino"):
        return "compiles its graphs into its cache"
    return "builds its optimized-graph cache"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown_table(report: dict[str, Any]) -> str:
    b = report["backends"]
    if report["kind"] == "arch":
        rows = [
            "| backend | p50 ms | p95 ms | speed-up vs torch | peak RSS MB | RSS vs torch | MB on disk | "
            "token agreement | cold start s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in b.items():
            if "failed" in r:
                rows.append(f"| {name} | {r['failed']} | | | | | | {r['bytes'] / 1e6:.1f} | | |")
                continue
            rows.append(
                f"| {name} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
                f"{r['speedup_vs_torch']:.2f}x | {r['peak_rss_mb']:.0f} | {r['rss_vs_torch']:.2f}x | "
                f"{r['bytes'] / 1e6:.1f} | {_pct(r['token_agreement'])} | {r['first_answer_s']:.2f} |"
            )
        rows += [
            f"\n{name}: first start on a machine ({first_start_what(name)}) "
            f"{r['first_start_s']:.2f} s, peak RSS {r['first_start_peak_rss_mb']:.0f} MB; "
            "a further question about the same image (its encoding reused): p50 "
            f"{r['follow_up_ms']['p50']:.1f} ms, {r['follow_up_speedup_vs_torch']:.1f}x faster than "
            "PyTorch's whole answer"
            for name, r in b.items()
            if "follow_up_ms" in r
        ]
        timed = [(n, r) for n, r in b.items() if "first_token_ms" in r]
        if timed:  # inside each whole answer above
            rows.append(
                "\n| backend | first token p50 ms | p95 | decode ms per further token p50 | p95 |\n"
                "|---|---|---|---|---|"
            )
            rows += [
                f"| {n} | {r['first_token_ms']['p50']:.1f} | {r['first_token_ms']['p95']:.1f} | "
                f"{r.get('ms_per_token', {}).get('p50', float('nan')):.2f} | "
                f"{r.get('ms_per_token', {}).get('p95', float('nan')):.2f} |"
                for n, r in timed
            ]
        if report.get("matmul_floor"):
            rows.append(
                "\nMatmul floor: the bundle's weight matmuls alone, quantized as the precision, each "
                "graph's timed on this machine at the rows of one answer (fastest of several runs), times "
                "its calls per answer. Attention, normalization and activations are not counted, so an "
                "answer with these weights takes longer than this here. Beside it, the onnx answer's own "
                "p50 and its stages as the runtime times them.\n\n"
                "| precision | floor ms | at most x faster than torch | answer p50 ms | answer / floor | "
                "floor by graph ms | answer stages p50 ms |\n|---|---|---|---|---|---|---|"
            )
            for p, f in report["matmul_floor"].items():
                r = b.get(f"onnx-{p}", {})
                p50 = r.get("latency_ms", {}).get("p50")
                graphs = ", ".join(f"{g} {x['ms']:.1f}" for g, x in f["by_graph"].items())
                stages = ", ".join(
                    f"{k.removesuffix('_ms')} {v:.1f}" for k, v in r.get("stages_ms", {}).items()
                )
                answer = f"{p50:.1f} | {p50 / f['ms']:.2f}x" if p50 else "- | -"
                most = f"{f['max_speedup_vs_torch']:.2f}x"
                name = f"{p} (its weights are {f['same_as']}'s)" if "same_as" in f else p
                rows.append(f"| {name} | {f['ms']:.1f} | {most} | {answer} | {graphs} | {stages} |")
        return "\n".join(rows)
    rows = [
        "| backend | overall | closed | open | agreement | p50 ms | p95 ms | cold start s | peak RSS MB | "
        "MB on disk |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in b.items():
        a = r["accuracy"]
        rows.append(
            f"| {name} | {_pct(a['overall'])} | {_pct(a.get('closed'))} | {_pct(a.get('open'))} | "
            f"{_pct(r['agreement'])} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
            f"{r['first_answer_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['bytes'] / 1e6:.2f} |"
        )
    base = report["baseline"]
    rows.append(
        f"| majority baseline | {_pct(base['overall'])} | {_pct(base.get('closed'))} | "
        f"{_pct(base.get('open'))} | | | | | | |"
    )
    if auto := report.get("auto"):
        rows.append(
            f"\n`--precision auto` on this machine: {auto['precision']} (the fastest gated precision here, "
            + ", ".join(f"{p} {ms:.1f} ms" for p, ms in auto["p50_ms"].items())
            + ")"
        )
    for name, r in b.items():
        if "follow_up_ms" in r and "rank" in r:
            rk = r["rank"]
            rows.append(
                f"\n{name}: first start on a machine ({first_start_what(name)}) "
                f"{r['first_start_s']:.2f} s, peak RSS {r['first_start_peak_rss_mb']:.0f} MB; "
                f"a further question about the same image p50 {r['follow_up_ms']['p50']:.1f} ms; "
                f"rank mode on closed questions p50 {rk['latency_ms']['p50']:.1f} ms, exact match "
                f"{_pct(rk['accuracy_closed'])}, same answer as PyTorch's generate "
                f"{_pct(rk['agreement_with_generate'])}"
            )
    return "\n".join(rows)


def cores_words(mach: dict[str, Any]) -> str:
    """ "2 cores", or "2 of its 16 cores" where the run was pinned to some of them."""
    of = f" of its {mach['machine_cores']}" if mach.get("machine_cores") else ""
    return f"{mach.get('cores')}{of} cores"


def markdown_report(report: dict[str, Any]) -> str:
    mach = report["machine"]
    head = (
        f"# edgevqa bench ({report['kind']})\n\nMachine: {cpu_words(mach)}, {cores_words(mach)}, "
        f"torch {mach.get('torch')}, onnxruntime {mach.get('onnxruntime')}, Python {mach.get('python')}.\n\n"
    )
    if report["kind"] == "arch":
        head += (
            f"{report['arch']} with random weights; one image, a {report['question_tokens']}-token question, "
            f"answers of exactly {report['answer_tokens']} tokens, {report['repeats']} timed answers per "
            "backend after warm-up; each backend in its own process.\n\n"
        )
        return head + markdown_table(report) + "\n"
    head += (
        f"{report['n']} questions of the {report['split']} split of `{report['data']}`; latency is one "
        "whole answer (image file to text), each backend in its own process.\n\n"
    )
    cats = sorted(report["baseline"]["by_category"])
    names = list(report["backends"])
    rows = ["| category | " + " | ".join(names) + " | majority baseline |", "|---" * (len(names) + 2) + "|"]
    for c in cats:
        vals = [_pct(report["backends"][n]["accuracy"]["by_category"].get(c)) for n in names]
        rows.append(f"| {c} | " + " | ".join(vals) + f" | {_pct(report['baseline']['by_category'][c])} |")
    return head + markdown_table(report) + "\n\n## Exact match per category\n\n" + "\n".join(rows) + "\n"


def plot(out: Path, report: dict[str, Any]) -> None:
    """latency_vs_agreement.png: p50 latency against agreement with PyTorch, one point per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot (pip install 'edgevqa[bench]')")
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    key = "token_agreement" if report["kind"] == "arch" else "agreement"
    for name, r in report["backends"].items():
        if "failed" in r:
            continue
        lat = r["latency_ms"]  # the bar runs from p50 to p95: the spread a user will feel
        ax.errorbar(lat["p50"], 100 * r[key], xerr=[[0], [lat["p95"] - lat["p50"]]], fmt="o", capsize=3)
        ax.annotate(name, (r["latency_ms"]["p50"], 100 * r[key]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("latency per answer, p50 (ms)")
    ax.set_ylabel(("token" if report["kind"] == "arch" else "answer") + " agreement with PyTorch (%)")
    ax.set_xlim(left=0)
    what = report.get("arch") or f"{report['n']} {report['split']} questions"
    ax.set_title(f"edgevqa bench: {what} (bars: p50 to p95)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out / ".latency_vs_agreement.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out / "latency_vs_agreement.png")
