#!/bin/sh
# shellcheck shell=dash
# After a shrink and kill -9, `sidecar-governor restore` exits 0 with the originals back; a
# second run is harmless.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_agent_start
if sg_wait 40 sg_quota_below "$PROXY_A" 200000; then
	sleep 2
else
	sg_fail "proxy A not shrunk after 40 s ($(sg_cpu_max "$PROXY_A"))"
fi
sg_agent_stop KILL 5
sg_log "killed; proxy A at '$(sg_cpu_max "$PROXY_A")', journal: $(find "$SG_STATE" -type f 2>/dev/null | tr '\n' ' ')"
for round in 1 2; do
	rc=0
	timeout 30 "$SG_BIN" restore --cgroup-root "$CG" --state-dir "$SG_STATE" >"$SG_RUN/restore.out" 2>&1 || rc=$?
	sed 's/^/  restore| /' "$SG_RUN/restore.out" | tail -n 20
	sg_expect "restore run $round exit code" "$rc" 0
	sg_check_restored "after restore run $round"
done
sg_check_untouched
sg_done
