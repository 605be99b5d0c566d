#!/usr/bin/env bash
# Fuzzes every parser of outside text (issue 8): the journal loader, the policy, quantities,
# the cgroup and /proc parsers, CRI cgroupsPath and verbose info, and the trace CSV
# (fuzz/fuzz_targets/). Builds the cargo-fuzz targets, then runs each for SECONDS (default 20)
# from its committed seed corpus (fuzz/corpus/<target>/). Fails on any panic, on an input
# taking more than 5 s (a hang) and on more than 512 MiB resident (unbounded memory); the
# input that did it is left in fuzz/artifacts/<target>/ (replay: cargo fuzz run -s none
# <target> <file>).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Built with the project's pinned stable toolchain and no sanitizer (`-s none`, which needs no
# nightly): the crate forbids unsafe code, so what is sought is panics, hangs and allocation
# blow-ups, which libFuzzer catches without ASan. Overflow checks and debug assertions are on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-20}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || {
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
}
targets=(text journal policy trace)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
# Missing after the install is a failure, never a skip.
cargo fuzz --version

build=(-s none --codegen-units 16 --debug-assertions)
echo "== cargo fuzz build (${targets[*]})"
start=$SECONDS
cargo fuzz build "${build[@]}"
echo "built in $((SECONDS - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "$work/$target"
  # New inputs go to the scratch corpus (first directory); the committed seeds stay as they are.
  # Inputs are capped at 16 KiB: far above every real file these parsers read but the journal
  # and traces, which are exercised by their structure, not their size.
  if ! timeout --kill-after=10 $((seconds + 120)) \
    cargo fuzz run "${build[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=5 -rss_limit_mb=512 \
    -malloc_limit_mb=512 -print_final_stats=1 \
    >"$work/$target.log" 2>&1; then
    tail -n 60 "$work/$target.log"
    echo "FAIL: fuzz target $target (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$target.log" || true
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
