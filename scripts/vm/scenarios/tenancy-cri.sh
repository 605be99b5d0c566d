#!/bin/sh
# shellcheck shell=dash
# sg-vm-group: cri
# Issue 9 case 1 on the real containerd (the `cri` VM): nothing a pod's author controls raises a
# limit. Policy `cpu.allowAboveLimit: true`, withheld for the namespace `tenants` by its
# override. Three pods, all hot:
#   - tenants/lookalike: an app container `cart` (100m) whose process is named envoy — not a
#     sidecar by its runtime name, so CRI discovery never takes it; its cpu.max and its pod's
#     must never move;
#   - tenants/greedy: a real sidecar (istio-proxy, 1 core) whose pod annotation asks for a floor
#     of 2 cores, above its own limit: refused (counted as an annotation error), and with the
#     namespace's grant withheld it never goes above its limit, nor does its pod;
#   - mesh/trusted: a real sidecar (istio-proxy, 500m) in a namespace that keeps the policy's
#     grant: it grows above its own limit, its pod raised first, and after SIGTERM both are back
#     exactly.
# Then containerd is stopped: discovery falls back to procfs, which does find the lookalike (by
# its process name), and must leave it alone (no runtime identity, namespace rules in the
# policy). Sampled every 250 ms throughout.
# Runs in its own boot (scripts/vm-e2e.sh): its initramfs carries containerd and switches root.
set -eu
. /sg/lib.sh
. /sg/cri-lib.sh

UID_L=11111111-0c11-4000-8000-000000000011
UID_G=22222222-0c12-4000-8000-000000000012
UID_T=33333333-0c13-4000-8000-000000000013
SIDECAR=/usr/local/bin/pilot-agent

sg_cri_start
for n in greedy trusted; do echo spin >"$SG_RUN/ctl/$n"; done
sg_cri_pod tenants lookalike "$UID_L" 100 \
	--container "cart|100|/bin/envoy --mode spin"
POD_L=$SG_POD_DIR
sg_cri_pod tenants greedy "$UID_G" 1000 --mount "$SG_RUN/ctl:/ctl" \
	--annotation sidecar-governor.io/cpu-min=2 \
	--container "istio-proxy|1000|$SIDECAR proxy sidecar --control /ctl/greedy"
POD_G=$SG_POD_DIR
sg_cri_pod mesh trusted "$UID_T" 500 --mount "$SG_RUN/ctl:/ctl" \
	--container "istio-proxy|500|$SIDECAR proxy sidecar --control /ctl/trusted"
POD_T=$SG_POD_DIR
L=$(sg_cri_cg "$UID_L" "$(sg_cri_cid lookalike cart)")
G=$(sg_cri_cg "$UID_G" "$(sg_cri_cid greedy istio-proxy)")
T=$(sg_cri_cg "$UID_T" "$(sg_cri_cid trusted istio-proxy)")
sg_show "$L" "$G" "$T"
sg_expect "lookalike's cpu.max from the CRI limit" "$(sg_cpu_max "$L")" "10000 100000"
sg_expect "greedy's cpu.max from the CRI limit" "$(sg_cpu_max "$G")" "100000 100000"
sg_expect "trusted's cpu.max from the CRI limit" "$(sg_cpu_max "$T")" "50000 100000"
sg_expect "trusted's pod cpu.max" "$(sg_cpu_max "$POD_T")" "50000 100000"
sg_untouched_snapshot "$L" "$POD_L" >"$SG_RUN/untouched.before"

sg_policy_write <<'EOF'
interval: 1s
match:
  rescanInterval: 5s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 3s
  allowAboveLimit: true
overrides:
  - namespace: tenants
    cpu: {allowAboveLimit: false}
EOF
: >"$SG_RUN/peaks.log"
(
	while :; do
		# The trusted container is read before and after its pod: the agent raises the pod
		# first and lowers it last, so the pod is >= the container at every instant, and a
		# pod read between two container reads is >= the lower of them (one read each would
		# race a lowering: container read before it moved, pod after).
		echo "$(sg_quota "$L") $(sg_quota "$POD_L") $(sg_quota "$G") $(sg_quota "$POD_G") $(sg_quota "$T") $(sg_quota "$POD_T") $(sg_quota "$T")" >>"$SG_RUN/peaks.log"
		usleep 250000
	done
) &
sampler=$!
sg_agent_start --discovery cri --cri-endpoint "$SG_CRI_SOCK"

