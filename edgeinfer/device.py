"""Device and backend choice: a pure function of a probe of the machine and the artifact.

``probe_system()`` reads the machine; ``choose()`` decides and says why. Tests inject probes.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .errors import BackendUnavailableError, DeviceError

GIB = 1024**3
# Free VRAM kept back for the KV cache, compute buffers and the driver when sizing GPU layers.
VRAM_RESERVE_BYTES = int(0.75 * GIB)
VRAM_RESERVE_FRACTION = 0.10
# Apple GPUs share RAM; Metal's recommended working set is about this share of it.
METAL_WORKING_SET_FRACTION = 0.66

# Which GGUF quantizations run fastest on a CPU, by feature: llama.cpp repacks Q4_0 (and IQ4_NL)
# into interleaved layouts at load time for AVX2/AVX-512 and ARM dot-product/i8mm kernels. The
# llama.cpp backend loads with repacking off by default (batch-invariant numerics: batching and
# speculation keep outputs exact); ``repack=True`` turns it on where the Q4_0 speed matters more.
QUANT_SPEED_RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("i8mm", ("Q4_0", "IQ4_NL", "Q8_0", "Q4_K_M"),
     "ARM i8mm: Q4_0/IQ4_NL can be repacked for the matmul-int8 kernels (repack=True)"),
    ("dotprod", ("Q4_0", "IQ4_NL", "Q8_0", "Q4_K_M"),
     "ARM dot-product: Q4_0/IQ4_NL can be repacked (4x4/4x8) at load (repack=True)"),
    ("avx512", ("Q4_0", "IQ4_NL", "Q8_0", "Q4_K_M"),
     "AVX-512: Q4_0/IQ4_NL can be repacked (8x8) at load (repack=True)"),
    ("avx2", ("Q4_0", "IQ4_NL", "Q8_0", "Q4_K_M"),
     "AVX2: Q4_0/IQ4_NL can be repacked (8x8) at load (repack=True); measured here Q4_0 decodes "
     "~1.25x Q4_1, "
     "Q8_0 ~0.94x, F16 ~0.66x"),
)
FALLBACK_QUANT_ORDER = ("Q8_0", "Q4_K_M", "Q4_0")

# onnxruntime execution providers edgeinfer asks for, best first: (provider, GPU api it drives, how to
# get a build that has it). The CPU provider is always there and always last.
ONNX_PROVIDERS: tuple[tuple[str, str, str], ...] = (
    ("CUDAExecutionProvider", "cuda", "pip install onnxruntime-gpu (CUDA 12) instead of onnxruntime"),
    ("CoreMLExecutionProvider", "metal", "the macOS onnxruntime wheel includes it"),
)
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class GPU:
    name: str
    api: str  # "cuda", "metal", "rocm", "vulkan"
    vram_total: int
    vram_free: int
    unified_memory: bool = False


@dataclass(frozen=True)
class Probe:
    """What the machine has and what the installed backends can use."""

    os: str
    arch: str
    cpu_features: frozenset[str]
    physical_cores: int
    logical_cores: int
    ram_total: int
    ram_available: int
    gpus: tuple[GPU, ...] = ()
    llama_cpp_version: str | None = None
    llama_gpu_offload: bool = False  # llama_supports_gpu_offload() of the installed build
    llama_build_backends: frozenset[str] = frozenset()  # e.g. {"CPU", "CUDA"}
    onnx_providers: Sequence[str] = ()  # a LazyProviders from probe_system

    def gpu_apis(self) -> list[str]:
        """The GPU apis present ("cuda", "metal", ...), sorted: what backends' GPU hints name."""
        return sorted({g.api for g in self.gpus})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cpu_features"] = sorted(self.cpu_features)
        d["llama_build_backends"] = sorted(self.llama_build_backends)
        return d


@dataclass(frozen=True)
class Artifact:
    """What ``choose`` needs to know about a model file."""

    format: str  # a name in the format table: "gguf", "onnx", or a plugin's
    size_bytes: int
    n_layers: int | None = None
    quantization: str = ""


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str  # "cpu", "cuda:0", "metal"
    n_gpu_layers: int
    n_threads: int
    reasons: tuple[str, ...]
    fastest_cpu_quants: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


def fastest_cpu_quants(probe: Probe) -> tuple[tuple[str, ...], str]:
    """Quantization types this CPU runs fastest, best first, with the reason."""
    for feature, order, why in QUANT_SPEED_RULES:
        if feature in probe.cpu_features:
            return order, why
    return FALLBACK_QUANT_ORDER, "no SIMD dot-product features detected: Q8_0 has the simplest kernels"


