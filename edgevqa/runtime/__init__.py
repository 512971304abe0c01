"""The torch-free runtime: answer from a bundle with onnxruntime, numpy, tokenizers and pillow.

Never imports torch, transformers or peft (tests/test_imports.py proves it).
"""

from edgevqa.runtime.pipeline import Answer, VQAPipeline

__all__ = ["Answer", "VQAPipeline"]
