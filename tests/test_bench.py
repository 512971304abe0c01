"""edgevqa bench on the test bundle: every backend answers the same questions, one report."""

from __future__ import annotations

import json

from edgevqa.bench.runner import bench_bundle
from edgevqa.bundle import load_manifest
from edgevqa.data.records import load_split


def test_bench_bundle_report(bundle, synth_data, tmp_path):
    out = tmp_path / "report"
    report = bench_bundle(bundle, synth_data, out, limit=8)
    saved = json.loads((out / "report.json").read_text())
    assert saved["n"] == 8 and set(saved["backends"]) == {"torch-fp32", "onnx-fp32", "onnx-int8"}
    b = saved["backends"]
    assert b["torch-fp32"]["agreement"] == 1.0
    assert b["onnx-fp32"]["agreement"] == 1.0  # same answers as PyTorch on the same inputs
    for r in b.values():
        assert set(r["accuracy"]) >= {"overall", "closed", "open", "by_category"}
        assert r["latency_ms"]["n"] == 8 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p95"]
        assert r["peak_rss_mb"] > 0 and r["bytes"] > 0
    assert b["onnx-int8"]["bytes"] < b["onnx-fp32"]["bytes"]
    for name in ("onnx-fp32", "onnx-int8"):  # follow-up questions and rank mode, onnx only
        assert b[name]["follow_up_ms"]["n"] > 0
        rk = b[name]["rank"]
        assert rk["latency_ms"]["n"] == sum(
            r.answer_type == "closed" for r in load_split(synth_data, "test")[:8]
        )
        assert 0 <= rk["accuracy_closed"] <= 1 and 0 <= rk["agreement_with_generate"] <= 1
    assert "rank" not in b["torch-fp32"]
    for name in ("onnx-fp32", "onnx-int8"):  # a first start on the machine, reported apart
        assert b[name]["first_start_s"] > 0 and b[name]["first_start_peak_rss_mb"] > 0
    assert b["torch-fp32"]["first_start_s"] is None
    assert 0 <= saved["baseline"]["overall"] <= 1
    md = (out / "report.md").read_text()
    assert "onnx-int8" in md and "majority baseline" in md and "rank mode" in md and "cold start" in md
    assert (out / "latency_vs_agreement.png").stat().st_size > 1000
    assert report["backends"].keys() == saved["backends"].keys()
    auto = saved["auto"]  # the gated precision fastest in this bench: what --precision auto picks
    assert auto["p50_ms"][auto["precision"]] == min(auto["p50_ms"].values())
    assert {f"onnx-{p}" for p in auto["p50_ms"]} <= set(b) and "`--precision auto` on this machine" in md


def test_bench_arch_fixed_length_answers(tmp_path):
    """--arch on the tiny architecture: same weights on both sides, answers of exactly N tokens."""
    from edgevqa.bench.runner import bench_arch

    report = bench_arch(
        "tiny-blip",
        tmp_path / "arch",
        repeats=2,
        answer_tokens=4,
        precisions=("fp32", "int8", "int8-static"),
        compare=("torch-bf16",),
    )
    from edgevqa.runtime.backends import probe

    b = report["backends"]
    ov = probe().offers("openvino")  # the int8 path with OpenVINO's vision graph, where installed
    assert set(b) == {"torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int8-static"} | (
        {"onnx-int8+ov"} if ov else set()
    )
    assert b["onnx-int8-static"]["latency_ms"]["n"] == 2  # calibrated on the bench's own images
    assert b["torch-bf16"]["bytes"] == b["torch-fp32"]["bytes"]  # the same weights, bf16 autocast
    assert b["onnx-fp32"]["token_agreement"] == 1.0  # random weights, yet the same greedy tokens
    assert b["torch-fp32"]["speedup_vs_torch"] == 1.0
    for r in b.values():
        assert r["latency_ms"]["n"] == 2 and r["speedup_vs_torch"] > 0 and r["rss_vs_torch"] > 0
    for name in ("onnx-fp32", "onnx-int8"):  # a further question reuses the image encoding
        assert b[name]["follow_up_ms"]["n"] == 2 and b[name]["follow_up_speedup_vs_torch"] > 0
    assert "follow_up_ms" not in b["torch-fp32"]
    for name in ("onnx-fp32", "onnx-int8"):  # the runtime's split of each answer, beside the floor
        assert {"vision_ms", "question_ms", "decode_ms"} <= set(b[name]["stages_ms"])
        assert sum(b[name]["stages_ms"].values()) <= b[name]["latency_ms"]["p50"] * 1.5
    floors = report["matmul_floor"]  # the weight matmuls alone, per CPU precision
    assert set(floors) == {"fp32", "int8"} | ({"int8+ov"} if ov else set())
    if ov:  # the same weights as int8's bundle: its floor, not measured again
        assert floors.pop("int8+ov") == {**floors["int8"], "same_as": "int8"}
        assert b["onnx-int8+ov"]["token_agreement"] >= 0 and b["onnx-int8+ov"]["follow_up_ms"]["n"] == 2
    for f in floors.values():
        assert set(f["by_graph"]) == {"vision_encoder", "question_encoder", "decoder_step"}
        assert f["by_graph"]["decoder_step"]["calls"] == 4 and f["by_graph"]["vision_encoder"]["rows"] == 17
        assert f["ms"] == sum(g["ms"] for g in f["by_graph"].values()) > 0
        assert f["max_speedup_vs_torch"] == b["torch-fp32"]["latency_ms"]["p50"] / f["ms"]
    md = (tmp_path / "arch" / "report.md").read_text()
    assert "speed-up vs torch" in md and "4 tokens" in md and "same image" in md and "Matmul floor" in md


