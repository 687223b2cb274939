"""Converters from Hugging Face checkpoints to quantized GGUF and ONNX artifacts (see DESIGN.md)."""
