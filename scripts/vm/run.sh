#!/bin/sh
# shellcheck shell=dash
# Runs inside the VM: each scenario named by sg.scenarios= on the kernel command line, in turn,
# each under a timeout, with a teardown between them. Prints one marker line per scenario:
#   SCENARIO-RESULT <name> PASS|FAIL <detail>
# and SCENARIO-ALL-DONE at the end. The host script greps these.
. /sg/lib.sh

arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
scenarios=$(arg sg.scenarios | tr , ' ')
limit=$(arg sg.timeout)
limit=${limit:-240}
verbose=$(arg sg.verbose)

for s in $scenarios; do
	echo "SCENARIO-START $s"
	t0=$(sg_now_ms)
	if [ -f "/sg/scenarios/$s.sh" ]; then
		SG_SCENARIO=$s timeout -k 5 "$limit" sh "/sg/scenarios/$s.sh"
		rc=$?
	else
		echo "no such scenario: $s" >>"$SG_RUN/failures"
		rc=127
	fi
	secs=$((($(sg_now_ms) - t0) / 1000))
	if [ "$rc" = 0 ] && [ ! -s "$SG_RUN/failures" ]; then
		echo "SCENARIO-RESULT $s PASS (${secs}s)"
	else
		detail=$(head -n 3 "$SG_RUN/failures" 2>/dev/null | tr '\n' ';' | sed 's/;$//; s/;/; /g')
		case $rc in
		0 | 1) ;;
		124 | 137 | 143) detail="timeout after ${limit}s; $detail" ;;
		*) detail="exit $rc; $detail" ;;
		esac
		[ -n "$detail" ] || detail="exit $rc (a command failed, see the log above)"
		echo "--- $s: last agent log lines"
		tail -n 25 "$SG_RUN/agent.log" 2>/dev/null | cut -c1-400 | sed 's/^/  agent| /'
		echo "SCENARIO-RESULT $s FAIL (${secs}s) $detail"
	fi
	if [ -n "$verbose" ]; then
		sed 's/^/  agent| /' "$SG_RUN/agent.log" 2>/dev/null
		for f in "$SG_RUN"/log/*.log; do [ -f "$f" ] && sed "s|^|  $(basename "$f" .log)| |" "$f"; done
	fi
	rm -f "$SG_RUN/agent.log"
	sg_teardown
done
echo "SCENARIO-ALL-DONE"
