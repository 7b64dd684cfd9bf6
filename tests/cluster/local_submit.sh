#!/usr/bin/env bash
# A "cluster" on this machine, for Snakemake's cluster-generic executor: each submitted job
# script runs as its own background process (its own Snakemake, Python and job), as on a real
# cluster node. Prints the process id as the job id; appends the job's properties line
# ("# properties = {...}": rule or group, wildcards, resources) to $MEDMIX_SUBMISSIONS if set.
#   --executor cluster-generic --cluster-generic-submit-cmd "tests/cluster/local_submit.sh"
set -euo pipefail
jobscript="${!#}"
if [[ -n "${MEDMIX_SUBMISSIONS:-}" ]]; then
    grep -m1 '^# properties = ' "$jobscript" | sed 's/^# properties = //' >> "$MEDMIX_SUBMISSIONS"
fi
nohup bash "$jobscript" > "$jobscript.out" 2>&1 < /dev/null &
echo $!
