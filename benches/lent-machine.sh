#!/usr/bin/env bash
# The multi-core figures, for a machine lent for minutes with no compiler, package manager or
# network: everything is built here first, then one command there runs it all and writes into
# one folder.
#
#   benches/lent-machine.sh prepare            # here: builds target/lent (about 37 MiB)
#   benches/lent-machine.sh run OUT [ROUNDS]   # there, from a checkout carrying target/lent
#   benches/lent-machine.sh probe OUT [LABEL=LIB ...]   # there: where `mstress` loses (below)
#   benches/lent-machine.sh all OUT [ROUNDS]   # there: probe, then run, into OUT/log (below)
#
# `run` first runs the rseq-sys and percpu test binaries, as built here (release), twice: as
# they are, and with `PerCpuAlloc` as their global allocator (`--features
# percpu/global-allocator`), so the stress tests meet many CPUs; a failing test is reported in the
# log and the benchmarks still run. Then it writes OUT/report/ (`percpu bench --out`) and
# OUT/shapes.md (benches/malloc/run.sh at as many threads as the machine has CPUs, scale 4,
# ROUNDS rounds, default 3) with its raw runs in OUT/results.txt, and everything it printed in
# OUT/log: 8 files, as many as the device tool brings back. On the 16-core machine lent so far,
# `run OUT 5` took 320 s before the tests were added: the report 42 s, each round of the shapes
# about 56 s (the tests take about 15 s a set on 2 CPUs).
#
# `probe` asks why mimalloc leads `mstress` on many cores and not on 2 (BENCHMARKS.md, issue 6's
# twentieth round), in about 2 minutes, into one file, OUT/probe.md: the addresses the fast paths
# load from and store to, read with gdb (or the CUDA image's cuda-gdb), for page offsets that
# could alias; the CPUs' topology; `mstress` side by side with mimalloc at 1, 2, half and all
# CPUs' threads (does the gap come with threads sharing cores?), and where the kernel sees cores
# of two threads also at as many threads as cores, spread one to a core and packed two to a core
# (`taskset`); with the LABEL=LIB builds of libpercpu_malloc.so given at all CPUs' (by default,
# the variants `prepare` built; see `variant_recipes`); and the same library without rseq
# (PERCPU_FORCE_FALLBACK=1). Where `prepare` found `perf` here, it packs it with its libraries
# (all but glibc's own) into $lent/perf.tar.xz, and the probe ends with where `mstress`'s samples
# fall (software clock, user space) under percpu and under mimalloc: by function, and in the
# library instruction by instruction as SYMBOL+OFFSET, to read against `objdump -d` of the same
# libraries here (the pack's).
#
# `all` does both in one call, the probe first, everything printed to OUT/log (so still 8 files):
# a lent machine goes back after half a minute idle, and a second start may be refused. Estimated
# from the parts on 16 cores: about 7 minutes with ROUNDS 3 (the probe 2.5–3, the tests 0.5, the
# report 0.7, each round of the shapes 1), within one call's 10.
set -euo pipefail
cd "$(dirname "$0")/.."
lent=target/lent

# Runs every test binary listed in DIR/list; prints each one's summary (the end of its output
# when it fails) and returns how many failed. Each gets 2 minutes (they take 6 s at most on 2
# CPUs): a hung test must not take a lent machine's whole call.
run_tests() {
    local dir=$1 failed=0 name output
    while read -r name; do
        if output=$(timeout 120 "$dir/$name" </dev/null 2>&1); then
            echo "$name: $(grep 'test result' <<<"$output" | tail -1)"
        else
            echo "$name: FAILED (exit $?)"
            echo "$output" | tail -40
            failed=$((failed + 1))
        fi
    done <"$dir/list"
    return "$failed"
}

