"""Shared fixtures: a small synthetic dataset, a tiny BLIP trained for a few steps, a LoRA run
on top of it, and its exported bundle. All built once per test session, no downloads."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the runtime's optimized-graph cache goes to a throwaway folder, never the user's ~/.cache
os.environ.setdefault("EDGEVQA_CACHE_DIR", tempfile.mkdtemp(prefix="edgevqa-test-cache-"))

# A process in which torch, transformers and peft cannot be imported (tests/test_imports.py).
BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "peft"}:
            raise ImportError(f"blocked for this test: {name}")
        return None
sys.meta_path.insert(0, _Block())
"""


def ruining(convert, scope: str):
    """``convert(src, dst, exclude)`` (a quantizer or precision conversion) that also wrecks the
    weight of every MatMul from the torch module ``scope`` (random noise x 10), except the nodes
    in ``exclude``: a layer the fidelity gate must find and keep in fp32."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgevqa.export.fallback import _scope

    def ruin(src, dst, exclude=()):
        m = onnx.load(str(src))
        inits = {i.name: i for i in m.graph.initializer}
        for node in m.graph.node:
            if node.op_type == "MatMul" and _scope(node) == scope and node.name not in exclude:
                w = inits[node.input[1]]
                noise = np.random.default_rng(1).standard_normal(tuple(w.dims)).astype(np.float32)
                w.CopyFrom(numpy_helper.from_array(noise * 10, w.name))
        with tempfile.TemporaryDirectory() as tmp:  # same file name: quantizers go by the graph's name
            ruined = Path(tmp) / Path(src).name
            onnx.save(m, str(ruined))
            convert(ruined, Path(dst), exclude)
        return dst

    return ruin


def benchmark_script(name: str):
    """``benchmarks/NAME.py`` (a script, not a package) as a module."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edgevqa_cmd(*args: str, block_torch: bool = False) -> list[str]:
    """argv that runs the CLI with this interpreter (optionally with torch blocked)."""
    code = (
        BLOCK_TORCH if block_torch else ""
    ) + "import sys; from edgevqa.cli import main; main(sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from edgevqa.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("data") / "synth"
    generate(out, SynthConfig(n_images=80, seed=1), progress=False)
    return out


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, synth_data) -> Path:
    from edgevqa.config import TrainConfig
    from edgevqa.train import train

    out = tmp_path_factory.mktemp("runs") / "base"
    return train(
        TrainConfig(
            base="tiny-blip",
            data=str(synth_data),
            out=str(out),
            max_steps=40,
            lr=1e-3,
            warmup_steps=5,
            batch_size=16,
            eval_every=0,
            checkpoint_every=0,
            image_size=64,
            threads=1,
        ),
        progress=False,
    )


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, synth_data, base_run) -> Path:
    from edgevqa.config import TrainConfig
    from edgevqa.train import train

    out = tmp_path_factory.mktemp("runs") / "lora"
    return train(
        TrainConfig(
            base=str(base_run),
            data=str(synth_data),
            out=str(out),
            lora=True,
            max_steps=10,
            lr=5e-3,
            warmup_steps=2,
            batch_size=16,
            eval_every=0,
            checkpoint_every=0,
            threads=1,
        ),
        progress=False,
    )


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, lora_run) -> Path:
    from edgevqa.config import ExportConfig
    from edgevqa.export import export

    out = tmp_path_factory.mktemp("bundles") / "bundle"
    # force: an almost untrained model can have near-ties that int8 flips; the gate has its own tests
    return export(
        ExportConfig(
            run=str(lora_run), out=str(out), precisions=["fp32", "int8"], validate_limit=40, force=True
        ),
        progress=False,
    )


@pytest.fixture(autouse=True)
def _no_global_thread_pool(monkeypatch):
    """CLI commands that own their process switch onnxruntime to one global thread pool, after
    which every session asking for its own threads fails (onnxruntime's quantization tools make
    such sessions). Tests call the CLI in this shared process too, so here it stays per-session;
    the global pool itself runs in the subprocess tests (CLI, bench workers)."""
    from edgevqa.runtime import session

    monkeypatch.setattr(session, "use_global_pool", lambda threads=0: False)


# -- PaliGemma: stage 0 (all weights, from scratch) -> stage 1 (projector) -> stage 2 (LoRA) -------


