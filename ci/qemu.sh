#!/usr/bin/env bash
# Runs the rseq-sys and percpu tests inside full-system VMs on Debian's 6.1 kernels:
#   aarch64 (qemu-system-aarch64, the aarch64 sequences for real) and
#   x86_64  (qemu-system-x86_64, a pre-6.3 kernel: no AT_RSEQ_FEATURE_SIZE, feature size 20).
# Both with 2 vCPUs under TCG (KVM hangs the guest on these machines). Test binaries are static
# (glibc 2.36 inside registers rseq itself), started by a tiny /init (ci/qemu-init.rs); one more,
# dynamically linked with its libraries, loads rseq-sys with dlopen (rseq-sys/tests/dlopen-host.c).
#
# Everything comes from Debian's packages, installed when missing. Exits non-zero when a test
# fails or a VM does not finish within QEMU_TIMEOUT seconds; the console output is printed.
#
# Environment: QEMU_ARCHES ("aarch64 x86_64"), QEMU_TIMEOUT (1200, per VM),
# PERCPU_TEST_SCALE (8: stress iteration counts are divided by it; assertions are unchanged),
# QEMU_WORK (target/qemu).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$PWD
work=${QEMU_WORK:-$root/target/qemu}
arches=${QEMU_ARCHES:-"aarch64 x86_64"}
timeout_s=${QEMU_TIMEOUT:-1200}
scale=${PERCPU_TEST_SCALE:-8}
mkdir -p "$work"

say() { printf '==> %s\n' "$*"; }

install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    if [[ " ${missing[*]} " == *":arm64"* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Debian's current 6.1 kernel image for a Debian architecture; prints the vmlinuz path.
kernel() {
    local deb_arch=$1 dir=$work/kernel-$1
    if ! compgen -G "$dir/boot/vmlinuz-*" >/dev/null; then
        local pkg
        pkg=$(apt-cache depends "linux-image-$deb_arch:$deb_arch" | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        [ -n "$pkg" ] || { echo "no linux-image package for $deb_arch" >&2; exit 1; }
        rm -rf "$dir" "$work"/linux-image-*_"$deb_arch".deb
        (cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1)
        dpkg -x "$work"/linux-image-*_"$deb_arch".deb "$dir"
    fi
    compgen -G "$dir/boot/vmlinuz-*" | head -n 1
}

# Builds the test binaries for a Rust target into an initramfs; prints its path.
initramfs() {
    local target=$1 dir=$work/initramfs-$1
    rm -rf "$dir" && mkdir -p "$dir/tests"
    local -a env=(RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$work/target-$target")
    local rustc=rustc
    if [ "$target" = aarch64-unknown-linux-gnu ]; then
        # rustup has no aarch64 std here and cannot fetch one; Debian's rustc has it.
        rustc=/usr/bin/rustc
        env+=(RUSTC=/usr/bin/rustc CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc)
    fi
    env "${env[@]}" cargo test --release --target "$target" -p rseq-sys -p percpu --tests --no-run \
        --message-format=json-render-diagnostics 2>"$work/build-$target.log" |
        python3 ci/collect-tests.py "$dir/tests" || { cat "$work/build-$target.log" >&2; exit 1; }
    # rseq-sys in an object loaded with dlopen (tests/dlopen.rs does this on the host): the probe
    # and a C program that loads it, dynamically linked, with the loader and libraries they need.
    local cc=cc libs=/lib/x86_64-linux-gnu
    if [ "$target" = aarch64-unknown-linux-gnu ]; then
        cc=aarch64-linux-gnu-gcc
        libs=/usr/aarch64-linux-gnu/lib
    fi
    env "${env[@]}" RUSTFLAGS= cargo build --release --locked --target "$target" \
        --manifest-path rseq-sys/tests/dlopen-probe/Cargo.toml --target-dir "$work/probe-$target" \
        2>>"$work/build-$target.log" || { cat "$work/build-$target.log" >&2; exit 1; }
    cp "$work/probe-$target/$target/release/librseq_sys_dlopen_probe.so" "$dir/tests/"
    "$cc" -O2 -Wall -pthread -o "$dir/tests/dlopen-host" rseq-sys/tests/dlopen-host.c -ldl
    echo "dlopen-host /tests/librseq_sys_dlopen_probe.so" >>"$dir/tests/list"
    local interp
    interp=$(readelf -lW "$dir/tests/dlopen-host" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    mkdir -p "$dir/lib" "$dir$(dirname "$interp")"
    cp -L "$libs/$(basename "$interp")" "$dir$interp"
    for lib in libc.so.6 libgcc_s.so.1; do
        cp -L "$libs/$lib" "$dir/lib/"
    done
    local linker=()
    [ "$target" = aarch64-unknown-linux-gnu ] && linker=(-C linker=aarch64-linux-gnu-gcc)
    "$rustc" --edition 2021 -O --target "$target" -C target-feature=+crt-static "${linker[@]}" \
        ci/qemu-init.rs -o "$dir/init"
    echo "$scale" >"$dir/tests/scale"
    (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd-$target.gz"
    echo "$work/initrd-$target.gz"
}

run_vm() {
    local arch=$1 kernel=$2 initrd=$3 log=$work/console-$1.log
    local -a qemu
    case $arch in
        aarch64) qemu=(qemu-system-aarch64 -M virt -cpu max -append "console=ttyAMA0 quiet panic=-1 rdinit=/init") ;;
        x86_64) qemu=(qemu-system-x86_64 -cpu max -append "console=ttyS0 quiet panic=-1 rdinit=/init") ;;
    esac
    say "booting $arch ($(basename "$kernel")), 2 vCPUs, timeout ${timeout_s}s"
    local start=$SECONDS rc=0
    timeout "$timeout_s" "${qemu[@]}" -smp 2 -m 2048 -nographic -no-reboot \
        -kernel "$kernel" -initrd "$initrd" </dev/null >"$log" 2>&1 || rc=$?
    tr -d '\r' <"$log" | grep -vE '^\s*$' | sed "s/^/[$arch] /"
    say "$arch finished in $((SECONDS - start)) s"
    if [ "$rc" -eq 124 ]; then
        echo "$arch: the VM did not finish within ${timeout_s}s" >&2
        return 1
    fi
    if ! grep -qE '^QEMU-SUMMARY: [1-9][0-9]* passed, 0 failed' <(tr -d '\r' <"$log"); then
        echo "$arch: tests failed (or none ran)" >&2
        return 1
    fi
}

status=0
for arch in $arches; do
    case $arch in
        aarch64)
            install_missing rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm cpio
            kernel_path=$(kernel arm64)
            initrd=$(initramfs aarch64-unknown-linux-gnu)
            ;;
        x86_64)
            install_missing qemu-system-x86 cpio
            kernel_path=$(kernel amd64)
            initrd=$(initramfs x86_64-unknown-linux-gnu)
            ;;
        *) echo "unknown arch $arch" >&2; exit 2 ;;
    esac
    run_vm "$arch" "$kernel_path" "$initrd" || status=1
done
say "ci/qemu.sh done in $SECONDS s"
exit $status
