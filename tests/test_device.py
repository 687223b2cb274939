"""Device choice with injected probes: CUDA, Metal and CPU-only machines."""

from dataclasses import replace

import pytest

from edgeinfer.backends import ArtifactFormat, BackendSpec, registered
from edgeinfer.device import (
    GIB,
    GPU,
    QUANT_SPEED_RULES,
    Artifact,
    Probe,
    choose,
    fastest_cpu_quants,
    onnx_provider_report,
    onnx_providers_for,
    probe_system,
)
from edgeinfer.errors import BackendUnavailableError, DeviceError


def probe(**kw) -> Probe:
    base = dict(
        os="Linux", arch="x86_64", cpu_features=frozenset({"avx2", "fma"}), physical_cores=8,
        logical_cores=16, ram_total=32 * GIB, ram_available=24 * GIB, llama_cpp_version="0.3.36",
        llama_gpu_offload=False, llama_build_backends=frozenset({"CPU"}),
    )
    base.update(kw)
    return Probe(**base)


def cuda(free_gib: float, total_gib: float = 24) -> GPU:
    return GPU("NVIDIA RTX", "cuda", int(total_gib * GIB), int(free_gib * GIB))


CUDA_BUILD = dict(llama_gpu_offload=True, llama_build_backends=frozenset({"CPU", "CUDA"}))
MODEL_4G = Artifact("gguf", 4 * GIB, n_layers=32, quantization="Q4_K_M")


def test_cpu_only_machine_runs_on_cpu_with_one_thread_per_core():
    c = choose(probe(), MODEL_4G)
    assert (c.backend, c.device, c.n_gpu_layers, c.n_threads) == ("llama.cpp", "cpu", 0, 8)
    assert any("no GPU" in r for r in c.reasons)


def test_cuda_with_room_offloads_every_layer():
    c = choose(probe(gpus=(cuda(20),), **CUDA_BUILD), MODEL_4G)
    assert c.device == "cuda:0" and c.n_gpu_layers == 33
    assert any("all 33 layers fit" in r for r in c.reasons)


def test_cuda_with_little_free_vram_offloads_part():
    c = choose(probe(gpus=(cuda(3),), **CUDA_BUILD), MODEL_4G)
    assert c.device == "cuda:0" and 0 < c.n_gpu_layers < 33
    # 3 GiB free - 0.75 GiB reserve = 2.25 GiB; each of 33 layers is 4/33 GiB -> 18 layers
    assert c.n_gpu_layers == 18


def test_cuda_with_no_room_falls_back_to_cpu():
    c = choose(probe(gpus=(cuda(0.5),), **CUDA_BUILD), MODEL_4G)
    assert c.device == "cpu" and c.n_gpu_layers == 0


def test_cuda_present_but_cpu_only_build_says_how_to_fix():
    c = choose(probe(gpus=(cuda(20),)), MODEL_4G)
    assert c.device == "cpu"
    assert any("-DGGML_CUDA=on" in r for r in c.reasons)


def test_picks_the_gpu_with_most_free_memory_and_honours_index():
    p = probe(gpus=(cuda(4), cuda(20)), **CUDA_BUILD)
    assert choose(p, MODEL_4G).device == "cuda:1"
    assert choose(p, MODEL_4G, device="cuda:0").device == "cuda:0"


def test_metal_unified_memory_uses_the_working_set():
    apple = GPU("Apple GPU", "metal", 16 * GIB, 10 * GIB, unified_memory=True)
    p = probe(os="Darwin", arch="arm64", cpu_features=frozenset({"neon", "dotprod"}), gpus=(apple,),
              llama_gpu_offload=True, llama_build_backends=frozenset({"CPU", "METAL"}))
    c = choose(p, MODEL_4G)
    assert c.device == "metal" and c.n_gpu_layers == 33
    big = choose(p, Artifact("gguf", 14 * GIB, n_layers=40))
    assert 0 < big.n_gpu_layers < 41


def test_overrides_win():
    p = probe(gpus=(cuda(20),), **CUDA_BUILD)
    assert choose(p, MODEL_4G, device="cpu").device == "cpu"
    c = choose(p, MODEL_4G, n_gpu_layers=5, n_threads=3)
    assert (c.n_gpu_layers, c.n_threads) == (5, 3)


def test_unknown_or_missing_device_is_a_clear_error():
    with pytest.raises(DeviceError, match="unknown device"):
        choose(probe(gpus=(cuda(20),), **CUDA_BUILD), MODEL_4G, device="tpu")
    with pytest.raises(DeviceError, match="not available"):
        choose(probe(gpus=(cuda(20),), **CUDA_BUILD), MODEL_4G, device="cuda:3")


def test_missing_llama_cpp_is_reported_with_the_install_command():
    with pytest.raises(BackendUnavailableError, match=r"edgeinfer\[llama\]"):
        choose(probe(llama_cpp_version=None), MODEL_4G)


