#!/bin/sh
# shellcheck shell=dash
# /healthz and /readyz answer 200, /metrics counts 2 proxies, carries the issue's metric names,
# one quota series per proxy (none for the apps) that agrees with the kernel's cpu.max, and
# counts the shrink as an action.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_agent_start
sg_check "/healthz answers 200" sg_wait 10 sg_http_ok /healthz
sg_check "/readyz answers 200 (a tick completed)" sg_wait 15 sg_http_ok /readyz

metrics() { sg_http /metrics >"$SG_RUN/metrics.txt"; }
proxies_is_2() { metrics && grep -q '^sidecar_governor_proxies 2$' "$SG_RUN/metrics.txt"; }
sg_check "sidecar_governor_proxies 2" sg_wait 10 proxies_is_2
sg_expect "/metrics status" "$SG_HTTP_STATUS" 200

# A shrink happened, so there is a down action.
sg_wait 40 sg_quota_below "$PROXY_A" 200000 || sg_fail "proxy A not shrunk after 40 s"
sleep 2
metrics
for name in sidecar_governor_proxies sidecar_governor_actions_total \
	sidecar_governor_cpu_quota_millicores sidecar_governor_cpu_usage_millicores \
	sidecar_governor_cpu_throttled_ratio sidecar_governor_tick_duration_seconds_bucket \
	sidecar_governor_tick_duration_seconds_count; do
	sg_check "series $name" grep -q "^${name}[{ ]" "$SG_RUN/metrics.txt"
done
# errors_total has a series per known kind from the start, at 0; none should have counted here.
sg_log "errors: $(grep '^sidecar_governor_errors_total' "$SG_RUN/metrics.txt" | tr '\n' ' ')"
sg_check 'actions_total{resource="cpu",direction="down"} counted' \
	sh -c "grep '^sidecar_governor_actions_total{' $SG_RUN/metrics.txt | grep 'resource=\"cpu\"' | grep -q 'direction=\"down\"'"

# One quota series per proxy, labelled with its pod UID and container ID; none for the apps.
for p in "A $UID_A $CID_A" "B $UID_B $CID_B"; do
	# shellcheck disable=SC2086 # split into name, uid, id
	set -- $p
	n=$(grep '^sidecar_governor_cpu_quota_millicores{' "$SG_RUN/metrics.txt" | grep "pod_uid=\"$2\"" | grep -c "container_id=\"$3\"" || true)
	sg_expect "quota series for proxy $1 (pod_uid, container_id)" "$n" 1
done
sg_check "no series for the app containers" sh -c "! grep -q -e $(sg_cid app-a) -e $(sg_cid app-b) $SG_RUN/metrics.txt"

# The quota gauge agrees with the kernel's cpu.max (retry: a tick may sit between the reads).
gauge_matches() {
	metrics
	_g=$(grep '^sidecar_governor_cpu_quota_millicores{' "$SG_RUN/metrics.txt" | grep "container_id=\"$CID_A\"" | awk '{ print $NF }')
	_k=$(sg_quota_m "$PROXY_A")
	sg_log "proxy A: gauge ${_g}, kernel ${_k}m"
	[ -n "$_g" ] && awk -v g="$_g" -v k="$_k" 'BEGIN { exit !(g == k) }'
}
sg_check "quota gauge of proxy A equals cpu.max" sg_wait 10 gauge_matches
sg_log "metrics excerpt:"
grep '^sidecar_governor' "$SG_RUN/metrics.txt" | grep -v _bucket | head -n 30 | sed 's/^/    /'

sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_untouched
sg_done
