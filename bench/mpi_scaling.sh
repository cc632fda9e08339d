#!/bin/sh
# What scaling out costs: training throughput of ResNet-32 on CIFAR-sized images (the generated
# "synthetic" dataset, 32x32x3, 10 classes, so no download is needed) as 1 process x T threads
# against P processes x T/P threads under mpirun on the same machine, and the share of the step
# the processes spend in collectives. Not a test: it prints numbers.
#
#   sh bench/mpi_scaling.sh [BALLAST_BINARY] [THREADS] [REPEAT]     (defaults: build/ballast 2 3)
#
# Each run trains 2 epochs of 2560 images in batches of 128 (the global batch; each of the P = 2
# processes takes 64), and its figures are those of the second epoch (the first one also creates
# oneDNN's primitives). The three set-ups run in turn, REPEAT times, and the medians are printed
# (the machine may be shared: alternating keeps a busy neighbour from favouring one set-up).
# "all-reduce" is the time inside the gradients' all-reduce; "collectives" is every collective of
# the step (the agreement that every process has a finite loss, the all-reduce, the averaging of
# the batch-norm statistics and the loss, and with sync_bn the statistics of every batch-norm
# layer), which includes the time a process waits for the slower one; both are the first
# process's, as shares of the epoch's wall time.
set -e
cd "$(dirname "$0")/.."
BIN=${1:-build/ballast}
THREADS=${2:-2}
REPEAT=${3:-3}
P=2
MPIRUN="mpirun --bind-to core"
[ "$THREADS" -ge $P ] || MPIRUN="mpirun --oversubscribe --bind-to none"
[ "$(id -u)" -eq 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
DIR=$(mktemp -d /tmp/ballast_mpi_scaling.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cat > "$DIR/resnet32.yaml" <<YAML
dataset: {name: synthetic, split_seed: 0,
          synthetic: {classes: 10, train_per_class: 256, test_per_class: 10, channels: 3, size: 32}}
model: {name: resnet32}
train: {epochs: 2, batch_size: 128, lr: 0.1, schedule: constant, eval_every: 0, checkpoint_every: 0,
        log_every: 1000, seed: 0}
method: {name: ce}
YAML

PER=$((THREADS / P))
[ "$PER" -ge 1 ] || PER=1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); $REPEAT rounds"
for round in $(seq "$REPEAT"); do
    "$BIN" train "$DIR/resnet32.yaml" output.dir="$DIR/one_$round" train.threads="$THREADS" --quiet
    for sync in false true; do
        $MPIRUN -np $P "$BIN" train "$DIR/resnet32.yaml" output.dir="$DIR/p${P}_${sync}_$round" \
            train.threads=$PER train.sync_bn=$sync --quiet
    done
done
python3 - "$DIR" "$REPEAT" "$THREADS" "$P" "$PER" <<'PY'
import json, statistics, sys
root, repeat, threads, P, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
images, steps = 2560, 20
def last_epoch(name):
    ends = [json.loads(l) for l in open("%s/%s/log.jsonl" % (root, name)) if l.startswith('{"epoch_end"')]
    return ends[-1]
def medians(prefix):
    e = [last_epoch("%s_%d" % (prefix, r + 1)) for r in range(repeat)]
    s = statistics.median(x["seconds"] for x in e)
    comm = statistics.median(x.get("comm_seconds", 0) / x["seconds"] for x in e)
    ar = statistics.median(x.get("allreduce_seconds", 0) / x["seconds"] for x in e)
    return images / s, 1000 * s / steps, comm, ar
one = medians("one")
print("%-39s %6.1f img/s  %6.1f ms/step" % ("1 process x %d threads:" % threads, one[0], one[1]))
for sync in ("false", "true"):
    r = medians("p%d_%s" % (P, sync))
    label = "%d processes x %d thread%s, sync_bn %s:" % (P, per, "" if per == 1 else "s", sync)
    print("%-39s %6.1f img/s  %6.1f ms/step  ratio %.2f  collectives %.1f%% of the step, "
          "all-reduce of the gradients %.1f%%" % (label, r[0], r[1], r[0] / one[0], 100 * r[2], 100 * r[3]))
PY