def test_bench_arch_paligemma_prefill_and_steps(tmp_path):
    """--arch on tiny-paligemma: the same greedy tokens in PyTorch and ONNX, and a floor that
    counts the prefill (image + prompt at once, the LM head on one position) and the steps."""
    from edgevqa.bench.runner import bench_arch

    report = bench_arch(
        "tiny-paligemma", tmp_path / "arch", repeats=2, answer_tokens=4, precisions=("fp32",), compare=()
    )
    b = report["backends"]
    assert set(b) == {"torch-fp32", "onnx-fp32"}
    assert b["onnx-fp32"]["token_agreement"] == 1.0
    f = report["matmul_floor"]["fp32"]["by_graph"]
    assert set(f) == {"vision_encoder", "decoder_prefill", "decoder_step"}
    assert f["vision_encoder"]["rows"] == 16 and f["decoder_step"]["calls"] == 3
    for r in b.values():  # time to first token and per further token, inside the same answers
        assert 0 < r["first_token_ms"]["p50"] < r["latency_ms"]["p50"] and r["ms_per_token"]["n"] == 2
    assert "first token p50 ms" in (tmp_path / "arch" / "report.md").read_text()
    assert f["decoder_prefill"]["rows"] == 16 + 1 + 12 + 1  # image, bos, "answer en" + 10 words, "\n"


def test_bench_arch_qformer_counts_the_image_prefix_once(tmp_path):
    """--arch on tiny-qformer: the same greedy tokens in PyTorch and ONNX; the floor counts the
    query tokens' prefill (once per image), the prompt's on their cache, then the steps. Asked for
    int4 alone, fp32 comes along: the floors and the OpenVINO path's calibration read its graphs
    (asking without it once failed in the calibration)."""
    from edgevqa.bench.runner import bench_arch
    from edgevqa.runtime.backends import probe

    report = bench_arch(
        "tiny-qformer", tmp_path / "arch", repeats=2, answer_tokens=4, precisions=("int4",), compare=()
    )
    b = report["backends"]
    ov = {"onnx-int4+ov"} if probe().offers("openvino") else set()
    assert set(b) == {"torch-fp32", "onnx-fp32", "onnx-int4", *ov}
    assert b["onnx-fp32"]["token_agreement"] == 1.0  # random weights: int4 may flip a close token
    f = report["matmul_floor"]["fp32"]["by_graph"]
    assert set(f) == {"vision_encoder", "decoder_image", "decoder_prefill", "decoder_step"}
    assert f["vision_encoder"]["rows"] == 17 and f["decoder_image"]["rows"] == 8  # patches + [CLS]; queries
    assert f["decoder_step"]["calls"] == 3


