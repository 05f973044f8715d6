#!/usr/bin/env bash
# How often a program goes past the per-CPU caches: runs COMMAND with LIB preloaded and counts
# the calls into each of LIB's functions outside the fast paths (the freelists' refills and
# overflows, the transfer level, the central level, the slow paths of `malloc` and `free`), with
# a uprobe on each. Prints "calls function", most called first.
#
# usage: benches/malloc/slow-paths.sh LIB COMMAND [ARGS...]
# e.g.   benches/malloc/slow-paths.sh target/release/libpercpu_malloc.so target/malloc-bench/shapes mstress 2 4
#
# Needs root (uprobes through tracefs), `perf` and `c++filt`. A uprobe costs a trap per call, so
# times printed by COMMAND mean nothing here.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '7,8p' "$0" >&2; exit 2; }
lib=$(realpath "$1")
shift
tracing=/sys/kernel/tracing
[ -w "$tracing/uprobe_events" ] || { echo "$tracing/uprobe_events: not writable (needs root and tracefs)" >&2; exit 1; }
group=percpu_slow_paths
work=$(mktemp -d)
cleanup() {
    # Only this script's probes: `-:GROUP/NAME` removes one event.
    [ -f "$work/names" ] && while read -r name _; do
        echo "-:$group/$name" >>"$tracing/uprobe_events" 2>/dev/null || true
    done <"$work/names"
    rm -rf "$work"
}
trap cleanup EXIT

# A uprobe takes a file offset: the symbol's address less its segment's, plus the segment's offset.
segments=$(readelf -lW "$lib" | awk '$1 == "LOAD" { print $2, $3, $5 }')
file_offset() {
    local address=$((16#$1)) offset vaddr size
    while read -r offset vaddr size; do
        if ((address >= vaddr && address < vaddr + size)); then
            printf '0x%x\n' $((address - vaddr + offset))
            return
        fi
    done <<<"$segments"
    return 1
}

# Every function of the freelists and the slab allocator, less statistics, formatting, fork and
# initialisation (called a handful of times) and the fast paths (which have no symbols of their
# own: `malloc` and `free` are exported C functions and are not probed).
n=0
nm "$lib" | awk '$2 ~ /^[tT]$/ { print $1, $3 }' | while read -r address symbol; do
    name=$(c++filt <<<"$symbol" | sed 's/::h[0-9a-f]\{16\}$//')
    case $name in
        *freelist* | *slab*) ;;
        *) continue ;;
    esac
    case $name in
        *stats* | *fmt* | *drop_in_place* | *fork* | *init* | *trim* | *Display*) continue ;;
    esac
    offset=$(file_offset "$address") || continue
    n=$((n + 1))
    echo "p:$group/f$n $lib:$offset" >>"$tracing/uprobe_events"
    echo "f$n $name" >>"$work/names"
done
[ -s "$work/names" ] || { echo "$lib: no functions of percpu found (stripped?)" >&2; exit 1; }

events=$(awk -v g="$group" '{ printf "%s%s:%s", (NR > 1 ? "," : ""), g, $1 }' "$work/names")
LD_PRELOAD=$lib perf stat -x, -o "$work/counts" -e "$events" "$@"
# perf's CSV: count,unit,event,...; comments start with '#'.
awk -F, -v g="$group:" '!/^#/ && NF > 2 { sub(g, "", $3); print $3, $1 }' "$work/counts" |
    sort >"$work/by-name"
sort "$work/names" | join "$work/by-name" - |
    awk '$2 > 0 { count = $2; $1 = ""; $2 = ""; sub(/^  /, ""); print count, $0 }' | sort -nr
