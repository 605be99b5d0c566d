#!/bin/sh
# shellcheck shell=dash
# The live demo (scripts/demo.sh): three pods on a real cgroup v2 kernel, two idle proxies, one
# hot proxy and an app; the agent governs them while a table shows every second or two what the
# kernel holds (cpu.max quota, usage from cpu.stat deltas, throttling) and the last change. Halfway,
# one idle proxy turns hot. At the end SIGTERM puts the originals back.
# shellcheck disable=SC2034,SC2154 # SG_TRACE is read by lib.sh; the p* variables come from eval

set -eu
. /sg/lib.sh

secs=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^sg.demo=//p')
secs=${secs:-80}
hot_at=$((secs / 2))

# pod "reviews": systemd driver, Istio sidecar (pilot-agent + envoy), idle; and its app
UID_R=5d1f0c2e-7a41-4c39-9b1e-2f8d2f6a0a11
POD_R=$(sg_pod systemd burstable $UID_R)
PROXY_R=$(sg_container "$POD_R" containerd "$(sg_cid reviews-proxy)" 2000 100 1024)
APP_R=$(sg_container "$POD_R" containerd "$(sg_cid reviews-app)" 1000 500 512)
sg_pod_limits "$POD_R" 3000 600 1536
# pod "ratings": cgroupfs driver, Istio sidecar busy on one core
UID_T=8c3e6b90-12f4-4d7a-a0c5-6e9b1d2c3f22
POD_T=$(sg_pod cgroupfs burstable $UID_T)
PROXY_T=$(sg_container "$POD_T" containerd "$(sg_cid ratings-proxy)" 2000 100 1024)
sg_pod_limits "$POD_T" 2000 100 1024
# pod "details": systemd driver, CRI-O, Linkerd sidecar, idle (turns hot halfway)
UID_D=0b7d4e1a-93c2-4f60-8e2d-4a5b6c7d8e33
POD_D=$(sg_pod systemd burstable $UID_D)
PROXY_D=$(sg_container "$POD_D" crio "$(sg_cid details-proxy)" 1500 100 512)
sg_pod_limits "$POD_D" 1500 100 512

echo idle >"$SG_RUN/ctl/reviews"
echo spin >"$SG_RUN/ctl/ratings"
echo idle >"$SG_RUN/ctl/details"
sg_spawn "$PROXY_R" reviews /usr/local/bin/pilot-agent --mode idle
sg_spawn "$PROXY_R" reviews /bin/envoy --control "$SG_RUN/ctl/reviews" --concurrency 2
sg_spawn "$APP_R" reviews-app /bin/app --mode idle
sg_spawn "$PROXY_T" ratings /bin/envoy --control "$SG_RUN/ctl/ratings" --concurrency 2
sg_spawn "$PROXY_D" details /usr/local/bin/linkerd2-proxy --control "$SG_RUN/ctl/details"

# rows: label pod container dir
cat >"$SG_RUN/rows" <<ROWS
r reviews istio-proxy $PROXY_R
a reviews app $APP_R
t ratings istio-proxy $PROXY_T
d details linkerd-proxy $PROXY_D
ROWS
PROXIES="$PROXY_R $PROXY_T $PROXY_D"
SG_TRACE="reviews=$PROXY_R ratings=$PROXY_T details=$PROXY_D"
for d in $PROXIES $APP_R $POD_R $POD_T $POD_D; do sg_save_dir "$d"; done
app_before=$(cat "$APP_R/cpu.max" "$POD_R/cpu.max" "$POD_T/cpu.max" "$POD_D/cpu.max" | tr '\n' ' ')

cat >"$SG_POLICY" <<POLICY
# demo policy
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 5s
POLICY
echo "--- policy ($SG_POLICY):"
sed 's/^/    /' "$SG_POLICY"

echo "--- sidecar-governor discover --output table:"
timeout 20 "$SG_BIN" discover --cgroup-root "$CG" --proc-root /proc --output table 2>/dev/null |
	cut -c1-160 | sed 's/^/    /' || true

t_start=$(sg_now_ms)
stopped=
# table: one line per row; "last" remembers the last change per label
table() {
	now=$(sg_now_ms)
	el=$(((now - t_start) / 1000))
	printf '\n  t=%3ss %-9s %-14s %9s %9s %9s  %s\n' "$el" POD CONTAINER "QUOTA(m)" "USAGE(m)" THROTTLED "LAST CHANGE"
	while read -r label pod ctr dir; do
		q=$(sg_quota_m "$dir")
		u=$(sg_stat "$dir" usage_usec)
		np=$(sg_stat "$dir" nr_periods)
		nt=$(sg_stat "$dir" nr_throttled)
		eval "pu=\${PU_$label:-$u} pt=\${PT_$label:-$now} pnp=\${PNP_$label:-$np} pnt=\${PNT_$label:-$nt} pq=\${PQ_$label:-$q} last=\${LAST_$label:--}"
		dt=$((now - pt))
		use=0
		[ "$dt" -gt 0 ] && use=$(((u - pu) / dt))
		thr=0
		[ $((np - pnp)) -gt 0 ] && thr=$(((nt - pnt) * 100 / (np - pnp)))
		if [ "$q" != "$pq" ]; then
			if [ -n "$stopped" ]; then
				dir_s=restored
			elif [ "$q" = max ] || { [ "$pq" != max ] && [ "$q" -gt "$pq" ]; }; then
				dir_s=up
			else
				dir_s=down
			fi
			last="$dir_s ${pq}m -> ${q}m at ${el}s"
		fi
		[ "$ctr" = app ] && last="(not a proxy: never written)"
		printf '         %-9s %-14s %9s %9s %8s%%  %s\n' "$pod" "$ctr" "$q" "$use" "$thr" "$last"
		eval "PU_$label=$u PT_$label=$now PNP_$label=$np PNT_$label=$nt PQ_$label=$q LAST_$label=\"\$last\""
	done <"$SG_RUN/rows"
}

echo "--- agent: $SG_BIN run --config $SG_POLICY (for ${secs}s; 'details' turns hot at ${hot_at}s)"
table
sg_agent_start
turned=0
while :; do
	sleep 2
	el=$((($(sg_now_ms) - t_start) / 1000))
	if [ $turned = 0 ] && [ "$el" -ge "$hot_at" ]; then
		echo
		echo "  >>> ${el}s: details' linkerd2-proxy turns hot (spins one thread)"
		echo spin >"$SG_RUN/ctl/details"
		turned=1
	fi
	table
	if sg_agent_exited; then
		sg_fail "the agent exited early (code $(cat "$SG_RUN/agent.rc")); its log:"
		tail -n 20 "$SG_RUN/agent.log"
		sg_done
	fi
	[ "$el" -ge "$secs" ] && break
done

echo
echo "--- metrics (actions so far):"
sg_http /metrics | grep -e '^sidecar_governor_actions_total' -e '^sidecar_governor_proxies' | sed 's/^/    /' || true
echo
echo "--- SIGTERM to the agent"
sg_agent_stop TERM 10
echo "    exit code ${SG_AGENT_RC} after ${SG_AGENT_STOP_MS} ms"
stopped=1
table
echo
sg_expect "agent exit code" "$SG_AGENT_RC" 0
sg_check_restored "restored"
sg_expect "app and pod cpu.max unchanged" \
	"$(cat "$APP_R/cpu.max" "$POD_R/cpu.max" "$POD_T/cpu.max" "$POD_D/cpu.max" | tr '\n' ' ')" "$app_before"
sg_done