def test_bench_targets_are_every_backend_and_precision_the_machine_runs(bundle):
    from edgevqa.bench.runner import targets
    from edgevqa.runtime.backends import Gpu, Machine

    m = load_manifest(bundle, verify=False)
    cpu = Machine(("CPUExecutionProvider",), None, None)
    assert targets(m, cpu) == {
        "onnx-fp32": {"precision": "fp32", "runtime_backend": "cpu"},
        "onnx-int8": {"precision": "int8", "runtime_backend": "cpu"},
    }
    gpu = Machine(("CUDAExecutionProvider", "CPUExecutionProvider"), "10.13.0", Gpu("NVIDIA H200", "9.0"))
    m.precisions["trt-fp16"] = {}
    m.trt["trt-fp16"] = {
        "built_for": {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.13.0"}
    }
    t = targets(m, gpu)
    assert set(t) == {"onnx-fp32", "onnx-int8", "cuda-fp32", "cuda-int8", "trt-fp16"}
    assert t["trt-fp16"]["runtime_backend"] == "trt-engine"
    assert "trt-fp16" not in targets(m, cpu)  # engines only where they were built


def test_comparison_rows_are_what_the_machine_runs():
    from edgevqa.bench.runner import comparisons

    with_ov = type("WithOpenVino", (), {"offers": lambda self, b: b == "openvino"})()
    without = type("WithoutOpenVino", (), {"offers": lambda self, b: False})()
    both = ("torch-bf16", "openvino")
    assert set(comparisons(both, with_ov)) == {"torch-bf16", "openvino-fp32", "openvino-fp32-f32"}
    assert comparisons(("openvino",), with_ov)["openvino-fp32-f32"]["env"] == {
        "EDGEVQA_OPENVINO_PRECISION": "f32"
    }
    assert set(comparisons(both, without)) == {"torch-bf16"}
    assert comparisons((), with_ov) == {}
    # a bundle with Q/DQ graphs: OpenVINO runs them too, at f32 outside the int8 matmuls
    static = comparisons(("openvino",), with_ov, ("fp32", "int8-static"))
    assert static["openvino-int8-static"] == {
        "precision": "int8-static",
        "runtime_backend": "openvino",
        "env": {"EDGEVQA_OPENVINO_PRECISION": "f32"},
    }
    assert "openvino-int8-static" not in comparisons(("openvino",), without, ("int8-static",))
    # one row by its name: OpenVINO at its default precision only (a short run on a borrowed machine)
    assert set(comparisons(("openvino-fp32",), with_ov, ("fp32", "int8-static"))) == {"openvino-fp32"}


def test_reports_name_the_cpu_by_family_and_the_instruction_sets_that_pick_kernels():
    from edgevqa.bench.runner import cpu_info, cpu_words

    xeon = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu avx2 avx512f avx512_vnni "
        "avx512_bf16 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: other\n"
    )
    info = cpu_info(xeon)
    assert info == {
        "cpu": "Intel(R) Xeon(R) Platinum 8481C",
        "cpu_family_model": "6/143",
        "cpu_flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"],
    }
    assert cpu_words(info) == (
        "Intel(R) Xeon(R) Platinum 8481C (family/model 6/143; avx2, avx512f, avx512_vnni, avx512_bf16, "
        "amx_int8, amx_bf16)"
    )
    zen3 = cpu_words(
        cpu_info("cpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: sse avx2 fma\n")
    )
    assert zen3 == "AMD EPYC (family/model 25/1; avx2)"
    assert cpu_words({"cpu": "Apple M2"}) == "Apple M2"  # nothing more known: the name alone


def test_reports_count_the_cores_the_run_could_use_not_the_machines(monkeypatch):
    """A run pinned to 2 of 16 cores (taskset) says so: onnxruntime and torch used the 2."""
    from edgevqa.bench import runner
    from edgevqa.runtime import session

    monkeypatch.setattr(session, "default_threads", lambda: 2)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    mach = runner.machine()
    assert (mach["cores"], mach["machine_cores"]) == (2, 16)
    assert runner.cores_words(mach) == "2 of its 16 cores"
    assert runner.cores_words({"cores": 2}) == "2 cores"


def test_the_graph_engines_benchmark_runs_one_graph_in_every_engine(tmp_path):
    """benchmarks/graph_engines.py on tiny-blip: the vision graph from the fp32, dynamic int8 and
    int8-static files of one bundle, fed the input the fp32 bundle recorded; onnxruntime's fp32 is
    the reference (difference 0), the quantized graphs differ a little; OpenVINO's rows where
    OpenVINO is installed."""
    import importlib.util

    from conftest import benchmark_script

    script = benchmark_script("graph_engines")
    bundle, feed = script.build("tiny-blip", tmp_path, "vision_encoder")
    assert {p.name for p in bundle.iterdir() if p.is_dir()} >= {"fp32", "int8", "int8-static"}
    assert feed["pixel_values"].shape[0] == 1
    rows = script.engines(bundle, "vision_encoder", feed, repeats=2, threads=1)
    ort = ["onnxruntime fp32", "onnxruntime int8", "onnxruntime int8-static"]
    assert list(rows)[:3] == ort
    assert rows["onnxruntime fp32"]["rel_diff_vs_fp32"] == 0.0
    for name in ort[1:]:
        assert 0 < rows[name]["rel_diff_vs_fp32"] < 0.2
    for r in rows.values():
        assert r["n"] == 2 and 0 < r["min"] <= r["p50"]
    has_ov = importlib.util.find_spec("openvino") is not None
    assert any(n.startswith("openvino int8-static (f32") for n in rows) == has_ov
    md = script.markdown({"arch": "tiny-blip", "graph": "vision_encoder", "threads": 1, "rows": rows,
                          "machine": script.machine(), "openvino": None})  # fmt: skip
    assert "| onnxruntime int8 |" in md and "1.00x" in md
