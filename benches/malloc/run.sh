#!/usr/bin/env bash
# The classic allocator shapes (benches/malloc/shapes.c) under LD_PRELOAD: glibc, percpu
# (libpercpu_malloc.so), and Debian's mimalloc, jemalloc and tcmalloc. Each round runs every
# allocator once, in an order that rotates between rounds, so drift hits all alike; reports the
# median time and peak RSS of each, per shape, as Markdown. A small program's peak moves by a few
# hundred KiB from run to run, so the median peak is what compares; the largest follows it.
#
# usage: benches/malloc/run.sh [ROUNDS (5)] [THREADS (the CPUs)] [SCALE (1)]
# With MALLOC_BENCH_NO_RSEQ=1 every run has rseq(2) failing (norseq.c): the paths without rseq.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
threads=${2:-$(nproc)}
scale=${3:-1}
source benches/malloc/allocators.sh
shapes_bin=$(program shapes)
wrap=()
[ -n "${MALLOC_BENCH_NO_RSEQ:-}" ] && wrap=("$(program norseq)")

allocators=(glibc percpu mimalloc jemalloc tcmalloc)
shapes=(larson xmalloc scratch mstress small bulk handoff)
results=$work/results.txt
: >"$results"
for shape in "${shapes[@]}"; do
    t=$threads
    case $shape in small | bulk) t=1 ;; esac
    for ((round = 0; round < rounds; round++)); do
        for ((i = 0; i < ${#allocators[@]}; i++)); do
            a=${allocators[$(((i + round) % ${#allocators[@]}))]}
            echo "$a $(LD_PRELOAD=${lib[$a]} "${wrap[@]}" "$shapes_bin" "$shape" "$t" "$scale")" >>"$results"
        done
    done
    echo "$shape done" >&2
done

python3 - "$results" "${#wrap[@]}" "${allocators[@]}" <<'PY'
import platform, statistics, sys
path, no_rseq, allocators = sys.argv[1], sys.argv[2] != "0", sys.argv[3:]
runs = {}
for line in open(path):
    alloc, shape, threads, seconds, rss = line.split()
    runs.setdefault((shape, int(threads)), {}).setdefault(alloc, []).append((float(seconds), int(rss)))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Machine: {cpu}, {len(open('/proc/cpuinfo').read().split('processor')) - 1} CPUs, Linux {platform.release()}\n")
if no_rseq:
    print("rseq(2) failing with ENOSYS in every run (MALLOC_BENCH_NO_RSEQ=1)\n")
print("median seconds (peak RSS MiB: median, largest); **bold**: fastest, smallest; ratio: time / percpu time\n")
print("| shape | threads | " + " | ".join(allocators) + " |")
print("|---|---:|" + "---:|" * len(allocators))
for (shape, threads), by in runs.items():
    med = {a: statistics.median(s for s, _ in by[a]) for a in allocators}
    rss = {a: statistics.median(r for _, r in by[a]) / 1024 for a in allocators}
    largest = {a: max(r for _, r in by[a]) / 1024 for a in allocators}
    best, smallest = min(med.values()), min(rss.values())
    cells = []
    for a in allocators:
        t = f"{med[a]:.3f}"
        if med[a] == best:
            t = f"**{t}**"
        r = f"{rss[a]:.2f}"
        if rss[a] == smallest:
            r = f"**{r}**"
        cells.append(f"{t} ({r}, {largest[a]:.1f}) {med[a] / med['percpu']:.2f}×")
    print(f"| {shape} | {threads} | " + " | ".join(cells) + " |")
PY