# Everything `run` does, its output to the terminal and to OUT/log.
run_all() {
    local out=$1 rounds=$2
    echo "$(nproc) CPUs, possible $(cat /sys/devices/system/cpu/possible), $(uname -r)"
    ldd --version | head -1
    local start=$SECONDS
    for set in tests tests-global-alloc; do
        local failed=0
        run_tests "$lent/$set" || failed=$?
        echo "$set: $(wc -l <"$lent/$set/list") binaries, $failed failed ($((SECONDS - start)) s)"
    done
    # The report first: it is the shorter of the two, and needs nothing but the binary.
    "$lent/percpu" bench --out "$out/report" || echo "percpu bench failed; on to the shapes"
    echo "report: $((SECONDS - start)) s"
    MALLOC_BENCH_PACK=$lent/pack benches/malloc/run.sh "$rounds" "$(nproc)" 4 >"$out/shapes.md" ||
        echo "run.sh failed: the raw runs are in results.txt"
    cp target/malloc-bench/results.txt "$out/"
    cat "$out/shapes.md"
    echo "total: $((SECONDS - start)) s"
}

# gdb commands that stop a `shapes mstress` thread in its third `free` and print the thread
# pointer, the thread's memo (rseq-sys's thread block), the rseq area (glibc's), the memo's
# words, and the count words and first slot pointer of the region the memo names.
layout_commands=(
    "set pagination off" "set language c" "break mstress_thread" "run"
    "set \$memo = (long)&__rseq_sys_thread_block_0_1_0"
    "set \$area = \$fs_base + *(long*)&__rseq_offset"
    "break free" "continue" "continue" "continue"
    "printf \"thread pointer %#lx\\n\", \$fs_base"
    "printf \"memo %#lx\\nrseq area %#lx\\n\", \$memo, \$area" "x/6gx \$memo"
    "set \$counts = *(long*)(\$memo + 0x28)"
    "printf \"count words %#lx, first slot pointer %#lx\\n\", \$counts, *(long*)(\$counts + 0x400)"
    "kill"
)

# The probe's variant builds: each is this checkout's HEAD with edits, given as FILE and a sed
# script, one pair after another. Each moves one thing the fifteenth and twentieth rounds left
# open (BENCHMARKS.md):
# - memo: 2 KiB more `.tbss` after rseq-sys's thread block, which moves the memo 2 KiB down from
#   the thread pointer (4 KiB aliasing with the rseq area or glibc's own thread data);
# - counts: the count words 0xa00 up their page (aliasing with the loads of the next operation);
# - floor8: per-CPU caches of at least 8 blocks (2 before), for the large classes, through
#   which `mstress 2 4` moves 59,000 batches across the transfer level (800 with it).
variant_recipes=(
    memo rseq-sys/src/thread_block.rs 's/concat!(".zero ", $size),/concat!(".zero ", $size, "+2048"),/'
    counts percpu/src/freelist/caches.rs 's/^\(pub(crate) const REGION_HEADER: usize = WORD_PAIR\);/\1 + 0xa00;/'
    counts percpu/src/slab/heap.rs '/^const _: () = assert!(crate::freelist::caches::count_at(CLASSES) <= ALIAS_GAP);$/d'
    floor8 percpu/src/slab/heap.rs 's/(cache_bytes \/ size).clamp(2, MAX_CACHE_BLOCKS)/(cache_bytes \/ size).clamp(8, MAX_CACHE_BLOCKS)/'
)

