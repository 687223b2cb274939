#!/usr/bin/env bash
# Runs the tests that touch signals, threads, subprocesses or time N times in a row while another
# process keeps one core busy, and counts the failing runs. Usage: bash tests/stress_timing.sh [N] [LOG]
# (from the repository root, in the venv that `pip install -e ".[test]"` made). Exit 0 when none failed.
# HEAVY_EVERY=2 runs the two longest tests in every other run only (to fit a time budget).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
log=${2:-stress_timing.log}
tests=(
  tests/test_engine.py tests/test_batching.py tests/test_metrics.py
  tests/test_server.py tests/test_server_metrics.py tests/test_remote.py
  tests/test_cli.py::test_chat_is_interactive_multi_turn_and_streams
  tests/test_cli.py::test_chat_with_an_id_resumes_in_a_new_process
  tests/test_convert_gguf.py::test_ctrl_c_during_cli_conversion
  tests/test_convert_gguf.py::test_disk_full_mid_write
  tests/test_app_translator.py
  tests/test_prompt_cache_llama.py::test_idle_time_makes_the_whole_history_reusable_and_exact
  tests/test_translate.py::test_cancelling_a_stream_stops_it_and_keeps_no_memory
  tests/test_batching_llama.py::test_batched_requests_give_exactly_their_unbatched_greedy_output
  tests/test_onnx_backend.py::test_concurrent_requests_get_their_own_answers
  tests/test_router.py::test_a_remote_tier_that_is_down_falls_back_to_the_local_one
)
# the two longest (about a minute each when the machine is quiet) run in every HEAVY_EVERY-th run only
heavy=(tests/test_server.py::test_many_concurrent_clients_get_their_own_answers tests/test_app_translator.py)
heavy_every=${HEAVY_EVERY:-1}
python3 -c "while True: pass" &  # the other process: one core, busy the whole time
burner=$!
trap 'kill $burner 2>/dev/null' EXIT
failed=0
: >"$log"
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  load=$(cut -d' ' -f1 /proc/loadavg)
  steal0=$(awk '/^cpu /{print $9}' /proc/stat)
  if (( (i - 1) % heavy_every == 0 )); then chosen=("${tests[@]}" "${heavy[@]}"); else
    chosen=("${tests[@]}" --deselect "${heavy[0]}"); fi
  echo "=== run $i: ${#chosen[@]} arguments" >>"$log"
  if python -m pytest -q -p no:cacheprovider --durations=10 "${chosen[@]}" >>"$log" 2>&1; then status=ok; else
    status=FAILED; failed=$((failed + 1)); fi
  steal=$(( $(awk '/^cpu /{print $9}' /proc/stat) - steal0 ))
  echo "run $i/$runs: $status in $(( $(date +%s) - start )) s (load $load at start, steal $steal ticks)" | tee -a "$log"
done
echo "$failed of $runs runs failed" | tee -a "$log"
[ "$failed" -eq 0 ]
