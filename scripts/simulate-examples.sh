#!/usr/bin/env bash
# Runs `sidecar-governor simulate` over the example traces (examples/traces/) with the default
# policy (daemonset/policy.yaml) and the tighter one (examples/policies/tight.yaml), and prints
# the figures as a markdown table (the README's). With --charts it also rewrites the committed
# charts docs/simulate-bursty.svg and docs/simulate-diurnal.svg.
#
#   scripts/simulate-examples.sh [--charts]
#
# The traces themselves come from scripts/make-traces.py (fixed seeds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

charts=false
[[ ${1:-} == --charts ]] && charts=true

cargo build -q --bin sidecar-governor
bin=$(cargo metadata -q --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/sidecar-governor

policies=(daemonset/policy.yaml examples/policies/tight.yaml)
traces=(steady bursty diurnal)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "${traces[@]}"; do
    for p in "${policies[@]}"; do
        "$bin" simulate --config "$p" --trace "examples/traces/$t.csv" --output json \
            >"$tmp/$t-$(basename "$p" .yaml).json"
    done
done

python3 - "$tmp" "${traces[@]}" <<'PY'
import json, os, sys
tmp, traces = sys.argv[1], sys.argv[2:]
print("| trace | policy | CPU reserved / original (core-s) | CPU saved | ticks over quota | throttled (core-s) | CPU up/down "
      "| memory reserved / original (GiB-s) | memory saved | over memory.high (s) | memory stall (s) | high events | memory up/down |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in traces:
    for name in ("policy", "tight"):
        r = json.load(open(os.path.join(tmp, f"{t}-{name}.json")))
        c, m = r["total"]["cpu"], r["total"]["memory"]
        print(f"| {t} | {'default' if name == 'policy' else 'tight'} "
              f"| {c['reserved_core_seconds']:.0f} / {c['original_core_seconds']:.0f} | {c['saving_percent']:.1f}% "
              f"| {c['over_quota_percent']:.2f}% ({c['ticks_over_quota']}/{r['total']['ticks']}) "
              f"| {c['throttled_core_seconds']:.1f} | {c['actions']['up']}/{c['actions']['down']} "
              f"| {m['reserved_gib_seconds']:.0f} / {m['original_gib_seconds']:.0f} | {m['saving_percent']:.1f}% "
              f"| {m['over_high_seconds']:.0f} | {m['stall_seconds']:.2f} | {m['high_events']} "
              f"| {m['actions']['up']}/{m['actions']['down']} |")
PY

if $charts; then
    "$bin" simulate --trace examples/traces/bursty.csv \
        --chart api/gateway-client-3f2 --chart-out docs/simulate-bursty.svg >/dev/null
    "$bin" simulate --trace examples/traces/diurnal.csv \
        --chart web/frontend-2b7c --chart-out docs/simulate-diurnal.svg >/dev/null
    echo "charts: docs/simulate-bursty.svg docs/simulate-diurnal.svg" >&2
fi
