"""`edgeinfer convert`: an HF checkpoint folder to a GGUF file or an ONNX folder (or a GGUF file to an ONNX
folder), plus its report.json."""

from __future__ import annotations

import argparse
import json

from edgeinfer_converters.options import DEFAULT_MAX_KL, FORMATS

from ..errors import OutputExistsError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `convert`: the source, output, format, quantization and quality flags."""
    p = sub.add_parser("convert", help="convert a Hugging Face checkpoint (safetensors) to GGUF or ONNX, or "
                                       "a GGUF file to ONNX with its own weights")
    p.add_argument("source", help="checkpoint folder: config.json, *.safetensors, tokenizer.json; or, with "
                                  "--format onnx, a .gguf file (llama architecture; Q4_0/Q4_1/Q8_0 weights "
                                  "kept exactly)")
    p.add_argument("-o", "--output", required=True,
                   help="output file (e.g. model-Q4_K_M.gguf), or folder for --format onnx")
    p.add_argument("--format", default="gguf", choices=FORMATS)
    p.add_argument("--quant", default=None,
                   help="GGUF: F32, F16 (default), BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, ... or 'auto' "
                        "(see --max-kl); ONNX: fp32 (default), fp16 (half the file, fp32 compute), "
                        "int8, int4 (GPTQ; QKV/down/head at 8 bits), int4-fast (every matmul 4-bit, "
                        "AWQ + GPTQ) or auto (the fastest of int4-fast, int4, int8 within --max-kl, "
                        "else fp32)")
    p.add_argument("--max-kl", type=float, default=DEFAULT_MAX_KL,
                   help="with --quant auto: the largest mean KL divergence allowed vs the unquantized model")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-quality", action="store_true", help="skip the quality measurement in report.json")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Convert the checkpoint and print where the artifact and its report went (or JSON)."""
    from edgeinfer_converters import convert

    try:
        result = convert(
            args.source, args.output, format=args.format, quant=args.quant, max_kl=args.max_kl,
            force=args.force, quality=not args.no_quality, progress=not args.json, n_threads=args.threads,
        )
    except OutputExistsError as exc:  # the flag, not Python's keyword
        exc.args = (f"{exc.path} {exc.state}; add --force to overwrite it",)
        raise
    if args.json:
        print(json.dumps({"artifact": str(result.artifact), "report": str(result.report),
                          "quant": result.quant, "quality": result.quality,
                          "seconds": round(result.seconds, 2)}))
        return 0
    print(f"wrote {result.artifact} ({result.quant}) in {result.seconds:.1f} s; report: {result.report}")
    if result.quality:
        q = result.quality
        against = "the source GGUF (llama.cpp)" if result.quant.startswith("gguf-") else "unquantized"
        print(f"quality vs {against}: mean KL {q['mean_kl']:.4f}, "
              f"top-1 agreement {q['top1_agreement']:.1%}, "
              f"perplexity {q['ppl_candidate']:.2f} (reference {q['ppl_reference']:.2f})")
    return 0
