#!/usr/bin/env bash
# Runs one criterion benchmark with both paths side by side: the rseq run (all contenders), then
# the same binary with PERCPU_FORCE_FALLBACK=1 (percpu's fallback path only), then one table per
# family. Usage: benches/run.sh counters|freelists|allocators [extra criterion args]
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:?usage: benches/run.sh counters|freelists|allocators [criterion args]}
shift
case $bench in
    counters) families=(counter) ;;
    freelists) families=(freelist_pair freelist_batch) ;;
    allocators) families=(alloc_pair alloc_batch alloc_mixed alloc_xthread) ;;
    *) echo "unknown benchmark: $bench" >&2; exit 2 ;;
esac
cargo bench -p percpu-benches --bench "$bench" -- "$@"
PERCPU_FORCE_FALLBACK=1 cargo bench -p percpu-benches --bench "$bench" -- "$@"
for family in "${families[@]}"; do
    echo
    echo "## $family"
    label=threads
    [ "$family" = alloc_pair ] && label="block size"
    python3 benches/summarize.py "$family" target/criterion "$label"
done
