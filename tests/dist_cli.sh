#!/bin/sh
# `ballast train` under mpirun, from outside: two processes train a run that the first one alone
# writes, continue it with --resume, and a failure ends both with one message and a non-zero exit
# status, not a hang (each mpirun has a time limit). CMake runs it when it finds MPI:
#   sh tests/dist_cli.sh BALLAST_BINARY MPIRUN
set -u
BIN=$1
MPIRUN=$2
DIR=$(mktemp -d /tmp/ballast_dist_cli.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
run2() { timeout 300 "$MPIRUN" -np 2 --oversubscribe "$BIN" "$@"; }

cat > "$DIR/run.yaml" <<YAML
dataset: {name: synthetic, split_seed: 1, val_per_class: 2,
          synthetic: {classes: 4, train_per_class: 18, test_per_class: 4, size: 8}}
model: {name: resnet32}
train: {epochs: 2, batch_size: 16, lr: 0.05, schedule: constant, eval_every: 1, checkpoint_every: 1,
        threads: 1, sync_bn: true}
YAML

# training: the first process writes the run; the log counts both processes' images
run2 train "$DIR/run.yaml" output.dir="$DIR/run" > "$DIR/out.txt" 2>&1 || fail "train: exit status $? $(cat "$DIR/out.txt")"
for f in config.yaml log.jsonl results.json split_train.idx checkpoint.json checkpoints/final/model.safetensors; do
    [ -f "$DIR/run/$f" ] || fail "train: $f is missing"
done
grep -q '"processes":2' "$DIR/run/log.jsonl" || fail "train: the log has no multi-process epoch record"
[ "$(grep -c '^run ' "$DIR/out.txt")" -eq 1 ] || fail "train: the run line should be printed once: $(cat "$DIR/out.txt")"

# resume: with one more epoch asked for, the config differs and resume refuses, in both processes
run2 train "$DIR/run" --resume --quiet > "$DIR/out.txt" 2>&1 || fail "resume of a finished run: exit status $?"
run2 train "$DIR/run.yaml" output.dir="$DIR/run" train.epochs=3 --resume --quiet > "$DIR/out.txt" 2>&1 &&
    fail "resume with another config should fail"
grep -q "train.epochs is 3 now but 2" "$DIR/out.txt" || fail "resume: message missing: $(cat "$DIR/out.txt")"
[ "$(grep -c '^ballast: ' "$DIR/out.txt")" -eq 1 ] || fail "resume: the error should be printed once: $(cat "$DIR/out.txt")"

# a batch the processes do not divide
run2 train "$DIR/run.yaml" output.dir="$DIR/odd" train.batch_size=15 --quiet > "$DIR/out.txt" 2>&1 &&
    fail "batch 15 over 2 processes should fail"
grep -q "divisible by their number, 2" "$DIR/out.txt" || fail "batch 15: message missing: $(cat "$DIR/out.txt")"
[ -e "$DIR/odd" ] && fail "batch 15: nothing should be written"

# divergence on every process: both stop, the first one logs the error
run2 train "$DIR/run.yaml" output.dir="$DIR/nan" train.lr=1e30 --quiet > "$DIR/out.txt" 2>&1 &&
    fail "lr 1e30 should diverge"
grep -q "training diverged" "$DIR/out.txt" || fail "divergence: message missing: $(cat "$DIR/out.txt")"
grep -q '"error":"rank 0: ' "$DIR/nan/log.jsonl" || fail "divergence: no error record in the log"

# one process fails before any run exists (its config file is missing there): both stop
run2 train "$DIR/missing.yaml" --quiet > "$DIR/out.txt" 2>&1 && fail "a missing config should fail"
grep -q "missing.yaml" "$DIR/out.txt" || fail "missing config: message missing: $(cat "$DIR/out.txt")"

# the same binary without mpirun trains as one process
timeout 300 "$BIN" train "$DIR/run.yaml" output.dir="$DIR/single" --quiet > "$DIR/out.txt" 2>&1 ||
    fail "one process: exit status $? $(cat "$DIR/out.txt")"
grep -q '"processes"' "$DIR/single/log.jsonl" && fail "one process: the log should have no multi-process record"

if [ "$failures" -ne 0 ]; then
    echo "$failures failed"
    exit 1
fi
echo "dist_cli: all passed"
