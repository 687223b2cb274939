#!/usr/bin/env bash
# The GPU check: build llama-cpp-python with CUDA from the trimmed sdist in gpu_kit/, install edgeinfer from
# this checkout, put the carried model parts together, and write the report (JSON + Markdown) under $OUT.
#
#   bash tools/gpu_check.sh          on the lent machine, every call of gpu_kit/PLAN.md: starts the build in
#                                    the background (first call), puts together the models whose parts have
#                                    all arrived, and writes the report once the build is done
#   bash tools/gpu_check.sh --wait   the last call: waits for the build, then writes the report
#   bash tools/gpu_check.sh --cpu    the rehearsal on a CPU machine: no build, the installed wheel, the
#                                    bundled models as installed; the same report
#
# GPU_KIT_CMAKE_ARGS adds CMake flags (e.g. -DGGML_CUDA_FA=OFF: no flash-attention kernels, a shorter
# build); GPU_KIT_DRY_BUILD=1 skips the build (rehearsing the calls on a CPU machine).
# Needs nothing from a network. State lives in gpu_kit/state (git-ignored: it stays on the machine between
# calls while the machine is warm).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu WAIT=0
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    --wait) WAIT=1 ;;
    *) echo "usage: bash tools/gpu_check.sh [--wait | --cpu]" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-gpu_kit/out}"
mkdir -p "$OUT" gpu_kit/state
STATE=gpu_kit/state
export EDGEINFER_HOME="$PWD/$STATE/home" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "$MODE" = cpu ]; then
  PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
  exec "$PY" tools/gpu_check.py --cpu --out "$OUT"
fi

PY="${PYTHON:-python3}"
ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')"
build() {  # the build and install, timed; runs detached from the call that starts it
  local start=$SECONDS
  if [ "${GPU_KIT_DRY_BUILD:-0}" = 1 ]; then  # rehearsing the calls on a CPU machine: no build
    sleep "${GPU_KIT_DRY_BUILD_SECONDS:-5}"
    echo '{"build_s": 0, "install_s": 0, "cuda_arch": "none (dry run)", "cores": '"$(nproc)"'}' > "$STATE/build.json"
    return 0
  fi
  "$PY" tools/prepare_gpu_kit.py --requirements > "$STATE/requirements.txt" || return 1
  "$PY" -m pip install -q --no-index --find-links gpu_kit/build/wheels -r "$STATE/requirements.txt" || return 1
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${ARCH:-native} -DGGML_NATIVE=on ${GPU_KIT_CMAKE_ARGS:-}" \
  CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$PY" -m pip install --no-index --no-build-isolation --no-deps --find-links gpu_kit/build/wheels \
      "gpu_kit/build/llama_cpp_python-0.3.36.tar.gz" || return 1
  local built=$SECONDS
  "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e . || return 1
  echo "{\"build_s\": $((built - start)), \"install_s\": $((SECONDS - built)), \"cuda_arch\": \"${ARCH:-native}\"," \
       "\"cores\": $(nproc)}" > "$STATE/build.json"
}

if [ ! -f "$STATE/build.json" ] && [ ! -f "$STATE/building" ]; then
  [ -f gpu_kit/build/llama_cpp_python-0.3.36.tar.gz ] || { echo "gpu_kit/build is missing: carry it (see gpu_kit/PLAN.md)"; exit 1; }
  touch "$STATE/building"
  export -f build; export PY ARCH STATE
  setsid bash -c 'build > "$STATE/build.log" 2>&1; echo $? > "$STATE/build.rc"; rm -f "$STATE/building"' \
      < /dev/null > /dev/null 2>&1 &
  echo "build started in the background (log: $STATE/build.log)"
fi

# put together every model whose parts have all arrived (sha256-checked), into edgeinfer's model cache
"$PY" - <<'EOF'
import hashlib, json, pathlib, sys
kit = pathlib.Path("gpu_kit/models")
manifest = json.loads((kit / "manifest.json").read_text()) if (kit / "manifest.json").exists() else []
for model in manifest:
    done = pathlib.Path("gpu_kit/state/models") / model["file"]
    if done.exists():
        print(f"{model['name']}: ready"); continue
    missing = [p for p in model["parts"] if not (kit / p).exists()]
    if missing:
        print(f"{model['name']}: waiting for {', '.join(missing)}"); continue
    done.parent.mkdir(parents=True, exist_ok=True)
    digest, tmp = hashlib.sha256(), done.with_suffix(".part")
    with tmp.open("wb") as out:
        for part in model["parts"]:
            data = (kit / part).read_bytes(); digest.update(data); out.write(data)
    if digest.hexdigest() != model["sha256"]:
        tmp.unlink()
        for part in model["parts"]:
            (kit / part).unlink()
        print(f"{model['name']}: sha256 mismatch: its parts are deleted, carry them again"); sys.exit(1)
    tmp.replace(done)
    for part in model["parts"]:
        (kit / part).unlink()  # a later call's carry replaces only its own paths: free the disk
    print(f"{model['name']}: put together ({model['bytes']} bytes, sha256 ok)")
EOF

if [ "$WAIT" = 1 ]; then
  while [ -f "$STATE/building" ]; do sleep 2; done
fi
if [ -f "$STATE/build.rc" ] && [ "$(cat "$STATE/build.rc")" != 0 ]; then
  echo "the build failed:"; tail -40 "$STATE/build.log"; cp "$STATE/build.log" "$OUT/" 2>/dev/null; exit 1
fi
if [ ! -f "$STATE/build.json" ]; then
  echo "still building ($(tail -c 300 "$STATE/build.log" 2>/dev/null | tr '\n' ' ' | tail -c 160)); next call of gpu_kit/PLAN.md"
  exit 0
fi
cp "$STATE/build.json" "$STATE/build.log" "$OUT/" 2>/dev/null
exec "$PY" tools/gpu_check.py --out "$OUT" --models-dir "$STATE/models" --build "$STATE/build.json"
