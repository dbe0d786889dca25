#!/usr/bin/env bash
# Runs fuzz targets for a while each (default 30 s), starting from the committed seeds
# (fuzz/seeds/TARGET, made by scripts/fuzz-seeds.sh) and the working corpus (fuzz/corpus/TARGET,
# not committed, grows from run to run), and prints per target the executions, the corpus and
# the coverage (libFuzzer's `cov:` and `ft:`), so a campaign can be summed up. Needs cargo-fuzz;
# the stable toolchain is told to accept the sanitizer flags with RUSTC_BOOTSTRAP, as this
# machine has no nightly.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   JOBS=2 scripts/fuzz.sh 1800          # two targets at a time
#   NICE=19 scripts/fuzz.sh 20           # at the lowest priority
# Logs: fuzz/logs/TARGET.log (the last run); fuzz/logs/summary.tsv gets one line per target run.
# Crash inputs land in fuzz/artifacts/TARGET/; the script exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}; shift || true
jobs=${JOBS:-1}
nice_level=${NICE:-0}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
mkdir -p logs
# Build every target first, once, so that parallel runs do not wait on each other's builds.
for t in "${targets[@]}"; do
  nice -n "$nice_level" cargo fuzz build "$t" >/dev/null 2>logs/build.log || { cat logs/build.log >&2; exit 1; }
done

run_one() { # TARGET: one run, then one summary line on stdout
  local t=$1 log=logs/$1.log
  mkdir -p "corpus/$t"
  local dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  local rc=0
  nice -n "$nice_level" cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" \
    -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  local done execs cov ft files bytes result
  done=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$done" | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$done" | grep -oE '[0-9]+' || true)
  files=$(find "corpus/$t" -type f | wc -l)
  bytes=$(find "corpus/$t" -type f -exec cat {} + | wc -c)
  if [ "$rc" = 0 ]; then result=ok; else
    result="FAIL(rc=$rc) $(grep -oE 'artifacts/[^ ]+' "$log" | tail -1 || true)"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "${execs:-?}" \
    "${cov:-?}" "${ft:-?}" "$files" "$bytes" "$result" | tee -a logs/summary.tsv
  [ -n "$done" ] && echo "  $t: $done" >&2
  [ "$rc" = 0 ]
}

echo -e "when\ttarget\tseconds\texecs\tcov\tft\tcorpus_files\tcorpus_bytes\tresult"
failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  run_one "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit $failed
