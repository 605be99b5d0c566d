#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 4 (exit variant), real kernel: start writing, shrink an idle proxy, switch the
# policy to dryRun: true and send SIGTERM as soon as dry run is live. The exit restores whatever
# the journal holds, in any mode: exit 0 with cpu.max and memory.high at their originals.
# (own-dry-run.sh with SG_OWN_DRY_RUN_EXIT=1.)
SG_OWN_DRY_RUN_EXIT=1 exec sh /sg/scenarios/own-dry-run.sh
