# Sourced by the scripts beside it (from the repository root): fills `lib`, the LD_PRELOAD value
# of each allocator (glibc: none), installing Debian's packages of the peers when missing and
# building libpercpu_malloc.so; makes `work`, where the scripts keep binaries and results.
work=target/malloc-bench
mkdir -p "$work"

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