def _gpu_layers(gpu: GPU, art: Artifact) -> tuple[int, str]:
    """How many layers (of n_layers + the output layer) fit in the GPU's free memory."""
    budget = gpu.vram_free
    if gpu.unified_memory:
        budget = int(gpu.vram_total * METAL_WORKING_SET_FRACTION)
    usable = budget - max(VRAM_RESERVE_BYTES, int(budget * VRAM_RESERVE_FRACTION))
    n_layers = art.n_layers or 32
    total_layers = n_layers + 1
    if usable >= art.size_bytes:
        return total_layers, f"all {total_layers} layers fit in {usable / GIB:.1f} GiB usable"
    per_layer = art.size_bytes / total_layers
    fit = max(0, int(usable // per_layer))
    return fit, f"{fit}/{total_layers} layers fit in {usable / GIB:.1f} GiB usable of {gpu.name}"


def choose(
    probe: Probe,
    artifact: Artifact,
    *,
    backend: str = "auto",
    device: str = "auto",
    n_gpu_layers: int | None = None,
    n_threads: int | None = None,
) -> Choice:
    """Pick backend, device, GPU layers and threads for ``artifact`` on ``probe``; explain why.

    The backend is the registry's: for "auto", the installed one with the highest priority that reads
    the artifact's format; its spec's hooks say whether it can drive each GPU of the probe.
    """
    from .backends.registry import get_spec, pick_backend  # here: the built-in specs import this module

    reasons: list[str] = []
    if backend == "auto":
        spec = pick_backend(probe, artifact.format)
        reasons.append(f"{artifact.format} artifact -> {spec.name} backend")
    else:
        spec = get_spec(backend)
        reasons.append(f"backend {backend} requested")
        if not spec.is_installed(probe):
            raise BackendUnavailableError(spec.unavailable())
    backend = spec.name

    threads = n_threads or max(1, probe.physical_cores)
    reasons.append(
        f"{threads} threads (" + ("requested" if n_threads else "one per physical core") + ")"
    )
    quants, why = fastest_cpu_quants(probe)

    gpus = [g for g in probe.gpus if spec.can_use_gpu(probe, g)]
    if device == "cpu" or (device == "auto" and not gpus):
        if device == "auto":
            reasons.append(spec.why_no_gpu(probe) if probe.gpus else "no GPU found: running on the CPU")
        else:
            reasons.append("CPU requested")
        if n_gpu_layers:
            reasons.append("n_gpu_layers ignored on CPU")
        reasons.append(f"fastest quantizations on this CPU: {', '.join(quants)} ({why})")
        return Choice(backend, "cpu", 0, threads, tuple(reasons), quants)

    gpu = _pick_gpu(gpus, device, probe)
    index = probe.gpus.index(gpu)
    dev = "metal" if gpu.api == "metal" else f"{gpu.api}:{index}"
    if n_gpu_layers is not None:
        layers = n_gpu_layers
        reasons.append(f"{layers} GPU layers requested")
    else:
        layers, why_layers = _gpu_layers(gpu, artifact)
        reasons.append(why_layers)
    if layers == 0:
        reasons.append(f"nothing fits on {gpu.name}; running on the CPU")
        return Choice(backend, "cpu", 0, threads, tuple(reasons), quants)
    reasons.append(f"{gpu.name} ({gpu.api}, {gpu.vram_free / GIB:.1f} GiB free) selected")
    return Choice(backend, dev, layers, threads, tuple(reasons), quants)


def onnx_providers_for(device: str, available: tuple[str, ...] | list[str]) -> list[str]:
    """The providers to open an ONNX session with for ``device`` ("cpu", "cuda:0", "metal"), best first,
    always ending with the CPU one (onnxruntime falls back to it for ops a GPU provider lacks)."""
    api = device.split(":")[0]
    wanted = [name for name, provider_api, _ in ONNX_PROVIDERS if provider_api == api and name in available]
    return [*wanted, CPU_PROVIDER]


def onnx_provider_report(probe: Probe) -> list[tuple[str, bool, str]]:
    """(provider, usable, why) for each provider edgeinfer knows, best first: what ``edgeinfer env`` shows."""
    rows = []
    for name, api, how in ONNX_PROVIDERS:
        has_gpu = any(g.api == api for g in probe.gpus)
        if name in probe.onnx_providers and has_gpu:
            rows.append((name, True, f"in this onnxruntime build, and a {api} GPU is present"))
        elif name in probe.onnx_providers:
            rows.append((name, False, f"in this onnxruntime build, but no {api} GPU found"))
        else:
            gpu = f"a {api} GPU is present" if has_gpu else f"no {api} GPU found"
            rows.append((name, False, f"{gpu}; this onnxruntime build lacks the provider ({how})"))
    cpu_ok = CPU_PROVIDER in probe.onnx_providers
    rows.append((CPU_PROVIDER, cpu_ok, "always available: the fallback for every model and op" if cpu_ok
                 else "onnxruntime is not installed: pip install 'edgeinfer[onnx]'"))
    return rows


def _pick_gpu(gpus: list[GPU], device: str, probe: Probe) -> GPU:
    if device == "auto":
        return max(gpus, key=lambda g: g.vram_free)
    m = re.fullmatch(r"(cuda|metal|rocm|vulkan|gpu)(?::(\d+))?", device)
    if not m:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda[:N] or metal")
    api, idx = m.group(1), m.group(2)
    candidates = [g for g in gpus if api == "gpu" or g.api == api]
    if idx is not None:
        candidates = [g for g in candidates if probe.gpus.index(g) == int(idx)]
    if not candidates:
        raise DeviceError(
            f"device {device!r} is not available: found "
            f"{[f'{g.api}:{probe.gpus.index(g)}' for g in probe.gpus] or 'no usable GPU'}"
        )
    return candidates[0]


# ---- the real probe ---------------------------------------------------------------------------
def _cpu_features() -> frozenset[str]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        out = _run(["sysctl", "-a"]) or ""
        for name, feature in (("FEAT_DotProd", "dotprod"), ("FEAT_I8MM", "i8mm")):
            if re.search(rf"{name}: 1", out):
                flags.add(feature)
    aliases = {"asimddp": "dotprod", "avx512f": "avx512", "asimd": "neon"}
    return frozenset(flags | {aliases[f] for f in flags if f in aliases})


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_gpus() -> list[GPU]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free",
                "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(GPU(parts[0], "cuda", int(parts[1]) << 20, int(parts[2]) << 20))
    return gpus


def _llama_build() -> tuple[str | None, bool, frozenset[str]]:
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001 - a broken install is the same as none here
        return None, False, frozenset()
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    backends = {m.group(1).upper() for m in re.finditer(r"(?:^|\|)\s*([A-Za-z]+)\s*:", info)}
    backends &= {"CPU", "CUDA", "METAL", "VULKAN", "ROCM", "HIP", "SYCL", "BLAS"}
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    return llama_cpp.__version__, offload, frozenset(backends)


class LazyProviders(Sequence[str]):
    """onnxruntime's execution providers, read when first asked for: importing onnxruntime costs
    ~30 MB of RAM, which a process that only runs GGUF models should not pay."""

    def __init__(self) -> None:
        self._names: tuple[str, ...] | None = None

    def _read(self) -> tuple[str, ...]:
        if self._names is None:
            try:
                import onnxruntime
            except Exception:  # noqa: BLE001 - a broken install is the same as none here
                self._names = ()
            else:
                self._names = tuple(onnxruntime.get_available_providers())
        return self._names

    def __getitem__(self, index):  # noqa: ANN001, ANN204 - Sequence's signature
        return self._read()[index]

    def __len__(self) -> int:
        return len(self._read())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    def __hash__(self) -> int:
        return hash(self._read())

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:  # asdict() copies a plain tuple
        return self._read()

    def __repr__(self) -> str:
        return repr(self._read())


def probe_system() -> Probe:
    """Read this machine: OS, CPU, RAM, GPUs and what the installed backends support."""
    import psutil

    system, arch = platform.system(), platform.machine().lower()
    gpus = _nvidia_gpus()
    mem = psutil.virtual_memory()
    if system == "Darwin" and arch in ("arm64", "aarch64"):
        gpus.append(GPU("Apple GPU", "metal", mem.total, mem.available, unified_memory=True))
    version, offload, backends = _llama_build()
    return Probe(
        os=system,
        arch=arch,
        cpu_features=_cpu_features(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=os.cpu_count() or 1,
        ram_total=mem.total,
        ram_available=mem.available,
        gpus=tuple(gpus),
        llama_cpp_version=version,
        llama_gpu_offload=offload,
        llama_build_backends=backends,
        onnx_providers=LazyProviders(),
    )
