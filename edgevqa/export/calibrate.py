"""Static int8 (QDQ) with calibration on the user's own images and questions.

The fp32 bundle answers calibration questions while every graph's inputs are recorded; those
inputs (decoder steps included) calibrate the activation ranges of each graph. Weights are int8
per channel; only MatMul is quantized (quantizing Add/Mul/Softmax cost accuracy here). On CPU,
dynamic int8 is usually faster; static QDQ is what TensorRT's explicit int8 and GPUs need.

Methods: minmax (the range seen), entropy (the range minimising the KL divergence between the
fp32 and the int8 histogram) and percentile (99.999th percentile of |x|). onnxruntime's
histogram calibrators stack each activation over all the inputs of one call, which needs one
shape; question and answer lengths vary, so the feeds are grouped by shape and collected one group
per call (the histograms merge across calls), and the resulting ranges are handed to the
quantizer as per-tensor overrides.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.config import CALIB_METHODS as METHODS  # one list: the config checks the option
from edgevqa.export import onnxfile

log = logging.getLogger("edgevqa.export")


class _Recorder:
    """Stands in for an InferenceSession and keeps a copy of every feed it runs."""

    def __init__(self, session: Any, feeds: list[dict[str, np.ndarray]]):
        self.session, self.feeds = session, feeds

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
        self.feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return self.session.run(names, feed)

    def get_inputs(self) -> Any:
        return self.session.get_inputs()


def record_feeds(bundle: Path, items: list[tuple[Path, str]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of every graph while the fp32 graphs in ``bundle`` answer ``items`` (image, question)."""
    from edgevqa.runtime import VQAPipeline

    pipe = VQAPipeline.from_bundle(bundle, precision="fp32", verify=False, image_cache=0)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in pipe.sessions}
    # in place: the family's runtime model holds the same dict
    pipe.sessions.update({g: _Recorder(s, feeds[g]) for g, s in pipe.sessions.items()})
    for image, question in items:
        pipe.ask(image, question)
    return feeds


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over recorded feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def static_int8(feeds: dict[str, list[dict[str, np.ndarray]]], method: str = "minmax"):
    """A quantizer (src, dst, exclude) -> dst for the graphs whose calibration feeds are given."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")

    def quantize(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from edgevqa.export.quantize import _quiet_root

        cal = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[method]
        graph_feeds = feeds[Path(src).stem]
        options: dict[str, Any] = {"ActivationSymmetric": True}
        if method != "minmax":
            ranges = histogram_ranges(Path(src), graph_feeds, method)
            options["TensorQuantOverrides"] = {
                name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in ranges.items()
            }
            graph_feeds = graph_feeds[:1]  # ranges are set: the quantizer's own minmax pass is moot
        with _quiet_root():
            quantize_static(
                str(src),
                str(dst),
                _Reader(graph_feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                # 7-bit weights: on CPUs without VNNI (AVX2 only) the int8 kernels sum pairs of
                # u8 x s8 products in int16 and full-range weights saturate them: measured on an
                # AMD Zen 3, a test run answered 0% like PyTorch with 8-bit weights, 100% with 7
                # (the demo's run 97% -> 99%). A bundle runs on CPUs other than the exporter's.
                reduce_range=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                calibrate_method=CalibrationMethod.MinMax if method != "minmax" else cal,
                extra_options=options,
                use_external_data_format=onnxfile.is_external(src),
            )
        return dst

    return quantize


def shape_groups(feeds: list[dict[str, np.ndarray]]) -> list[list[dict[str, np.ndarray]]]:
    """Feeds grouped by the shapes of all their inputs, in first-seen order."""
    groups: dict[tuple, list[dict[str, np.ndarray]]] = {}
    for f in feeds:
        groups.setdefault(tuple((k, v.shape) for k, v in sorted(f.items())), []).append(f)
    return list(groups.values())


def histogram_ranges(src: Path, feeds: list[dict[str, np.ndarray]], method: str) -> dict[str, tuple]:
    """(rmin, rmax) of every MatMul input and output of ``src`` by entropy or percentile."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    from edgevqa.export.quantize import _quiet_root

    cal_method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]
    # the calibrators print progress lines to stdout: noise in an export's log
    quiet = contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory(prefix="edgevqa-calib-") as tmp, _quiet_root(), quiet:
        calibrator = create_calibrator(
            src,
            ["MatMul"],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=cal_method,
            extra_options={"symmetric": True},
            use_external_data_format=onnxfile.is_external(src),
        )
        for group in shape_groups(feeds):
            calibrator.collect_data(_Reader(group))
        ranges = calibrator.compute_data()
    return {name: tuple(float(x) for x in ranges[name].range_value) for name in ranges}