metrics() { sg_http /metrics >"$SG_RUN/metrics.txt"; }
has() { metrics && grep -q -e "$1" "$SG_RUN/metrics.txt"; }
sg_check "2 sidecars governed (the lookalike app is not)" sg_wait 30 has '^sidecar_governor_proxies 2$'
if sg_wait 40 sg_quota_at_least "$T" 50001; then
	sg_ok "trusted (mesh) grew above its 500m limit: cpu.max '$(sg_cpu_max "$T")', pod '$(sg_cpu_max "$POD_T")'"
else
	sg_fail "trusted (mesh) hot but not above its limit after 40 s: '$(sg_cpu_max "$T")'"
fi
sleep 10
sg_check "greedy's annotation refused and counted" has 'sidecar_governor_errors_total{kind="annotation"} [1-9]'
sg_check "agent log names the refused annotation" grep -q 'sidecar-governor.io/cpu-min=2 is outside' "$SG_RUN/agent.log"
# The runtime goes away: discovery falls back to procfs, which finds the lookalike by its
# process name alone. The policy has namespace rules (an override), so it is left alone and
# counted, while the sidecars CRI identified keep their identity (and the trusted one its
# grant). Without the identity rule the lookalike would be governed here, above its limit.
sg_cri_stop
sg_log "containerd stopped (its shims and the containers keep running)"
sg_check 'discovery_source{source="procfs"} 1 after containerd stopped' \
	sg_wait 30 has '^sidecar_governor_discovery_source{source="procfs"} 1$'
sg_check "the lookalike, found by its process name alone, is counted and left alone" \
	sg_wait 20 has '^sidecar_governor_unidentified_proxies 1$'
sg_check "still the 2 sidecars governed through the fallback" has '^sidecar_governor_proxies 2$'
sleep 10
sg_cri_daemon
sg_check 'discovery_source{source="cri"} 1 again once containerd answers' \
	sg_wait 40 has '^sidecar_governor_discovery_source{source="cri"} 1$'
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
peak() { awk -v c="$1" '$c > m { m = $c } END { print m + 0 }' "$SG_RUN/peaks.log"; }
sg_log "peaks (quota us, $(wc -l <"$SG_RUN/peaks.log") samples): lookalike $(peak 1) pod $(peak 2); greedy $(peak 3) pod $(peak 4); trusted $(peak 5) pod $(peak 6)"
sg_check "lookalike never above its 100m" [ "$(peak 1)" -le 10000 ]
sg_check "lookalike's pod never above its 100m" [ "$(peak 2)" -le 10000 ]
sg_check "greedy never above its 1 core" [ "$(peak 3)" -le 100000 ]
sg_check "greedy's pod never above its 1 core" [ "$(peak 4)" -le 100000 ]
# shellcheck disable=SC2016 # awk's own fields
sg_check "trusted's pod raised with it (pod >= container at every sample)" \
	awk '$6 < ($5 < $7 ? $5 : $7) { bad = 1 } END { exit bad }' "$SG_RUN/peaks.log"
# The evidence of a failure: each sample with the pod below the container, with its neighbours
# (columns: lookalike, pod, greedy, pod, trusted, pod, trusted again; one sample reads the
# files in turn).
awk '{ row[NR] = $0; if ($6 < ($5 < $7 ? $5 : $7)) bad[NR] = 1 } END { for (i in bad) print "sample " i - 1 ": " row[i - 1] "\nsample " i ": " row[i] "  <- trusted pod < container\nsample " i + 1 ": " row[i + 1] }' \
	"$SG_RUN/peaks.log" | sed 's/^/  /'
sg_check "trusted's pod raised above its own original" [ "$(peak 6)" -gt 50000 ]

for n in greedy trusted; do echo idle >"$SG_RUN/ctl/$n"; done
sg_agent_stop TERM 15
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "greedy restored" "$(sg_cpu_max "$G")" "100000 100000"
sg_expect "greedy's pod exactly as found" "$(sg_cpu_max "$POD_G")" "100000 100000"
sg_expect "trusted restored" "$(sg_cpu_max "$T")" "50000 100000"
sg_expect "trusted's pod exactly back" "$(sg_cpu_max "$POD_T")" "50000 100000"
sg_untouched_snapshot "$L" "$POD_L" >"$SG_RUN/untouched.now"
if cmp -s "$SG_RUN/untouched.before" "$SG_RUN/untouched.now"; then
	sg_ok "lookalike app and its pod unchanged ($(wc -l <"$SG_RUN/untouched.before") values)"
else
	sg_fail "changed: $(diff "$SG_RUN/untouched.before" "$SG_RUN/untouched.now" | grep '^[-+][^-+]' | tr '\n' ' ')"
fi
sg_cri_cleanup
sg_done
