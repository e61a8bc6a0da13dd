#!/usr/bin/env bash
# Fuzzes every decoder of untrusted input (crates/thaw-fuzz) with cargo-fuzz.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target runs SECONDS (default 60) on its corpus in fuzz/corpus/TARGET, which then
# is minimised (cargo fuzz cmin) and can be committed. A crash leaves its input in
# fuzz/artifacts/TARGET/: fix it, and copy the input to fuzz/regressions/TARGET/, which
# `cargo test -p thaw-fuzz` replays on stable. One line per target goes to
# fuzz/report.tsv: date, target, seconds, executions, corpus size, result.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Without them
# it says so and runs the stable driver instead: seeded mutations through `cargo test`,
# THAW_FUZZ_ITERATIONS per target. CI never runs this script; it replays the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
mapfile -t ALL < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^thaw-fuzz-harness$')
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain or no cargo-fuzz here; running the stable mutation driver instead" >&2
  THAW_FUZZ_ITERATIONS=${THAW_FUZZ_ITERATIONS:-20000} cargo test --release -p thaw-fuzz --test replay
  exit
fi

cargo +nightly fuzz build --release >/dev/null
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  result=ok
  # -rss_limit_mb: a decoder that allocates from a length field fails here.
  if ! cargo +nightly fuzz run --release "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 >"$log" 2>&1; then
    result="FOUND (see fuzz/artifacts/$t)"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cargo +nightly fuzz cmin --release "$t" "fuzz/corpus/$t" >/dev/null 2>&1 || true
  size=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$SECONDS_EACH" "${execs:-?}" "$size" "$result" \
    | tee -a fuzz/report.tsv
  [ "$result" = ok ] || tail -40 "$log" >&2
  rm -f "$log"
done
