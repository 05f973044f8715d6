//! Link settings for `libpercpu_malloc.so`, a library preloaded into programs that never asked
//! for Rust: keep what it adds to each of them small.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=layout.ld");
    println!("cargo:rerun-if-env-changed=PERCPU_MALLOC_DEFAULT_LAYOUT");
    let linux_gnu = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu || env::var_os("PERCPU_MALLOC_DEFAULT_LAYOUT").is_some() {
        return;
    }
    // std's unwinder, linked in rather than loading libgcc_s.so.1 into every process (about
    // 100 KiB resident). Its symbols stay local: the library exports only the malloc family, and
    // no panic crosses its C entry points. Only LLD takes it: rustc names the archive before
    // std, and GNU ld, which searches an archive where it stands, then keeps libgcc_s.
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    // The code a program runs through, gathered at the front of the text (see layout.ld). The
    // script only adds to the default layout (INSERT), which GNU ld and LLD both support; a
    // linker without scripts (mold) needs PERCPU_MALLOC_DEFAULT_LAYOUT=1.
    let script = format!("{}/layout.ld", env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rustc-link-arg-cdylib=-Wl,-T,{script}");
    // Segments aligned to those 64 KiB windows (glibc 2.35 and later load the library at such an
    // address), so the same windows of code become resident in every process, not whichever the
    // load address happened to cut: 92 KiB where it varied between 84 and 140.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-z,max-page-size=65536");
}
