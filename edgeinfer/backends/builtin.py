"""The built-in backends' specs: cheap to import (llama_cpp and onnxruntime load only when used).

The entry points of the ``edgeinfer.backends`` group name these objects, as a plugin's would.
"""

from __future__ import annotations

from ..device import GPU, ONNX_PROVIDERS, Probe
from .registry import BackendSpec

# The llama-cpp-python build flag that turns on each GPU api, for the reinstall hint.
GGML_GPU_FLAGS = {"cuda": 'CMAKE_ARGS="-DGGML_CUDA=on"', "metal": 'CMAKE_ARGS="-DGGML_METAL=on"'}


def llama_installed(probe: Probe) -> bool:
    """llama-cpp-python imports on this machine."""
    return probe.llama_cpp_version is not None


def llama_uses_gpu(probe: Probe, gpu: GPU) -> bool:
    """The installed llama.cpp build offloads to ``gpu``'s api."""
    return probe.llama_gpu_offload and gpu.api.upper() in probe.llama_build_backends


def llama_gpu_hint(probe: Probe) -> str:
    """A GPU is present but this llama.cpp build lacks it: how to rebuild."""
    apis = probe.gpu_apis()
    hint = " or ".join(GGML_GPU_FLAGS[a] for a in apis if a in GGML_GPU_FLAGS)
    return (
        f"GPU present ({', '.join(apis)}) but the installed llama.cpp build cannot use it: "
        f"reinstall llama-cpp-python with {hint or 'GPU support'}; running on the CPU"
    )


def onnx_installed(probe: Probe) -> bool:
    """onnxruntime imports on this machine (it always has at least the CPU provider)."""
    return bool(probe.onnx_providers)


def onnx_uses_gpu(probe: Probe, gpu: GPU) -> bool:
    """This onnxruntime build has a provider for ``gpu``'s api."""
    return any(api == gpu.api and name in probe.onnx_providers for name, api, _ in ONNX_PROVIDERS)


def onnx_gpu_hint(probe: Probe) -> str:
    """A GPU is present but this onnxruntime has no provider for it: which wheel has one."""
    apis = probe.gpu_apis()
    hint = "; ".join(f"{name}: {how}" for name, api, how in ONNX_PROVIDERS if api in apis)
    return (f"GPU present ({', '.join(apis)}) but this onnxruntime has no provider for it "
            f"({hint or 'no provider known'}); running on the CPU")


LLAMA_CPP = BackendSpec(
    name="llama.cpp",
    factory="edgeinfer.backends.llamacpp:LlamaCppBackend",
    formats=("gguf",),
    devices=("cpu", "cuda", "metal", "rocm", "vulkan"),
    install_hint="pip install 'edgeinfer[llama]'",
    requires="llama-cpp-python",
    installed=llama_installed,
    gpu_usable=llama_uses_gpu,
    gpu_hint=llama_gpu_hint,
)

ONNX = BackendSpec(
    name="onnx",
    factory="edgeinfer.backends.onnx_factory:open_onnx",  # a decoder or an embedding encoder
    formats=("onnx",),
    devices=("cpu", "cuda", "metal"),
    install_hint="pip install 'edgeinfer[onnx]'",
    requires="onnxruntime",
    installed=onnx_installed,
    gpu_usable=onnx_uses_gpu,
    gpu_hint=onnx_gpu_hint,
)

BUILTIN_SPECS: tuple[BackendSpec, ...] = (LLAMA_CPP, ONNX)
