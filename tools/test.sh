#!/bin/sh
# The whole test suite: an optimized build with every test, then the suite again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Exits non-zero on any failure.
set -e
cd "$(dirname "$0")/.."
sh tools/install-deps.sh
JOBS=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBALLAST_WITH_MPI=ON >/dev/null
cmake --build build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DBALLAST_SANITIZE=ON -DBALLAST_WITH_MPI=ON >/dev/null
cmake --build build-asan -j"$JOBS"
ASAN_OPTIONS=detect_leaks=0 ctest --test-dir build-asan --output-on-failure -j"$JOBS"
