#!/bin/sh
# shellcheck shell=dash
# Issue 4, real kernel: memory-reclaim with `memory.shrinkWith: reclaim` (memory.reclaim, Linux
# 5.19+): the idle proxy's page cache is reclaimed and its anon memory untouched while
# memory.high stays where it was placed (a loose ceiling, no tight limit left behind).
SG_MEM_SHRINK=reclaim exec sh /sg/scenarios/memory-reclaim.sh