def _pg_train(out: Path, **kw) -> Path:
    from edgevqa.config import TrainConfig
    from edgevqa.train import train
    from edgevqa.train.recipes import config_for

    common = dict(eval_every=0, checkpoint_every=0, threads=1, batch_size=16, grad_accum=1)
    recipe = kw.pop("recipe", "default")
    cfg = (
        config_for(recipe, out=str(out), **common, **kw)
        if recipe != "default"
        else TrainConfig(out=str(out), warmup_steps=5, **common, **kw)
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def pg_base(tmp_path_factory, synth_data) -> Path:
    out = tmp_path_factory.mktemp("pg") / "base"
    return _pg_train(out, base="tiny-paligemma", data=str(synth_data), max_steps=30, lr=2e-3, image_size=32)


@pytest.fixture(scope="session")
def pg_projector(tmp_path_factory, synth_data, pg_base) -> Path:
    out = tmp_path_factory.mktemp("pg") / "projector"
    return _pg_train(out, recipe="projector", init=str(pg_base), data=str(synth_data), max_steps=4)


@pytest.fixture(scope="session")
def pg_lora(tmp_path_factory, synth_data, pg_projector) -> Path:
    out = tmp_path_factory.mktemp("pg") / "lora"
    return _pg_train(out, recipe="lora", init=str(pg_projector), data=str(synth_data), max_steps=4, lr=5e-3)


@pytest.fixture(scope="session")
def pg_bundle(tmp_path_factory, pg_lora) -> Path:
    """The stage-2 run's own model folder with its adapter given separately (as a published
    fine-tune is), exported with every CPU precision."""
    from edgevqa.config import ExportConfig
    from edgevqa.export import export
    from edgevqa.export.merge import read_run

    out = tmp_path_factory.mktemp("pg-bundles") / "bundle"
    base = read_run(pg_lora).base  # the projector run's model/ (HF format)
    cfg = ExportConfig(
        run=str(Path(base) / "model"),
        adapter=str(pg_lora / "adapter"),
        out=str(out),
        precisions=["fp32", "int8", "int4"],
        validate_limit=24,
        force=True,
    )
    return export(cfg, data=read_run(pg_lora).data, progress=False)


def hf_answer(proc, model, image, question: str, max_new: int = 8) -> list[int]:
    """A PaliGemma answer as a user of plain transformers gets it: processor, then greedy generate."""
    import torch

    inputs = proc(images=image, text="<image>answer en " + question, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    seq = out[0, inputs["input_ids"].shape[1] :].tolist()
    return seq[: seq.index(1) + 1] if 1 in seq else seq  # up to and including <eos> (id 1)


# -- Q-Former: stage 0 (all weights, from scratch) -> stage 1 (captions) -> stage 3 (VQA) ---------


@pytest.fixture(scope="session")
def qf_data(tmp_path_factory) -> Path:
    """The synthetic set with one caption per image (stage 1 reads captions, stage 3 questions)."""
    from edgevqa.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("qf-data") / "synth"
    generate(out, SynthConfig(n_images=80, seed=1), progress=False, captions=True)
    return out


@pytest.fixture(scope="session")
def qf_base(tmp_path_factory, qf_data) -> Path:
    out = tmp_path_factory.mktemp("qf") / "base"
    return _pg_train(out, base="tiny-qformer", data=str(qf_data), max_steps=30, lr=2e-3, image_size=32)


@pytest.fixture(scope="session")
def qf_caption(tmp_path_factory, qf_data, qf_base) -> Path:
    out = tmp_path_factory.mktemp("qf") / "caption"
    return _pg_train(
        out, recipe="qformer-caption", init=str(qf_base), data=str(qf_data), max_steps=4, lr=5e-3
    )


@pytest.fixture(scope="session")
def qf_vqa(tmp_path_factory, qf_data, qf_caption) -> Path:
    out = tmp_path_factory.mktemp("qf") / "vqa"
    return _pg_train(out, recipe="qformer-vqa", init=str(qf_caption), data=str(qf_data), max_steps=4, lr=5e-3)


@pytest.fixture(scope="session")
def qf_bundle(tmp_path_factory, qf_vqa) -> Path:
    """The stage-3 run exported with every CPU precision (its adapter merged into stage 1's model)."""
    from edgevqa.config import ExportConfig
    from edgevqa.export import export
    from edgevqa.runtime.backends import probe

    out = tmp_path_factory.mktemp("qf-bundles") / "bundle"
    # and the int4 path with OpenVINO's vision graph (encoder + Q-Former + projection), where installed
    ov = ["int4+ov"] if probe().offers("openvino") else []
    cfg = ExportConfig(
        run=str(qf_vqa),
        out=str(out),
        precisions=["fp32", "int8", "int4", *ov],
        validate_limit=24,
        force=True,
        calib_size=8,
    )
    return export(cfg, progress=False)


class _Recorded:
    """A session that notes (graph, new rows) for each call, then runs it."""

    def __init__(self, name, session, calls: list):
        self.name, self.session, self.calls = name, session, calls

    def run(self, outputs, feed):
        x = feed.get("inputs_embeds")
        self.calls.append((self.name, None if x is None else x.shape[1]))
        return self.session.run(outputs, feed)

    def __getattr__(self, attr):
        return getattr(self.session, attr)


def record_calls(pipe) -> list[tuple[str, int | None]]:
    """From now on, each graph call of ``pipe`` as (graph name, rows of inputs_embeds or None)."""
    calls: list = []
    for name, s in list(pipe.sessions.items()):  # the family's model holds this same dict
        pipe.sessions[name] = _Recorded(name, s, calls)
    return calls