# Builds each variant of `variant_recipes` into $lent/variants/LABEL.so (debug info stripped,
# symbols kept for the probe's gdb), one after another in one worktree: its files are restored
# and edited anew for each, which leaves them newer than the last build, so cargo rebuilds what
# they touch. (Worktrees of their own sharing a target folder would not do: cargo names a
# workspace's artifacts by paths relative to it, so the second would look built already.) An
# edit that no longer changes its file stops everything: the code moved on, and the recipe
# needs updating.
build_variants() {
    local src=target/variant-src labels=() label i built
    for ((i = 0; i < ${#variant_recipes[@]}; i += 3)); do
        label=${variant_recipes[i]}
        [[ " ${labels[*]} " == *" $label "* ]] || labels+=("$label")
    done
    git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
    git worktree prune
    git worktree add -q --detach "$src" HEAD
    mkdir -p "$lent/variants"
    for label in "${labels[@]}"; do
        git -C "$src" checkout -q -f HEAD -- .
        for ((i = 0; i < ${#variant_recipes[@]}; i += 3)); do
            [ "${variant_recipes[i]}" = "$label" ] || continue
            local file=$src/${variant_recipes[i + 1]} script=${variant_recipes[i + 2]}
            cp "$file" "$file.orig"
            sed -i "$script" "$file"
            if cmp -s "$file" "$file.orig"; then
                echo "variant $label: '$script' changes nothing in ${variant_recipes[i + 1]}" >&2
                return 1
            fi
            rm "$file.orig"
        done
        (cd "$src" && CARGO_TARGET_DIR=../variant-target cargo build --release -q -p percpu-malloc)
        strip --strip-debug -o "$lent/variants/$label.so" target/variant-target/release/libpercpu_malloc.so
        for built in "$lent"/variants/*.so; do
            if [ "$built" != "$lent/variants/$label.so" ] && cmp -s "$built" "$lent/variants/$label.so"; then
                echo "variant $label: the same library as $built" >&2
                return 1
            fi
        done
    done
    git worktree remove --force "$src"
    ls "$lent/variants"
}

# For CPU topology under DIR (/sys/devices/system/cpu): "SPREAD PACKED", two comma-separated
# CPU lists as long as there are cores, SPREAD one thread of each core, PACKED both threads of
# half the cores; nothing when no core has two threads.
core_placements() {
    python3 - "$1" <<'PY'
import glob, sys
cores = set()
for path in glob.glob(sys.argv[1] + "/cpu[0-9]*/topology/thread_siblings_list"):
    cpus = []
    for part in open(path).read().strip().split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    cores.add(tuple(sorted(cpus)))
cores = sorted(cores)
if any(len(core) > 1 for core in cores):
    spread = [core[0] for core in cores]
    packed = [cpu for core in cores for cpu in core][: len(spread)]
    print(",".join(map(str, spread)), ",".join(map(str, packed)))
PY
}

# Packs `perf` (if this machine has it as an ELF binary) and every library it loads except glibc's
# own into $lent/perf.tar.xz, to run where it is not installed (with the libraries of the lent
# machine's newer glibc).
pack_perf() {
    local perf dir=target/perf-pack
    perf=$(command -v perf || true)
    if [ -z "$perf" ] || ! file -L "$perf" | grep -q ELF; then
        echo "no perf ELF here: the probe will have no profile"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir/lib"
    cp -L "$perf" "$dir/perf"
    ldd "$perf" | awk '$3 ~ /^\// { print $3 }' | while read -r lib; do
        case $(basename "$lib") in
            libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*) ;;
            *) cp -L "$lib" "$dir/lib/" ;;
        esac
    done
    tar -C "$dir" -cJf "$lent/perf.tar.xz" .
    rm -rf "$dir"
}

# Where `mstress` at all CPUs' threads spends its samples, under each LABEL=LIB: the shares by
# function, then the library's 40 instructions (SYMBOL+OFFSET) with the most samples. Needs
# $lent/perf.tar.xz (see pack_perf).
profile_mstress() {
    local dir spec data
    [ -f "$lent/perf.tar.xz" ] || { echo "## no profile: $lent/perf.tar.xz was not packed"; return; }
    dir=$(mktemp -d)
    tar -C "$dir" -xJf "$lent/perf.tar.xz"
    local perf=(env LD_LIBRARY_PATH="$dir/lib" "$dir/perf")
    for spec in "$@"; do
        data=$dir/${spec%%=*}.data
        echo "## profile of mstress $(nproc) 4 under ${spec%%=*} (cpu-clock:u, 20 kHz)"
        if ! "${perf[@]}" record -q -e cpu-clock:u -F 20000 -o "$data" -- \
            env LD_PRELOAD="$(realpath "${spec#*=}")" "$lent/pack/shapes" mstress "$(nproc)" 4 2>&1; then
            echo "(perf record failed)"
            continue
        fi
        # `sed -n` rather than `head`, which would leave the writer a SIGPIPE, and the probe
        # (under pipefail) an error.
        "${perf[@]}" report -i "$data" --stdio -q --sort dso,sym 2>/dev/null | sed -n 1,20p ||
            echo "(perf report failed)"
        # "IP SYMBOL+OFFSET (DSO)" per sample (the symbol needs the address), mangled (C++
        # aliases such as mimalloc's `operator delete[]` for its `free` would otherwise have
        # spaces).
        "${perf[@]}" script -i "$data" --no-demangle -F ip,sym,symoff,dso 2>/dev/null >"$data.at" ||
            echo "(perf script failed)"
        local in_lib
        in_lib=$(grep -cF "/$(basename "${spec#*=}"))" "$data.at" || true)
        echo "samples $(wc -l <"$data.at"), in the library $in_lib; its 40 busiest instructions:"
        grep -F "/$(basename "${spec#*=}"))" "$data.at" | awk '{ print $2 }' | sort | uniq -c |
            sort -k1,1nr | sed -n 1,40p || true
    done
    rm -rf "$dir"
}

# LABEL=LIB for each variant `prepare` built (labels and paths have no spaces).
prepared_variants() {
    local lib
    for lib in "$lent"/variants/*.so; do
        [ -f "$lib" ] && echo "$(basename "$lib" .so)=$lib"
    done
}

# Everything `probe` does, its output to the terminal and to OUT/probe.md.
probe_all() {
    local pack=$lent/pack cpus
    cpus=$(nproc)
    local base=percpu=$pack/libpercpu_malloc.so peer=mimalloc=$pack/libmimalloc.so.2
    echo "# mstress probe: $cpus CPUs, $(uname -r), $(ldd --version | head -1)"
    grep -m1 "model name" /proc/cpuinfo || true
    # Whether CPUs share cores: in the report, every contender's time per operation rises from
    # 8 threads to 16 (counters 3.0 -> 4.5 ns), as when two threads share a core's caches.
    lscpu 2>/dev/null | grep -E '^(Thread|Core|Socket|L1d|L2|L3)' || true
    local gdb
    gdb=$(command -v gdb || command -v cuda-gdb || ls /usr/local/cuda*/bin/cuda-gdb 2>/dev/null | head -1 || true)
    for spec in "$base" "$@"; do
        echo "## layout under ${spec%%=*}"
        if [ -z "$gdb" ]; then
            echo "no gdb here"
            break
        fi
        local args=(-q -batch -ex "set environment LD_PRELOAD=$(realpath "${spec#*=}")")
        for c in "${layout_commands[@]}"; do args+=(-ex "$c"); done
        timeout 120 "$gdb" "${args[@]}" --args "$pack/shapes" mstress 1 1 2>&1 |
            grep -E '^(thread|memo|rseq|count|0x)' || echo "(gdb printed nothing)"
    done
    export MALLOC_BENCH_PACK=$pack
    for threads in $(printf '%s\n' 1 2 $((cpus / 2)) "$cpus" | sort -nu); do
        local extra=()
        [ "$threads" = "$cpus" ] && extra=("$@")
        echo "## mstress $threads 4"
        benches/malloc/ab.sh 11 "mstress $threads 4" "$base" "${extra[@]}" "$peer" 2>&1 |
            grep -E '^\|' || echo "(ab.sh gave no table)"
    done
    # Where the CPUs show cores shared by two threads: as many threads as cores, once on one
    # thread of each core and once packed two to a core.
    local placements
    placements=$(core_placements "${SYSFS_CPU:-/sys/devices/system/cpu}")
    if [ -n "$placements" ]; then
        local spread=${placements% *} packed=${placements#* } n placement
        n=$(tr ',' '\n' <<<"$spread" | wc -l)
        for placement in "spread $spread" "packed $packed"; do
            echo "## mstress $n 4 on CPUs ${placement#* } (${placement%% *})"
            taskset -c "${placement#* }" benches/malloc/ab.sh 11 "mstress $n 4" "$base" "$peer" 2>&1 |
                grep -E '^\|' || echo "(ab.sh gave no table)"
        done
    else
        echo "## no core runs two of these CPUs (as far as the kernel here is told)"
    fi
    echo "## without rseq: PERCPU_FORCE_FALLBACK=1, alternating with rseq, mstress $cpus 4"
    for round in 1 2 3 4 5; do
        echo "rseq $(LD_PRELOAD=${base#*=} "$pack/shapes" mstress "$cpus" 4)"
        echo "fallback $(PERCPU_FORCE_FALLBACK=1 LD_PRELOAD=${base#*=} "$pack/shapes" mstress "$cpus" 4)"
    done
    profile_mstress "$base" "$peer"
}

case ${1:-} in
    prepare)
        cargo build --release -q -p percpu-cli
        rm -rf "$lent"
        mkdir -p "$lent/tests" "$lent/tests-global-alloc"
        benches/malloc/pack.sh "$lent/pack" >/dev/null
        strip -o "$lent/percpu" target/release/percpu
        for set in tests tests-global-alloc; do
            features=()
            [ "$set" = tests-global-alloc ] && features=(--features percpu/global-allocator)
            cargo test --release -q -p rseq-sys -p percpu "${features[@]}" --tests --no-run \
                --message-format=json-render-diagnostics | python3 ci/collect-tests.py "$lent/$set"
            while read -r name; do strip "$lent/$set/$name"; done <"$lent/$set/list"
        done
        build_variants
        pack_perf
        du -sh "$lent"
        ;;
    run)
        out=${2:?usage: benches/lent-machine.sh run OUT [ROUNDS]}
        rounds=${3:-3}
        [ -x "$lent/percpu" ] || { echo "$lent: missing; run 'prepare' and carry it" >&2; exit 1; }
        mkdir -p "$out"
        run_all "$(realpath "$out")" "$rounds" 2>&1 | tee "$out/log"
        ;;
    probe)
        out=${2:?usage: benches/lent-machine.sh probe OUT [LABEL=LIB ...]}
        shift 2
        [ -d "$lent/pack" ] || { echo "$lent/pack: missing; run 'prepare' and carry it" >&2; exit 1; }
        [ $# -gt 0 ] || set -- $(prepared_variants)
        for spec in "$@"; do
            [[ $spec == ?*=?* && -f ${spec#*=} ]] || { echo "$spec: not LABEL=LIB with LIB a file" >&2; exit 2; }
        done
        mkdir -p "$out"
        probe_all "$@" 2>&1 | tee "$out/probe.md"
        ;;
    all)
        # The probe first (the open question, and the shorter), then everything `run` does,
        # all printed to OUT/log: still 8 files.
        out=${2:?usage: benches/lent-machine.sh all OUT [ROUNDS]}
        rounds=${3:-3}
        [ -x "$lent/percpu" ] || { echo "$lent: missing; run 'prepare' and carry it" >&2; exit 1; }
        mkdir -p "$out"
        {
            probe_all $(prepared_variants)
            echo "probe: $SECONDS s"
            run_all "$(realpath "$out")" "$rounds"
        } 2>&1 | tee "$out/log"
        ;;
    *)
        echo "usage: benches/lent-machine.sh prepare | run OUT [ROUNDS] | probe OUT [LABEL=LIB ...] | all OUT [ROUNDS]" >&2
        exit 2
        ;;
esac
