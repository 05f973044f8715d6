# Sourced by the scripts beside it (from the repository root): fills `lib`, the LD_PRELOAD value
# of each allocator (glibc: none), installing Debian's packages of the peers when missing and
# building libpercpu_malloc.so; makes `work`, where the scripts keep binaries and results; and
# defines `program NAME`, which builds benches/malloc/NAME.c and prints the binary's path.
#
# With MALLOC_BENCH_PACK=DIR, everything comes prebuilt from DIR (made by pack.sh beside this
# file), for a machine with no compiler, package manager or network.
work=target/malloc-bench
mkdir -p "$work"

if [ -n "${MALLOC_BENCH_PACK:-}" ]; then
    pack=$(realpath "$MALLOC_BENCH_PACK")
    declare -A lib=(
        [glibc]=
        [percpu]=$pack/libpercpu_malloc.so
        [mimalloc]=$pack/libmimalloc.so.2
        [jemalloc]=$pack/libjemalloc.so.2
        [tcmalloc]=$pack/libtcmalloc_minimal.so.4
    )
    for f in "${lib[@]}"; do
        [ -z "$f" ] || [ -e "$f" ] || { echo "$f: missing from the pack" >&2; exit 1; }
    done
    program() {
        [ -x "$pack/$1" ] || { echo "$pack/$1: missing from the pack" >&2; return 1; }
        echo "$pack/$1"
    }
    return
fi

libdir=/usr/lib/$(gcc -print-multiarch)
declare -A lib=(
    [mimalloc]=$libdir/libmimalloc.so.2
    [jemalloc]=$libdir/libjemalloc.so.2
    [tcmalloc]=$libdir/libtcmalloc_minimal.so.4
)
missing=()
[ -e "${lib[mimalloc]}" ] || missing+=(libmimalloc2.0)
[ -e "${lib[jemalloc]}" ] || missing+=(libjemalloc2)
[ -e "${lib[tcmalloc]}" ] || missing+=(libtcmalloc-minimal4)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -q -p percpu-malloc
lib[percpu]=$PWD/target/release/libpercpu_malloc.so
lib[glibc]=

program() {
    cc -O2 -Wall -pthread -o "$work/$1" "benches/malloc/$1.c" && echo "$work/$1"
}
