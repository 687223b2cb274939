"""HF checkpoint -> GGUF: the writer, the vocabulary, one module per architecture family, K-quants."""
