#!/usr/bin/env bash
# Side-by-side runs of malloc libraries on one shape (benches/malloc/shapes.c), for telling
# builds of libpercpu_malloc.so apart: each round runs every library once, in an order that
# rotates between rounds, so drift hits all alike. Reports, per library, the median time, the
# median over rounds of its time ÷ the first library's in the same round, and the median and
# largest of its rounds' peak RSS.
# A second copy of the first library runs as a control: its ratio is the noise a difference
# must stand out from (on 2-vCPU guests, ±2–5% over 15 rounds).
#
# usage: benches/malloc/ab.sh ROUNDS "SHAPE THREADS SCALE" LABEL=LIB [LABEL=LIB ...]
#   LIB: a malloc library to LD_PRELOAD, or `glibc` for none. The first is the baseline.
# e.g.   benches/malloc/ab.sh 15 "larson 2 8" before=/tmp/before.so after=target/release/libpercpu_malloc.so
# With MALLOC_BENCH_PACK=DIR the shapes program comes from DIR (see pack.sh); with
# MALLOC_BENCH_NO_RSEQ=1 every run has rseq(2) failing (norseq.c).
set -euo pipefail
[ $# -ge 3 ] || { sed -n '9,13p' "$0" >&2; exit 2; }
rounds=$1
read -r -a shape <<<"$2"
shift 2
[ ${#shape[@]} -eq 3 ] || { echo "the shape is \"SHAPE THREADS SCALE\", not \"${shape[*]}\"" >&2; exit 2; }
cd "$(dirname "$0")/../.."
source benches/malloc/allocators.sh
shapes_bin=$(program shapes)
wrap=()
[ -n "${MALLOC_BENCH_NO_RSEQ:-}" ] && wrap=("$(program norseq)")

labels=()
libs=()
for spec in "$@"; do
    label=${spec%%=*}
    path=${spec#*=}
    [ "$label" != "$spec" ] && [ -n "$label" ] || { echo "$spec: not LABEL=LIB" >&2; exit 2; }
    if [ "$path" = glibc ]; then
        path=
    else
        [ -f "$path" ] || { echo "$path: no such library" >&2; exit 2; }
        path=$(realpath "$path")
    fi
    labels+=("$label")
    libs+=("$path")
done
# The control: the baseline again, from a file of its own, so that it is loaded as a library
# of its own (the same file twice would share its pages and its place in the page cache).
control=
if [ -n "${libs[0]}" ]; then
    control=$work/ab-control.so
    cp "${libs[0]}" "$control"
fi
labels+=("${labels[0]}-control")
libs+=("$control")

results=$work/ab.txt
: >"$results"
n=${#labels[@]}
for ((round = 0; round < rounds; round++)); do
    for ((i = 0; i < n; i++)); do
        j=$(((i + round) % n))
        echo "$round ${labels[$j]} $(LD_PRELOAD=${libs[$j]} "${wrap[@]}" "$shapes_bin" "${shape[@]}")" >>"$results"
    done
done

python3 - "$results" "${shape[*]}" "$rounds" "${labels[@]}" <<'PY'
import platform, statistics, sys
path, shape, rounds, labels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = {}
for line in open(path):
    round_, label, _shape, _threads, seconds, rss = line.split()
    runs.setdefault(label, {})[int(round_)] = (float(seconds), int(rss))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
cpus = open("/proc/cpuinfo").read().count("\nprocessor") + 1
print(f"`{shape}`, {rounds} rounds; {cpu}, {cpus} CPUs, Linux {platform.release()}\n")
base = runs[labels[0]]
print(f"| library | median s | time ÷ {labels[0]}'s (median of rounds) | peak RSS MiB: median | largest |")
print("|---|---:|---:|---:|---:|")
for label in labels:
    by = runs[label]
    ratio = statistics.median(by[r][0] / base[r][0] for r in by)
    seconds = statistics.median(s for s, _ in by.values())
    rss = statistics.median(r for _, r in by.values()) / 1024
    largest = max(r for _, r in by.values()) / 1024
    print(f"| {label} | {seconds:.4f} | {ratio:.3f} | {rss:.2f} | {largest:.1f} |")
PY