def test_fastest_quants_follow_cpu_features():
    assert fastest_cpu_quants(probe())[0][0] == "Q4_0"
    # repacking is off by default (batch-invariant numerics): the reason says how to turn it on
    assert all("can be repacked" in why and "repack=True" in why for _, _, why in QUANT_SPEED_RULES)
    assert fastest_cpu_quants(probe(cpu_features=frozenset()))[0][0] == "Q8_0"


def test_real_probe_of_this_machine():
    p = probe_system()
    assert p.physical_cores >= 1 and p.ram_total > 0
    assert p.llama_cpp_version and "CPU" in p.llama_build_backends
    c = choose(p, Artifact("gguf", 100 << 20))
    assert c.backend == "llama.cpp" and c.reasons


ONNX_MODEL = Artifact("onnx", 200 * 1024**2, n_layers=30, quantization="int4-b32-asym-gptq")
ORT_GPU = ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_onnx_on_cuda_uses_the_cuda_provider_with_cpu_fallback():
    c = choose(probe(gpus=(cuda(20),), onnx_providers=ORT_GPU), ONNX_MODEL)
    assert (c.backend, c.device) == ("onnx", "cuda:0")
    assert onnx_providers_for(c.device, ORT_GPU) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers_for("cpu", ORT_GPU) == ["CPUExecutionProvider"]


def test_onnx_gpu_without_provider_says_which_wheel_to_install():
    p = probe(gpus=(cuda(20),), onnx_providers=("CPUExecutionProvider",))
    c = choose(p, ONNX_MODEL)
    assert c.device == "cpu" and any("onnxruntime-gpu" in r for r in c.reasons)
    report = {name: (usable, why) for name, usable, why in onnx_provider_report(p)}
    usable, why = report["CUDAExecutionProvider"]
    assert usable is False and "onnxruntime-gpu" in why
    assert report["CPUExecutionProvider"][0] is True
    assert list(report)[-1] == "CPUExecutionProvider"  # always the last resort


def test_onnx_provider_report_on_a_mac_with_coreml():
    metal = GPU("Apple M2", "metal", 16 * GIB, 10 * GIB, unified_memory=True)
    p = probe(os="Darwin", arch="arm64", gpus=(metal,),
              onnx_providers=("CoreMLExecutionProvider", "CPUExecutionProvider"))
    report = {name: usable for name, usable, _ in onnx_provider_report(p)}
    assert report == {"CUDAExecutionProvider": False, "CoreMLExecutionProvider": True,
                      "CPUExecutionProvider": True}
    assert choose(p, ONNX_MODEL).device == "metal"
    assert onnx_providers_for("metal", p.onnx_providers)[0] == "CoreMLExecutionProvider"


# ---- the registry decides: plugins with their own priority, install hint and formats -------------
def test_a_higher_priority_plugin_for_gguf_wins_auto_over_llama_cpp():
    fast = BackendSpec("fast-gguf", "fast_gguf:Backend", formats=("gguf",), priority=10,
                       installed=lambda p: True)
    with registered(fast):
        c = choose(probe(), MODEL_4G)
        assert c.backend == "fast-gguf" and "gguf artifact -> fast-gguf backend" in c.reasons
        assert choose(probe(), MODEL_4G, backend="llama.cpp").backend == "llama.cpp"
    with registered(replace(fast, priority=-1)):  # below the built-in: only a fallback
        assert choose(probe(), MODEL_4G).backend == "llama.cpp"
        assert choose(probe(llama_cpp_version=None), MODEL_4G).backend == "fast-gguf"
    with registered(replace(fast, installed=lambda p: False)):  # not installed here: skipped
        assert choose(probe(), MODEL_4G).backend == "llama.cpp"


def test_a_plugin_that_is_not_installed_gives_its_own_install_hint():
    zzz = BackendSpec("zzz", "no_such_module_for_zzz.backend:Zzz", formats=(ArtifactFormat("zzz", ".zzz"),),
                      install_hint="pip install zzz-backend", requires="zzz-runtime")
    with registered(zzz):  # installed by default when its module can be found: this one cannot
        with pytest.raises(BackendUnavailableError,
                           match=r"^the zzz backend needs zzz-runtime: pip install zzz-backend$"):
            choose(probe(), Artifact("zzz", 1 << 20))
        with pytest.raises(BackendUnavailableError, match="pip install zzz-backend"):
            choose(probe(), MODEL_4G, backend="zzz")
    with pytest.raises(BackendUnavailableError, match="no backend runs 'zzz' artifacts"):
        choose(probe(), Artifact("zzz", 1 << 20))


def test_a_plugin_gpu_is_used_when_its_devices_name_the_api():
    gpu_plugin = BackendSpec("gpu-gguf", "edgeinfer.backends.testing:FakeBackend", formats=("gguf",),
                             devices=("cpu", "cuda"), priority=10)
    with registered(gpu_plugin):
        assert choose(probe(gpus=(cuda(20),)), MODEL_4G).device == "cuda:0"
    with registered(replace(gpu_plugin, devices=("cpu",))):
        c = choose(probe(gpus=(cuda(20),)), MODEL_4G)
        assert c.device == "cpu" and any("gpu-gguf backend runs on cpu" in r for r in c.reasons)
