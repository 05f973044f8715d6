//! The hot part of a thread's registration, kept where the fast path finds it cheaply.
//!
//! [`crate::current`] runs on every per-CPU operation. A `thread_local!` compiled into a shared
//! object uses the general-dynamic TLS model: every access calls `__tls_get_addr` and walks the
//! thread's module table (a preloaded `malloc` spent 5–6% of its time there). On glibc targets
//! with commit sequences this block is defined in assembly in the initial-exec model instead: its
//! offset from the thread pointer is a GOT entry the loader fills once. On x86_64 [`read`] is
//! then two `%fs`-relative loads, and in executables, where the linker turns the GOT load into a
//! constant, one: the code a `thread_local!` gets there. On aarch64 it adds the offset to
//! `tpidr_el0` and loads through the sum.
//!
//! The price: a shared object using initial-exec TLS gets its whole TLS segment (432 bytes for
//! `libpercpu_malloc.so`) placed in static TLS when it is loaded. glibc keeps a surplus for this
//! (`dlopen` fails cleanly, with "cannot allocate memory in static TLS block", only when it is
//! spent) but refuses a segment aligned beyond its own static TLS (64 bytes on x86_64), which is
//! why our own rseq area is aligned to 64 and no more. Other C libraries promise no surplus, so
//! elsewhere the block is a `thread_local!`.
//!
//! All-zero bytes are the unregistered state, so the block needs no initialiser and no
//! destructor: `.tbss` starts zeroed in every thread.

use core::cell::Cell;

use crate::abi::Rseq;
use crate::registration::Owner;

/// A thread's registration as the fast path reads it. Written only by its own thread.
#[repr(C, align(16))]
pub(crate) struct ThreadBlock {
    /// The registered area; null while the thread has none.
    area: Cell<*mut Rseq>,
    /// Bytes of `struct rseq` the kernel fills (0 while unregistered).
    kernel_size: Cell<u32>,
    /// `Index as u8` (the field offset), valid while `area` is non-null.
    best: Cell<u8>,
    /// `Owner as u8`, valid while `area` is non-null.
    owner: Cell<u8>,
}

// The assembly reserves 16 bytes aligned to 16.
const _: () = assert!(core::mem::size_of::<ThreadBlock>() == 16);
const _: () = assert!(core::mem::align_of::<ThreadBlock>() == 16);

impl ThreadBlock {
    /// Publishes a registration (the area last, so a non-null area implies the rest).
    pub(crate) fn set(&self, area: *mut Rseq, kernel_size: u32, best: crate::Index, owner: Owner) {
        self.kernel_size.set(kernel_size);
        self.best.set(best as u8);
        self.owner.set(owner as u8);
        self.area.set(area);
    }

    // Unused on x86_64 glibc outside tests: there `read` is assembly.
    #[cfg_attr(
        all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(rseq_sys_no_sequences)
        ),
        allow(dead_code)
    )]
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            area: self.area.get(),
            kernel_size: self.kernel_size.get(),
            best: self.best.get(),
            owner: self.owner.get(),
        }
    }
}

/// The block's contents, as [`read`] returns them.
#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    /// The registered area; null while the thread has none.
    pub(crate) area: *mut Rseq,
    pub(crate) kernel_size: u32,
    best: u8,
    owner: u8,
}

impl Snapshot {
    /// The index choice; call only when `area` is non-null.
    #[inline(always)]
    pub(crate) fn best(self) -> crate::Index {
        debug_assert!(
            self.best == crate::Index::CpuId as u8 || self.best == crate::Index::MmCid as u8
        );
        // SAFETY: `Index` is `repr(u8)`, and while `area` is non-null `best` holds the value of
        // one (`set` writes it first; this thread is the only writer). A plain load, not a
        // decode: it feeds the address of the index field on every fast path.
        unsafe { core::mem::transmute::<u8, crate::Index>(self.best) }
    }

