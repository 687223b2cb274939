"""Constants the CLI needs without importing the converters (which need gguf, numpy, tokenizers)."""

FORMATS = ("gguf", "onnx")
DEFAULT_MAX_KL = 0.1  # mean KL(unquantized || quantized) per token allowed by --quant auto
