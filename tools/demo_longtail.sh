#!/bin/sh
# Long-tailed Fashion-MNIST (imbalance r = 100, from Debian's dataset-fashion-mnist package): trains
# the cross-entropy baseline and De-confound-TDE with the same data, model and schedule
# (configs/fashion_mnist_lt/*_r100.yaml), then prints the many / medium / few-shot table of both on
# the balanced test set and writes an HTML report beside the runs.
#
#   tools/demo_longtail.sh [OUT_DIR] [section.key=value ...]
#
# OUT_DIR defaults to runs/demo_longtail; overrides go to both runs (e.g. train.epochs=2 for a
# quick look). Finished runs are not retrained: their checkpoints are evaluated again. Set BALLAST
# to the binary when it is not build/ballast.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
ballast=${BALLAST:-$root/build/ballast}
out=runs/demo_longtail
case "${1:-}" in
*=*|"") ;;
*) out=$1; shift ;;
esac

if [ ! -x "$ballast" ]; then
    echo "demo_longtail: $ballast not found; build first:" >&2
    echo "  cmake -S $root -B $root/build -DCMAKE_BUILD_TYPE=Release && cmake --build $root/build -j2" >&2
    exit 1
fi

for method in ce deconfound_tde; do
    echo "== $method =="
    # --resume continues an interrupted run and leaves a finished one as it is
    "$ballast" train "$root/configs/fashion_mnist_lt/${method}_r100.yaml" output.dir="$out/$method" "$@" --resume
done

echo
echo "Fashion-MNIST-LT (r = 100), balanced test set of 10000 images:"
"$ballast" eval "$out/ce" "$out/deconfound_tde"
"$ballast" report "$out/ce" "$out/deconfound_tde" --output "$out/report.html"