    /// The owner; call only when `area` is non-null.
    #[inline(always)]
    pub(crate) fn owner(self) -> Owner {
        match self.owner {
            x if x == Owner::Glibc as u8 => Owner::Glibc,
            x if x == Owner::Own as u8 => Owner::Own,
            _ => Owner::None,
        }
    }
}

/// This thread's registration, read from its block.
#[cfg(not(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
)))]
#[inline(always)]
pub(crate) fn read() -> Snapshot {
    with(ThreadBlock::snapshot)
}

/// Runs `f` on this thread's block.
#[inline(always)]
pub(crate) fn with<R>(f: impl FnOnce(&ThreadBlock) -> R) -> R {
    // SAFETY: `block()` is this thread's block: zeroed (a valid `ThreadBlock`: null, 0, 0, 0)
    // when the thread starts, written only through `&ThreadBlock` on this thread (its fields are
    // `Cell`s, and the type is not `Sync`), and alive until the thread's TLS is freed, after every
    // destructor that could call `f`. The reference does not escape `f`.
    f(unsafe { &*block() })
}

// `--cfg rseq_sys_no_sequences` selects the `thread_local!` too, so it is built and tested here.
#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
))]
mod initial_exec {
    /// The block's symbol, named after the crate's exact version. Hidden: each shared object
    /// has its own. Weak: copies of this same version in one link (a test build of this crate
    /// and the library beside it) share one block, as they share the thread's one registration;
    /// other versions, whose layout may differ, keep theirs.
    macro_rules! block_symbol {
        () => {
            concat!(
                "__rseq_sys_thread_block_",
                env!("CARGO_PKG_VERSION_MAJOR"),
                "_",
                env!("CARGO_PKG_VERSION_MINOR"),
                "_",
                env!("CARGO_PKG_VERSION_PATCH")
            )
        };
    }

    // 16 zero bytes of thread-local storage (`"awT"`, `@nobits`: .tbss, zeroed per thread).
    core::arch::global_asm!(
        concat!(".pushsection .tbss.", block_symbol!(), ",\"awT\",@nobits"),
        ".balign 16",
        concat!(".weak ", block_symbol!()),
        concat!(".hidden ", block_symbol!()),
        concat!(".type ", block_symbol!(), ",@object"),
        concat!(".size ", block_symbol!(), ",16"),
        concat!(block_symbol!(), ":"),
        ".zero 16",
        ".popsection",
    );

    /// This thread's registration: two loads relative to %fs, at the block's offset from the
    /// GOT. In an executable the linker turns the GOT load into an immediate, leaving the one
    /// %fs-relative load a `thread_local!` gets.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn read() -> super::Snapshot {
        let (area, rest): (usize, u64);
        // SAFETY: loads the block's offset from the thread pointer (a GOT entry the loader or
        // linker fills), then the block's two words through %fs (whose base is the thread
        // pointer). Reads only memory, and nothing it reads changes unless this thread writes
        // the block (which the compiler sees), so `pure` and `readonly`; no stack, no flags.
        unsafe {
            core::arch::asm!(
                concat!("movq ", block_symbol!(), "@GOTTPOFF(%rip), {offset}"),
                "movq %fs:({offset}), {area}",
                "movq %fs:8({offset}), {rest}",
                offset = out(reg) _,
                area = out(reg) area,
                rest = out(reg) rest,
                options(att_syntax, pure, readonly, nostack, preserves_flags),
            );
        }
        // The second word, little-endian: kernel_size, best, owner (see `ThreadBlock`).
        super::Snapshot {
            area: area as *mut super::Rseq,
            kernel_size: rest as u32,
            best: (rest >> 32) as u8,
            owner: (rest >> 40) as u8,
        }
    }

    /// This thread's block: the thread pointer plus the block's offset from the GOT.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn block() -> *mut super::ThreadBlock {
        let address: usize;
        // SAFETY: loads the block's offset from the thread pointer (a GOT entry the loader or
        // linker fills) and adds the thread pointer, which glibc keeps at %fs:0 (the TCB's self
        // pointer). Reads only memory that never changes for this thread, so `pure` and
        // `readonly` (the compiler may reuse the result); no stack; `add` writes the flags.
        unsafe {
            core::arch::asm!(
                concat!("movq ", block_symbol!(), "@GOTTPOFF(%rip), {address}"),
                "addq %fs:0, {address}",
                address = out(reg) address,
                options(att_syntax, pure, readonly, nostack),
            );
        }
        address as *mut super::ThreadBlock
    }

    /// This thread's block: the thread pointer plus the block's offset from the GOT.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub(super) fn block() -> *mut super::ThreadBlock {
        let address: usize;
        // SAFETY: reads the thread pointer (`tpidr_el0`) and the block's offset from it (a GOT
        // entry the loader or linker fills), and adds them. Reads only memory that never changes
        // for this thread, so `pure` and `readonly`; no stack; no flags written.
        unsafe {
            core::arch::asm!(
                "mrs {address}, tpidr_el0",
                concat!("adrp {offset}, :gottprel:", block_symbol!()),
                concat!("ldr {offset}, [{offset}, #:gottprel_lo12:", block_symbol!(), "]"),
                "add {address}, {address}, {offset}",
                address = out(reg) address,
                offset = out(reg) _,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        address as *mut super::ThreadBlock
    }
}

