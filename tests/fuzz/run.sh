#!/usr/bin/env bash
# Fuzzing and sanitizers (issue 11), bounded in time; run by scripts/test.sh after the other tests.
#   1. the libFuzzer targets (clang-14, ASan+UBSan): fuzz_frame, fuzz_messages, fuzz_login, each
#      for $FUZZ_SECONDS (default 60) from the seed corpus in tests/fuzz/corpus, two at a time;
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build of all C++ (build/asan,
#      -DPCLUSTER_SANITIZE=address,undefined): its ctest (unit, hardening and corpus tests, the MPI
#      program at several sizes) and an end-to-end subset of tests/python against real jobs;
#      any sanitizer report from any process (bridge, controller, engines, client) fails the run.
# (ThreadSanitizer over the client core's threads is a test of the main build: tsan_client.)
# Environment: FUZZ_SECONDS, SANITIZE_E2E (pytest arguments for the end-to-end subset),
# SKIP_FUZZ=1, SKIP_ASAN=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
SANITIZE_E2E=${SANITIZE_E2E:-"tests/python/test_hardening.py tests/python/test_session.py tests/python/test_protocol.py"}
jobs=$(nproc)
start=$(date +%s)
say() { echo "fuzz/run.sh [$(($(date +%s) - start)) s] $*"; }

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  say "building the fuzz targets (clang-14, ASan+UBSan)"
  if [ ! -f build/fuzz/build.ninja ]; then
    cmake -S tests/fuzz -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
  fi
  cmake --build build/fuzz -j "$jobs" --target fuzz_frame fuzz_messages fuzz_login
  fails=0
  pids=()
  for t in frame messages login; do
    work=build/fuzz/work/$t
    rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
    (
      cd "$work"
      # Findings land in artifacts/; new inputs in corpus/ (the seed corpus stays as it is).
      ../../fuzz_$t -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix=artifacts/ corpus "$root/tests/fuzz/corpus/$t" >log 2>&1
    ) &
    pids+=($!)
    if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}" || true; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  for t in frame messages login; do
    work=build/fuzz/work/$t
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/log" | awk '{print $2}' || true)
    if ls "$work/artifacts"/* >/dev/null 2>&1 || ! grep -q "Done [0-9]* runs" "$work/log"; then
      say "fuzz_$t FOUND A PROBLEM (${runs:-?} runs):"
      tail -40 "$work/log"
      ls -l "$work/artifacts"
      fails=1
    else
      say "fuzz_$t: ${runs} runs in ${FUZZ_SECONDS} s, nothing found"
    fi
  done
  [ "$fails" = 0 ] || { say "FUZZING FAILED"; exit 1; }
fi

if [ "${SKIP_ASAN:-0}" != 1 ]; then
  say "building everything with AddressSanitizer + UndefinedBehaviorSanitizer (build/asan)"
  if [ ! -f build/asan/build.ninja ]; then
    cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
      -DPython_EXECUTABLE=/usr/bin/python3 -DPCLUSTER_SANITIZE=address,undefined >/dev/null
  fi
  cmake --build build/asan -j "$jobs"
  reports=$root/build/asan/sanitizer-reports
  rm -rf "$reports" && mkdir -p "$reports"
  # Every process writes a report file when a sanitizer fires: the bridge and the controller may
  # die at the very end, where no test would notice. Python itself is not instrumented: the
  # runtime is preloaded so that the instrumented _core module can load into it.
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$reports/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
  # libstdc++ is preloaded too: the runtime must find the real __cxa_throw when it starts, or the
  # first C++ exception thrown inside Python's process fails ASan's own CHECK (seen here).
  preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  say "ctest of the sanitizer build"
  (cd build/asan && LD_PRELOAD="$preload" PATH="$root/build/asan/bin:$PATH" PYTHONPATH="$root/build/asan/python" \
    ctest --output-on-failure -j "$jobs" --timeout 600 -E 'configure_rejects_bare_python|docs_match_the_code')
  say "end-to-end subset against the sanitizer build: $SANITIZE_E2E"
  # shellcheck disable=SC2086
  LD_PRELOAD="$preload" PATH="$root/build/asan/bin:$PATH" PYTHONPATH="$root/build/asan/python" \
    PCLUSTER_BUILD_DIR="$root/build/asan" /usr/bin/python3 -m pytest $SANITIZE_E2E -q -p no:cacheprovider \
    --timeout 600 -m "not sanitizer_unfit"
  if ls "$reports"/* >/dev/null 2>&1; then
    say "SANITIZER REPORTS:"
    for f in "$reports"/*; do echo "== $f"; head -60 "$f"; done
    exit 1
  fi
  say "sanitizer build: no reports"
fi
say "FUZZ AND SANITIZERS OK"
