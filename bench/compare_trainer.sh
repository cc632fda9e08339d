#!/bin/sh
# End-to-end training speed of two ballast binaries on the same config, interleaved run by run so
# that a change in the machine's load affects both: data loading, every training step and the
# final evaluation, as a user runs them. Prints each run's user CPU and wall seconds and the
# epochs' seconds from its log, then the ratios (B / A) of the mean and of the fastest wall times:
# on a shared machine the fastest run of each is the one least disturbed by other processes.
#
#   bench/compare_trainer.sh A_BINARY B_BINARY CONFIG [REPEATS] [key=value ...]
#
# e.g. bench/compare_trainer.sh old/build/ballast build/ballast \
#        runs/demo_longtail/ce/config.yaml 3 train.epochs=1 train.threads=1
# (a run directory's config.yaml is the resolved config, readable by older binaries too)
set -eu
if [ $# -lt 3 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
a=$1 b=$2 config=$3
shift 3
repeats=3
case "${1:-}" in [0-9]*) repeats=$1; shift ;; esac
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
sum_a=0 sum_b=0 min_a=0 min_b=0
i=1
while [ "$i" -le "$repeats" ]; do
    for which in a b; do
        if [ $which = a ]; then bin=$a; else bin=$b; fi
        dir=$out/$which$i
        start=$(date +%s.%N)
        if ! /usr/bin/time -f "%U" -o "$out/user" "$bin" train "$config" "$@" output.dir="$dir" --quiet \
            >"$out/output" 2>&1; then
            echo "compare_trainer: $bin failed:" >&2
            tail -5 "$out/output" >&2
            exit 1
        fi
        wall=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
        epochs=$(grep -o '"seconds":[0-9.]*' "$dir/log.jsonl" | cut -d: -f2 | tr '\n' ' ')
        printf '%s run %d: wall %.2f s, user %s s, epochs %s\n' "$which" "$i" "$wall" "$(cat "$out/user")" "$epochs"
        if [ $which = a ]; then
            sum_a=$(awk -v x="$sum_a" -v y="$wall" 'BEGIN { print x + y }')
            min_a=$(awk -v m="$min_a" -v y="$wall" 'BEGIN { print (m == 0 || y < m) ? y : m }')
        else
            sum_b=$(awk -v x="$sum_b" -v y="$wall" 'BEGIN { print x + y }')
            min_b=$(awk -v m="$min_b" -v y="$wall" 'BEGIN { print (m == 0 || y < m) ? y : m }')
        fi
    done
    i=$((i + 1))
done
awk -v a="$sum_a" -v b="$sum_b" -v n="$repeats" -v ma="$min_a" -v mb="$min_b" 'BEGIN {
    printf "mean wall: a %.2f s, b %.2f s, b / a = %.3f\n", a / n, b / n, b / a
    printf "fastest wall: a %.2f s, b %.2f s, b / a = %.3f\n", ma, mb, mb / ma }'
