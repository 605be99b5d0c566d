#!/bin/sh
# shellcheck shell=dash
# sg-vm-group: cri
# Issue 8, case 1, real kernel and real containerd: a sidecar container restarted (OOM kill,
# liveness failure) while the agent holds its pod above the pod's limit (cpu.allowAboveLimit)
# must not ratchet the pod up. One pod made through CRI (cri_driver, as kubelet does): an
# istio-proxy container of 500m running the stand-in envoy, spinning a thread (~1 core), and an
# app of 500m, so the pod's cpu.max is 1000m. The agent discovers through CRI (the proxy has a
# runtime identity, so allowAboveLimit applies) and raises the container above its limit and
# the pod with it. Then the container is restarted as kubelet does it: StopContainer (no grace;
# runc removes its cgroup, the exited container stays) and a new container of the same name in
# the same sandbox (metadata.attempt + 1, a new id, the same limits, hot again). Three
# containers in all: the second once the pod is back (at most 10 s), the third at once (its
# CreateContainer/StartContainer run while the second is being stopped; under TCG these take
# a second or more, so the agent may see the pod without a governed container in between or
# not: the assertions hold for both). Asserted from the kernel's files:
#   - once the first container is gone (and before a new one exists), the pod's cpu.max is back
#     at its original: the agent gives the pod back when its last governed container goes;
#   - the pod's quota never exceeds original + (policy cpu.max - container limit) = 2500m (a
#     restart never turns the raised pod into an original, however fast it is);
#   - after SIGTERM (exit 0) the pod's and the last container's files are exactly their
#     originals (the last container's as runc wrote the first's: the same CRI limits).
# Runs in the cri boot (scripts/vm-e2e.sh routes `sg-vm-group: cri` scenarios there).
set -eu
. /sg/lib.sh
. /sg/cri-lib.sh

POD_ORIG="100000 100000"
C_ORIG="50000 100000"
BOUND=2500 # pod original 1000m + (policy cpu.max 2000m - container limit 500m)
UID_P=$(sg_uid own-restart-pod)
PROXY="istio-proxy|500|/bin/envoy --mode spin"
sg_cri_start
sg_cri_mesh_pod restart-1 "$UID_P"
C1=$C
sg_save_dir "$C1" # before the agent runs: the originals of every attempt (the same CRI limits)
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.before"

sg_policy_write <<'EOT'
interval: 1s
match:
  rescanInterval: 3s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
  allowAboveLimit: true
memory:
  enabled: false
EOT
export SG_TRACE="POD=$POD"
sg_trace_start

raised() { sg_quota_at_least "$C" 50001 && sg_quota_at_least "$POD" 100001; }
i=1
while :; do
	C=$(sg_cri_cg "$UID_P" "$CID")
	sg_check "an envoy runs in container $i ($(echo "$CID" | cut -c1-12))" sg_wait 10 sg_cri_runs "$C" envoy
	if [ $i -eq 1 ]; then
		sg_expect "container 1 cpu.max as runc wrote it from the CRI limit" "$(sg_orig "$C1" cpu.max)" "$C_ORIG"
		sg_agent_start --discovery cri --cri-endpoint "$SG_CRI_SOCK"
	fi
	if sg_wait 30 raised; then
		sleep 3 # let it reach its plateau
		sg_ok "container $i raised above its limit: container $(sg_quota_m "$C")m, pod $(sg_quota_m "$POD")m"
	else
		sg_fail "container $i not raised within 30 s (container $(sg_cpu_max "$C"), pod $(sg_cpu_max "$POD"))"
	fi
	sg_check "container $i governed under its runtime names (mesh/restart-1/istio-proxy, its id)" \
		sg_cri_named mesh restart-1 istio-proxy "$CID"
	pq=$(sg_quota_m "$POD")
	sg_check "pod quota with container $i: ${pq}m <= ${BOUND}m" [ "$pq" -le "$BOUND" ]
	if [ $i -eq 1 ]; then
		# A restart after a pause (crash-loop back-off): the agent sees the pod without a
		# governed container before the new one exists.
		sg_cri_stop_container "$CID" || sg_fail "could not stop container $i"
		tg=$(sg_now_ms)
		sg_log "container $i stopped, its cgroup gone (pod cpu.max '$(sg_cpu_max "$POD")')"
		if sg_wait 10 sg_file_is "$POD/cpu.max" "$POD_ORIG"; then
			sg_ok "container $i gone: the pod's cpu.max is back at '$POD_ORIG' $(($(sg_now_ms) - tg)) ms later"
		else
			sg_fail "container $i gone: pod cpu.max '$(sg_cpu_max "$POD")' 10 s later, want its original '$POD_ORIG'"
		fi
		sg_cri_restart mesh restart-1 "$UID_P" 1 restart-2 --container "$PROXY"
		CID=$(sg_cri_cid restart-2 istio-proxy)
	elif [ $i -eq 2 ]; then
		# An immediate restart: the new container is made while the old one is being stopped,
		# with the pod still raised.
		sg_log "container $i stopped and the next one created at once (pod cpu.max '$(sg_cpu_max "$POD")')"
		(sg_cri_stop_container "$CID" || sg_fail "could not stop container $i") &
		stopper=$!
		sg_cri_restart mesh restart-1 "$UID_P" 2 restart-3 --container "$PROXY"
		wait "$stopper" || true
		CID=$(sg_cri_cid restart-3 istio-proxy)
	else
		break
	fi
	i=$((i + 1))
done
sg_trace_stop
sg_agent_stop TERM 10
peak=$(sg_trace_max POD)
sg_check "the pod's quota never above ${BOUND}m over three containers (peak ${peak}m)" [ "$peak" -le "$BOUND" ]
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "pod cpu.max after SIGTERM" "$(sg_cpu_max "$POD")" "$POD_ORIG"
for f in $SG_GOVERNED_FILES; do
	sg_expect "container 3 $f after SIGTERM" "$(cat "$C/$f")" "$(sg_orig "$C1" "$f")"
done
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.now"
sg_check "app container unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_cri_cleanup
sg_done
