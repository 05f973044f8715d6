#!/usr/bin/env bash
# The size-class diagnostic (benches/malloc/classes.c) under LD_PRELOAD: percpu, mimalloc,
# jemalloc and glibc, each mode's runs alternating in an order that rotates between rounds;
# prints each allocator's median seconds and its ratio to percpu's, as Markdown.
#
# usage: benches/malloc/classes.sh [ROUNDS (7)]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-7}
source benches/malloc/allocators.sh
classes_bin=$(program classes)

allocators=(percpu mimalloc jemalloc glibc)
modes=(one two same other many touch)
results=$work/classes.txt
: >"$results"
for mode in "${modes[@]}"; do
    for ((round = 0; round < rounds; round++)); do
        for ((i = 0; i < ${#allocators[@]}; i++)); do
            a=${allocators[$(((i + round) % ${#allocators[@]}))]}
            echo "$a $(LD_PRELOAD=${lib[$a]} "$classes_bin" "$mode")" >>"$results"
        done
    done
done

python3 - "$results" "${allocators[@]}" <<'PY'
import statistics, sys
path, allocators = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    alloc, _, mode, seconds = line.split()
    runs.setdefault(mode, {}).setdefault(alloc, []).append(float(seconds))
print("median seconds for 8 M free+malloc iterations; ratio: time / percpu time\n")
print("| mode | " + " | ".join(allocators) + " |")
print("|---|" + "---:|" * len(allocators))
for mode, by in runs.items():
    med = {a: statistics.median(by[a]) for a in allocators}
    print(f"| {mode} | " + " | ".join(f"{med[a]:.3f} {med[a] / med['percpu']:.2f}×" for a in allocators) + " |")
PY
