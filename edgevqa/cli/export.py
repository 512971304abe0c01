"""`edgevqa export`: merge, export, quantize, validate, write a bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app, need, precisions


@app.command()
def export(
    run: Annotated[
        Path,
        typer.Argument(help="A training run, a model folder (save_pretrained layout) or a Hugging Face id."),
    ],
    out: Annotated[Path, typer.Option(help="Bundle folder to write.")],
    adapter: Annotated[
        Path | None, typer.Option(help="A peft (LoRA) adapter folder to merge in (one saved elsewhere).")
    ] = None,
    max_question_tokens: Annotated[
        int, typer.Option(help="Model folders and hub ids: longest question (PaliGemma: prompt) in tokens.")
    ] = 32,
    max_answer_tokens: Annotated[
        int, typer.Option(help="Model folders and hub ids: most answer tokens generated.")
    ] = 8,
    precision: Annotated[
        list[str],
        typer.Option(
            help="fp32, int8 (CPU), int4 (CPU: 4-bit decoder weights), fp16 (GPU), int8-static "
            "(calibrated QDQ), int8+ov / int4+ov (CPU: int8 / int4 with the vision graph in "
            "OpenVINO, calibrated; needs the openvino extra); repeat or comma-separate; the first "
            "is the default."
        ),
    ] = ["fp32", "int8"],  # noqa: B006
    data: Annotated[Path | None, typer.Option(help="Dataset for validation (default: the run's).")] = None,
    validate_limit: Annotated[
        int, typer.Option(help="Validation questions compared with PyTorch (0: all).")
    ] = 200,
    min_agreement: Annotated[
        float, typer.Option(help="Refuse the export below this answer agreement.")
    ] = 0.99,
    calibrate: Annotated[
        Path | None,
        typer.Option(help="Dataset whose train split calibrates int8-static (default: the run's)."),
    ] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration questions for int8-static.")] = 64,
    calib_method: Annotated[
        str, typer.Option(help="Activation ranges for int8-static: minmax, entropy or percentile.")
    ] = "minmax",
    fallback: Annotated[
        bool,
        typer.Option(
            help="If a quantized precision fails, keep its most sensitive " "MatMuls in fp32 and retry."
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Write the bundle even if validation fails.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    trt: Annotated[
        bool,
        typer.Option(
            "--trt",
            help="Also build TensorRT engines for this GPU (fp16 and/or int8 of --precision; "
            "needs tensorrt and a CUDA GPU).",
        ),
    ] = False,
    trt_max_batch: Annotated[int, typer.Option(help="Largest batch the TensorRT profiles admit.")] = 4,
    trt_timing_cache: Annotated[
        Path | None, typer.Option(help="TensorRT timing cache file (default: in the edgevqa cache).")
    ] = None,
    int4_prefill: Annotated[
        str,
        typer.Option(
            help="PaliGemma, Q-Former: the weights int4's prompts run with: int8 (faster prompts, "
            "both decoders loaded) or int4 (least memory)."
        ),
    ] = "int8",
) -> None:
    """Merge LoRA, export ONNX graphs, quantize, validate against PyTorch and write a bundle."""
    need("torch", "transformers", "peft", "onnx", "onnxscript")
    from edgevqa.config import ExportConfig
    from edgevqa.export import export as run_export

    cfg = ExportConfig(
        run=str(run),
        adapter=str(adapter) if adapter else "",
        max_question_tokens=max_question_tokens,
        max_answer_tokens=max_answer_tokens,
        out=str(out),
        precisions=precisions(precision),
        validate_limit=validate_limit,
        min_agreement=min_agreement,
        fallback=fallback,
        calibrate=str(calibrate) if calibrate else "",
        calib_size=calib_size,
        calib_method=calib_method,
        force=force,
        overwrite=overwrite,
        trt=trt,
        trt_max_batch=trt_max_batch,
        trt_timing_cache=str(trt_timing_cache) if trt_timing_cache else "",
        int4_prefill=int4_prefill,
    )
    bundle = run_export(cfg, data=str(data) if data else None)
    from edgevqa.export.exporter import summary

    for line in summary(json.loads((bundle / "fidelity.json").read_text())):
        typer.echo(line)
    typer.echo(f'next: edgevqa ask IMAGE "QUESTION" --model {bundle}')
