#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time, starting from the
# committed seed corpus (fuzz/corpus/<target>/, read-only here: new inputs go to a scratch
# directory so a run never dirties the work tree).
#
# There is no nightly toolchain: libFuzzer's sanitizer flags (-Zsanitizer, -Cpasses) are unlocked
# on stable with RUSTC_BOOTSTRAP=1, which is what this script sets.
#
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   space-separated subset (default: every target)
#   FUZZ_JOBS      parallel libFuzzer workers per target (default 1)
#
# A finding fails the run; libFuzzer prints the crashing input's path (fuzz/artifacts/<target>/).
# Reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`, fix, and copy the file into
# fuzz/corpus/<target>/ so `cargo test -p nodedns-wire --test fuzz_corpus` replays it forever.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "== building fuzz targets"
cargo fuzz build -O
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  echo "== fuzzing $t for ${seconds}s"
  mkdir -p "$scratch/$t"
  parallel=()
  if ((jobs > 1)); then parallel=(-jobs="$jobs" -workers="$jobs"); fi
  rc=0
  cargo fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "${parallel[@]}" >"$scratch/$t.log" 2>&1 || rc=$?
  grep -E "^(#[0-9]+ +(DONE|INITED)|stat::(number_of_executed_units|peak_rss_mb|new_units_added)|SUMMARY|.*Test unit written|.*panicked)" \
    "$scratch/$t.log" || true
  if ((rc != 0)); then
    tail -n 60 "$scratch/$t.log" >&2
    echo "fuzz target $t failed (exit $rc); failing inputs are in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz: $(wc -w <<<"$targets") targets ran ${seconds}s each without findings"
