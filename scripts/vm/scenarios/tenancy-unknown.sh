#!/bin/sh
# shellcheck shell=dash
# Issue 9 case 3, real kernel: a proxy found by its process name alone (procfs discovery, no
# runtime: its namespace is unknown) escapes no namespace rule. Two pods, each with a sidecar
# cgroup (500m) running the stand-in envoy, idle; the policy grants cpu.allowAboveLimit.
#   1. With a namespace rule in the policy (match.excludeNamespaces: [shop]), neither proxy is
#      governed: either could be in `shop`. Both are counted as unidentified and their cpu.max
#      stays exactly as found, long past scaleDownAfter (before issue 9 both shrank).
#   2. The rule removed (a hot reload): no namespace rule can apply, so both are governed and
#      shrink to the floor.
#   3. One turns hot: it grows back, but never above its own limit, allowAboveLimit
#      notwithstanding (only proxies the runtime identifies may go above), and its pod cgroup
#      is never touched.
#   4. After SIGTERM every file is back as found.
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

DIRS="" KEEP="" SG_TRACE=""
for n in 1 2; do
	sg_one_pod "unknown-$n"
	# shellcheck disable=SC2153 # PROXY, APP, POD are set by sg_one_pod
	echo 50000 100000 >"$PROXY/cpu.max"
	echo idle >"$SG_RUN/ctl/unknown-$n"
	sg_spawn "$PROXY" "proxy-$n" /bin/envoy --mode idle --control "$SG_RUN/ctl/unknown-$n" --concurrency 1
	sg_save_dir "$PROXY"
	DIRS="$DIRS $PROXY" KEEP="$KEEP $APP $POD"
	SG_TRACE="$SG_TRACE P$n=$PROXY"
	[ "$n" = 1 ] && { HOT=$PROXY HOT_POD=$POD; }
done
export SG_TRACE
# shellcheck disable=SC2086
sg_untouched_snapshot $DIRS $KEEP >"$SG_RUN/found.before"
# shellcheck disable=SC2086
sg_untouched_snapshot $KEEP >"$SG_RUN/keep.before"
policy() {
	sg_policy_write <<EOT
interval: 1s
match:
  rescanInterval: 2s
$1
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 2s
  throttledRatio: 0.5
  allowAboveLimit: true
EOT
}
policy '  excludeNamespaces: [shop]'
sg_agent_start --discovery procfs
has() { sg_http /metrics >"$SG_RUN/metrics.txt" && grep -q -e "$1" "$SG_RUN/metrics.txt"; }
sg_check "both proxies found and counted as unidentified" \
	sg_wait 20 has '^sidecar_governor_unidentified_proxies 2$'
sleep 8
sg_expect "proxies governed under a namespace rule" "$(sg_metric sidecar_governor_proxies)" 0
sg_expect "unidentified proxies" "$(sg_metric sidecar_governor_unidentified_proxies)" 2
# shellcheck disable=SC2086
sg_untouched_snapshot $DIRS $KEEP >"$SG_RUN/found.now"
sg_check "every file as found, 10 s past scaleDownAfter (nothing shrank)" \
	cmp -s "$SG_RUN/found.before" "$SG_RUN/found.now"
policy ''
sg_log "policy reloaded without namespace rules"
# shellcheck disable=SC2086 # one argument per directory
sg_check "both governed once no namespace rule can apply: at the floor" sg_wait 30 sg_all_cpu_max "10000 100000" $DIRS
sg_expect "unidentified proxies after the reload" "$(sg_metric sidecar_governor_unidentified_proxies)" 0
: >"$SG_RUN/peaks.log"
(
	while :; do
		echo "$(sg_quota "$HOT") $(sg_quota "$HOT_POD")" >>"$SG_RUN/peaks.log"
		usleep 250000
	done
) &
sampler=$!
echo spin >"$SG_RUN/ctl/unknown-1"
sg_check "the hot one grows back to its own limit" sg_wait 20 sg_file_is "$HOT/cpu.max" "50000 100000"
sleep 5
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
peak() { awk -v c="$1" '$c > m { m = $c } END { print m + 0 }' "$SG_RUN/peaks.log"; }
sg_log "peaks over $(wc -l <"$SG_RUN/peaks.log") samples: proxy $(peak 1), pod $(peak 2)"
sg_check "never above its own limit (no runtime identity: allowAboveLimit does not apply)" \
	[ "$(peak 1)" -le 50000 ]
echo idle >"$SG_RUN/ctl/unknown-1"
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
# shellcheck disable=SC2086
sg_untouched_snapshot $KEEP >"$SG_RUN/keep.now"
sg_check "apps and pod cgroups never touched" cmp -s "$SG_RUN/keep.before" "$SG_RUN/keep.now"
sg_done