#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
))]
use initial_exec::block;
#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
))]
pub(crate) use initial_exec::read;

/// This thread's block, from a `thread_local!`.
#[cfg(not(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
)))]
#[inline(always)]
fn block() -> *mut ThreadBlock {
    thread_local! {
        static BLOCK: ThreadBlock = const {
            ThreadBlock {
                area: Cell::new(core::ptr::null_mut()),
                kernel_size: Cell::new(0),
                best: Cell::new(0),
                owner: Cell::new(0),
            }
        };
    }
    BLOCK.with(|b| core::ptr::from_ref(b).cast_mut())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    /// Each live thread has a block of its own, holding its own registration: with glibc's,
    /// exactly the area at the thread pointer plus `__rseq_offset`.
    #[test]
    fn each_thread_reads_its_own_registration() {
        const THREADS: usize = 8;
        let all_alive = Barrier::new(THREADS);
        let observe = || {
            let current = crate::current();
            let (block, area) =
                super::with(|b| (core::ptr::from_ref(b) as usize, b.area.get() as usize));
            // What the fast path reads is what the block holds, field by field.
            let (read, held) = (super::read(), super::with(super::ThreadBlock::snapshot));
            let fields = |s: super::Snapshot| (s.area, s.kernel_size, s.best, s.owner);
            // No thread exits (freeing its TLS for reuse) before all have looked; the checks
            // come after, so a failing one cannot leave the others waiting.
            all_alive.wait();
            assert_eq!(area, current.map_or(0, |c| c.area().as_ptr() as usize));
            assert!(
                fields(read) == fields(held),
                "the fast path misreads the block"
            );
            if let Some(current) = current {
                assert_eq!(read.kernel_size, current.kernel_size());
                assert_eq!(read.best(), current.best_index());
                assert_eq!(read.owner(), current.owner());
                assert_ne!(read.kernel_size, 0);
            }
            if let (Some(current), Some(tp)) = (current, crate::arch::thread_pointer())
                && current.owner() == crate::Owner::Glibc
            {
                let (_, offset) = crate::registration::glibc_registration();
                assert_eq!(area, tp.wrapping_offset(offset) as usize);
            }
            (block, area)
        };
        let seen: Vec<(usize, usize)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS).map(|_| s.spawn(observe)).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for (i, a) in seen.iter().enumerate() {
            for b in &seen[i + 1..] {
                assert_ne!(a.0, b.0, "two threads share a block");
                if a.1 != 0 {
                    assert_ne!(a.1, b.1, "two threads share an area");
                }
            }
        }
    }
}
