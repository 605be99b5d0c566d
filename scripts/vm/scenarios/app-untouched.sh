#!/bin/sh
# shellcheck shell=dash
# Through a whole life cycle (shrink, turn hot, SIGTERM) the app containers' and the pod, QoS and
# kubepods cgroups' files (cpu.max, cpu.max.burst, cpu.weight, memory.*) stay byte-for-byte what
# kubelet wrote; compared every second. App A spins, so it is busy and throttled the whole time.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_agent_start
changed=0
phase=shrink
i=0
while [ $i -lt 90 ]; do
	if ! sg_untouched_same; then
		changed=$((changed + 1))
		[ $changed = 1 ] && sg_fail "changed at ${i}s ($phase): $(diff "$SG_RUN/untouched.before" "$SG_RUN/untouched.now" | grep '^[-+][^-+]' | tr '\n' ' ')"
	fi
	case $phase in
	shrink)
		if sg_quota_below "$PROXY_A" 20000; then
			sg_log "proxy A shrunk to $(sg_cpu_max "$PROXY_A"): turning it hot"
			echo spin >"$CTL_A"
			phase=hot
		fi
		;;
	hot)
		if sg_quota_at_least "$PROXY_A" 100000; then
			sg_log "proxy A back to $(sg_cpu_max "$PROXY_A"): SIGTERM"
			sg_agent_stop TERM 10
			sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
			phase=stopped
			j=0
		fi
		;;
	stopped)
		j=$((j + 1))
		[ $j -ge 3 ] && break
		;;
	esac
	sleep 1
	i=$((i + 1))
done
sg_expect "phase reached" "$phase" stopped
sg_expect "seconds with a changed non-proxy file" "$changed" 0
sg_check_untouched
[ "$phase" = stopped ] || sg_agent_stop TERM 10
sg_done
