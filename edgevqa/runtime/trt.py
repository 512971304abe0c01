"""Native TensorRT engines behind the same ``run(output_names, feeds)`` call as an onnxruntime
session, so the pipeline does not care which one it holds (tensorrt + cuda-python, no torch).

Each call copies the numpy inputs to the GPU, sets the input shapes on the execution context
(within the engine's one optimization profile), allocates outputs of the shapes TensorRT then
reports, runs on one stream and copies the outputs back. Device buffers are kept and only
grown, so a decoder loop does not allocate per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.errors import BundleError
from edgevqa.runtime.backends import cuda_runtime


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TrtGraph:
    def __init__(self, engine_path: Path):
        import tensorrt as trt

        self.trt, self.cudart = trt, cuda_runtime()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT cannot load {engine_path} (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def get_inputs(self) -> list[Any]:
        """Input descriptions with a ``name``, as onnxruntime's sessions give them."""
        return [type("Input", (), {"name": n})() for n in self.inputs]

    def get_outputs(self) -> list[Any]:
        return [type("Output", (), {"name": n})() for n in self.outputs]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr, size = _check(self.cudart.cudaMalloc(max(nbytes, 1))), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host = {}
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            host[name] = arr
            ptr = self._buffer(name, arr.nbytes)
            self.context.set_input_shape(name, arr.shape)
            self.context.set_tensor_address(name, ptr)
            _check(self.cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = np.empty(shape, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, outs[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, arr in outs.items():
            ptr = self._buffers[name][0]
            _check(self.cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, d2h, self.stream))
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return [outs[n] for n in (output_names or self.outputs)]

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self.cudart.cudaFree(ptr)
