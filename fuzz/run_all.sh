#!/usr/bin/env bash
# Run every atheris harness (or the ones named) for RUNS inputs each.
#
#   fuzz/run_all.sh [RUNS] [HARNESS...]      e.g.  fuzz/run_all.sh 1000000 wire mux
#
# RUNS defaults to 100000; harnesses are wire, mux, transport, handshake_server,
# handshake_client and auth. Environment:
#   JOBS=N      harnesses run in parallel (default 1); one libFuzzer process each
#   LOG_DIR=d   where fuzz-<harness>.log goes (default fuzz/artifacts)
#   FUZZ_ARGS   extra libFuzzer flags, e.g. "-max_total_time=600"
#
# The seeds in fuzz/corpus/<harness>/ are read but never written: new inputs go to
# fuzz/artifacts/corpus/<harness>/, and crash, timeout and leak reproducers to
# fuzz/artifacts/<harness>-crash-* etc. (fuzz/artifacts/ is gitignored). Replay one with
#   python fuzz/fuzz_<harness>.py fuzz/artifacts/<file>
# and copy real findings to fuzz/crashes/. Exit status is non-zero if any harness failed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-100000}"
shift || true
if (($# > 0)); then
    harnesses=("$@")
else
    harnesses=(wire mux transport handshake_server handshake_client auth)
fi
jobs="${JOBS:-1}"
log_dir="${LOG_DIR:-fuzz/artifacts}"
mkdir -p fuzz/artifacts "$log_dir"

run_one() {
    local h="$1"
    local work="fuzz/artifacts/corpus/$h"
    local log="$log_dir/fuzz-$h.log"
    mkdir -p "$work"
    echo "[$h] $runs runs, log $log"
    # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
    if python3 "fuzz/fuzz_$h.py" "$work" "fuzz/corpus/$h" \
        -runs="$runs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$h-" ${FUZZ_ARGS:-} >"$log" 2>&1; then
        echo "[$h] ok: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
    else
        echo "[$h] FAILED (see $log):"
        grep -E 'Error|Exception|Traceback|==ERROR|artifact' "$log" | head -5 || true
        return 1
    fi
}

for h in "${harnesses[@]}"; do
    [[ -f "fuzz/fuzz_$h.py" ]] || { echo "no harness fuzz/fuzz_$h.py" >&2; exit 2; }
done

failed=0
running=0
for h in "${harnesses[@]}"; do
    if ((running >= jobs)); then
        wait -n || failed=1
        running=$((running - 1))
    fi
    run_one "$h" &
    running=$((running + 1))
done
while ((running > 0)); do
    wait -n || failed=1
    running=$((running - 1))
done
exit "$failed"
