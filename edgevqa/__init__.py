"""edgevqa: adapt a small VLM to radiology VQA and ship it as a verified, torch-free ONNX bundle."""

__version__ = "0.1.0"
