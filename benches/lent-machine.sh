#!/usr/bin/env bash
# The multi-core figures, for a machine lent for minutes with no compiler, package manager or
# network: everything is built here first, then one command there runs it all and writes into
# one folder.
#
#   benches/lent-machine.sh prepare            # here: builds target/lent (about 28 MiB)
#   benches/lent-machine.sh run OUT [ROUNDS]   # there, from a checkout carrying target/lent
#
# `run` writes OUT/shapes.md (benches/malloc/run.sh at as many threads as the machine has CPUs,
# scale 4, ROUNDS rounds, default 3) with its raw runs in OUT/results.txt, OUT/report/ (`percpu
# bench --out`) and OUT/log: 8 files, as many as the device tool brings back. On the 16-core
# machine lent before, expect about 4 minutes in all (the report took 44 s; a round of the
# shapes, by the times in BENCHMARKS.md, about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
lent=target/lent

# Everything `run` does, its output to the terminal and to OUT/log.
run_all() {
    local out=$1 rounds=$2
    echo "$(nproc) CPUs, possible $(cat /sys/devices/system/cpu/possible), $(uname -r)"
    ldd --version | head -1
    local start=$SECONDS
    # The report first: it is the shorter of the two, and needs nothing but the binary.
    "$lent/percpu" bench --out "$out/report" || echo "percpu bench failed; on to the shapes"
    echo "report: $((SECONDS - start)) s"
    MALLOC_BENCH_PACK=$lent/pack benches/malloc/run.sh "$rounds" "$(nproc)" 4 >"$out/shapes.md" ||
        echo "run.sh failed: the raw runs are in results.txt"
    cp target/malloc-bench/results.txt "$out/"
    cat "$out/shapes.md"
    echo "total: $((SECONDS - start)) s"
}

case ${1:-} in
    prepare)
        cargo build --release -q -p percpu-cli
        rm -rf "$lent"
        mkdir -p "$lent"
        benches/malloc/pack.sh "$lent/pack" >/dev/null
        cp target/release/percpu "$lent/"
        du -sh "$lent"
        ;;
    run)
        out=${2:?usage: benches/lent-machine.sh run OUT [ROUNDS]}
        rounds=${3:-3}
        [ -x "$lent/percpu" ] || { echo "$lent: missing; run 'prepare' and carry it" >&2; exit 1; }
        mkdir -p "$out"
        run_all "$(realpath "$out")" "$rounds" 2>&1 | tee "$out/log"
        ;;
    *)
        echo "usage: benches/lent-machine.sh prepare | run OUT [ROUNDS]" >&2
        exit 2
        ;;
esac
