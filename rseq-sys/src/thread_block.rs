//! The hot part of a thread's registration, kept where the fast path finds it cheaply.
//!
//! [`crate::current`] runs on every per-CPU operation. A `thread_local!` compiled into a shared
//! object uses the general-dynamic TLS model: every access calls `__tls_get_addr` and walks the
//! thread's module table (a preloaded `malloc` spent 5–6% of its time there). On glibc targets
//! with commit sequences this block is defined in assembly and reached another way:
//!
//! - **TLS descriptors** (the default): the block's offset from the thread pointer comes from a
//!   call through its descriptor, which the loader points at a two-instruction function when the
//!   object sits in static TLS. In executables the linker turns the call into a constant, so
//!   [`read`] is the one `%fs`-relative load a `thread_local!` gets there. A shared object that is
//!   `dlopen`ed late, or whose TLS is large or aligned beyond what glibc's static TLS offers, gets
//!   dynamic TLS instead, and still loads.
//! - **Initial-exec** (feature `initial-exec-tls`, x86_64 only): the offset is a GOT entry the
//!   loader fills once, so a shared object reads the block with no call. The price: the object's
//!   whole TLS segment must fit in static TLS, so `dlopen` fails ("cannot allocate memory in
//!   static TLS block") when glibc's small surplus is spent or the segment is aligned beyond 64
//!   bytes. For executables and `LD_PRELOAD` libraries (`libpercpu_malloc.so`), which are never
//!   `dlopen`ed; a test loads one built so into a running program. aarch64 always uses
//!   descriptors, its platform default: glibc's static TLS there is aligned to 32 bytes only,
//!   below our own rseq area's 64, so initial-exec objects could never be `dlopen`ed at all.
//!
//! All-zero bytes are the unregistered state, so the block needs no initialiser and no
//! destructor: `.tbss` starts zeroed in every thread.

use core::cell::Cell;

use crate::abi::Rseq;
use crate::memo::Memo;
use crate::registration::Owner;

/// A thread's registration as the fast path reads it. Written only by its own thread.
#[repr(C, align(64))]
pub(crate) struct ThreadBlock {
    /// The registered area; null while the thread has none.
    area: Cell<*mut Rseq>,
    /// The area's field that `best` names (null while unregistered): the fast paths read the
    /// index there and compare it in their sequences, with no offset to load or add.
    best_field: Cell<*const u32>,
    /// Bytes of `struct rseq` the kernel fills (0 while unregistered).
    kernel_size: Cell<u32>,
    /// `Index as u8` (the field offset), valid while `area` is non-null.
    best: Cell<u8>,
    /// `Owner as u8`. With `area` null: `Owner::None` once the thread is known to have no rseq
    /// (so [`crate::current`] answers without the thread-local that says why), else 0.
    owner: Cell<u8>,
    /// The CPU [`crate::cpu_hint`] reports, and how many more calls may report it before
    /// `sched_getcpu` is asked again (0: ask now).
    cpu_hint: Cell<u32>,
    hint_uses: Cell<u32>,
    /// The memo (see [`crate::memo`]): the raw tag of the client that wrote it last (0: none;
    /// never non-zero while `area` is null), the index it was computed for, and its value.
    memo_tag: Cell<u32>,
    memo_index: Cell<u32>,
    memo_value: Cell<usize>,
}

// The assembly reserves a cache line (a fast path reads the first 16 bytes, the area and its best
// field, and a memo's the 16 from 32 as well): aligned to it, so that every read touches one.
const _: () = assert!(core::mem::size_of::<ThreadBlock>() == 64);
const _: () = assert!(core::mem::offset_of!(ThreadBlock, memo_tag) == 32);
const _: () = assert!(core::mem::offset_of!(ThreadBlock, memo_index) == 36);
const _: () = assert!(core::mem::offset_of!(ThreadBlock, memo_value) == 40);
const _: () = assert!(core::mem::align_of::<ThreadBlock>() == 64);

/// Calls of [`crate::cpu_hint`] that one `sched_getcpu` answers.
pub(crate) const CPU_HINT_USES: u32 = 64;

impl ThreadBlock {
    /// See [`crate::cpu_hint`]. Inline, so that a caller in another crate (the freelists'
    /// fallback paths) pays a decrement, not a call, for a hint it already has.
    #[inline]
    pub(crate) fn cpu_hint(&self) -> Option<u32> {
        match self.hint_uses.get() {
            0 => self.ask_cpu(),
            uses => {
                self.hint_uses.set(uses - 1);
                Some(self.cpu_hint.get())
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn ask_cpu(&self) -> Option<u32> {
        let cpu = crate::sched_getcpu()?;
        self.cpu_hint.set(cpu);
        self.hint_uses.set(CPU_HINT_USES - 1);
        Some(cpu)
    }

    /// See [`crate::forget_cpu_hint`].
    #[inline]
    pub(crate) fn forget_cpu_hint(&self) {
        self.hint_uses.set(0);
    }

    /// Publishes a registration (the area last, so a non-null area implies the rest), whose
    /// field `best` names is at `best_field`. Forgets the memo, which belonged to the registration
    /// before.
    pub(crate) fn set(
        &self,
        area: *mut Rseq,
        best_field: *const u32,
        kernel_size: u32,
        best: crate::Index,
        owner: Owner,
    ) {
        debug_assert!(area.is_null() || best_field as usize == area as usize + best.field_offset());
        self.best_field.set(best_field);
        self.kernel_size.set(kernel_size);
        self.best.set(best as u8);
        self.owner.set(owner as u8);
        self.memo_tag.set(0);
        self.area.set(area);
    }

    /// Writes the memo, if the thread's registration is still `area` (a memo is only ever kept
    /// beside the registration it was made under).
    pub(crate) fn remember(&self, area: *mut Rseq, tag: u32, index: u32, value: usize) {
        if self.area.get() == area && !area.is_null() {
            self.memo_index.set(index);
            self.memo_value.set(value);
            self.memo_tag.set(tag);
        }
    }
}

// Unused on x86_64 glibc outside tests: there `read` and `read_with_memo` are assembly.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu",
        not(rseq_sys_no_sequences)
    ),
    allow(dead_code)
)]
impl ThreadBlock {
    /// The memo's raw tag (0: none), and the memo.
    fn memo(&self) -> (u32, Memo) {
        (
            self.memo_tag.get(),
            Memo {
                index: self.memo_index.get(),
                value: self.memo_value.get(),
            },
        )
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            area: self.area.get(),
            best_field: self.best_field.get(),
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
    /// The area's field that `best` names; non-null while `area` is.
    pub(crate) best_field: *const u32,
    pub(crate) kernel_size: u32,
    best: u8,
    owner: u8,
}

impl Snapshot {
    /// Whether the thread is known to have no rseq: no area, and marked so by
    /// [`ThreadBlock::set`] with [`Owner::None`] (a new thread's zeroed block is not).
    #[inline(always)]
    pub(crate) fn known_unavailable(self) -> bool {
        self.area.is_null() && self.owner == Owner::None as u8
    }

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

/// [`read`], and the memo's raw tag and the memo.
#[cfg(not(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
)))]
#[inline(always)]
pub(crate) fn read_with_memo() -> (Snapshot, u32, Memo) {
    with(|b| {
        let (tag, memo) = b.memo();
        (b.snapshot(), tag, memo)
    })
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
mod in_assembly {
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

    /// The memo tags' counter's symbol: shared as the block is (the tags name memos in it).
    macro_rules! memo_tags_symbol {
        () => {
            concat!(block_symbol!(), "_memo_tags")
        };
    }

    /// A weak, hidden object of `$size` zero bytes aligned to `$align`, named `$symbol`, in a
    /// section of its own (`@nobits`: nothing in the file): `.tbss` with flags `"awT"` (a copy per
    /// thread, zeroed when the thread starts) or `.bss` with `"aw"` (one per process).
    macro_rules! weak_hidden_zeroes {
        ($section:literal, $flags:literal, $symbol:expr, $align:literal, $size:literal) => {
            core::arch::global_asm!(
                concat!(
                    ".pushsection ",
                    $section,
                    ".",
                    $symbol,
                    ",\"",
                    $flags,
                    "\",@nobits"
                ),
                concat!(".balign ", $align),
                concat!(".weak ", $symbol),
                concat!(".hidden ", $symbol),
                concat!(".type ", $symbol, ",@object"),
                concat!(".size ", $symbol, ",", $size),
                concat!($symbol, ":"),
                concat!(".zero ", $size),
                ".popsection",
            );
        };
    }

    weak_hidden_zeroes!(".tbss", "awT", block_symbol!(), "64", "64");
    weak_hidden_zeroes!(".bss", "aw", memo_tags_symbol!(), "4", "4");

    unsafe extern "C" {
        #[link_name = memo_tags_symbol!()]
        static MEMO_TAGS: core::sync::atomic::AtomicU32;
    }

    /// The last memo tag handed out (0: none yet), for every copy of this crate that shares the
    /// block.
    pub(crate) fn memo_tags() -> &'static core::sync::atomic::AtomicU32 {
        // SAFETY: four zeroed, aligned bytes defined above (one definition per object, weak),
        // only ever accessed atomically: a valid `AtomicU32` for the program's whole run.
        unsafe { &MEMO_TAGS }
    }

    /// x86_64: `asm!` with the block's offset from the thread pointer in %rax, then the
    /// instructions and operands given (which must name %rax).
    ///
    /// The offset comes from a call through the block's TLS descriptor (`leaq` and `call` in the
    /// exact form the linker rewrites to a constant in executables). The descriptor's function
    /// preserves every register but %rax and the flags, by its ABI; glibc before 2.40 could lose
    /// vector registers on its dynamic path (bug 31372), so xmm0–15 are declared clobbered as
    /// well, which costs nothing where none is live. A call pushes its return address, so no
    /// `nostack` (this also keeps the compiler's data out of the red zone, which the dynamic
    /// path uses).
    #[cfg(all(target_arch = "x86_64", not(feature = "initial-exec-tls")))]
    macro_rules! asm_with_block_offset {
        ($($body:literal),+; $($operands:tt)*) => {
            core::arch::asm!(
                concat!("leaq ", block_symbol!(), "@TLSDESC(%rip), %rax"),
                concat!("call *", block_symbol!(), "@TLSCALL(%rax)"),
                $($body),+,
                $($operands)*
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                options(att_syntax, pure, readonly),
            )
        };
    }

    /// x86_64, initial-exec: as above, the offset loaded from its GOT entry (which the linker
    /// turns into a constant in executables). A load: no stack used.
    #[cfg(all(target_arch = "x86_64", feature = "initial-exec-tls"))]
    macro_rules! asm_with_block_offset {
        ($($body:literal),+; $($operands:tt)*) => {
            core::arch::asm!(
                concat!("movq ", block_symbol!(), "@GOTTPOFF(%rip), %rax"),
                $($body),+,
                $($operands)*
                options(att_syntax, pure, readonly, nostack),
            )
        };
    }

    /// This thread's registration: the block's three words, loaded relative to %fs.
    ///
    /// In two blocks, each `pure`: a fast path uses only the first two words (the area and its
    /// best field), and the compiler drops the block that loads the third when nothing reads
    /// it.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn read() -> super::Snapshot {
        let (area, best_field, rest): (usize, usize, u64);
        // SAFETY: finds the block's offset from the thread pointer (see
        // `asm_with_block_offset`), then loads the block's words through %fs, whose base is the
        // thread pointer. Reads only memory, and nothing it reads changes unless this thread
        // writes the block (which the compiler sees): `pure` and `readonly`. The first call in a
        // thread of an object in dynamic TLS makes the loader allocate the object's block, which
        // no Rust code can observe.
        unsafe {
            asm_with_block_offset!(
                "movq %fs:(%rax), {area}",
                "movq %fs:8(%rax), {best_field}";
                area = out(reg) area,
                best_field = out(reg) best_field,
                out("rax") _,
            );
        }
        // SAFETY: as above, for the third word.
        unsafe {
            asm_with_block_offset!(
                "movq %fs:16(%rax), {rest}";
                rest = out(reg) rest,
                out("rax") _,
            );
        }
        snapshot(area, best_field, rest)
    }

    /// The block's third word, little-endian: kernel_size, best, owner (see `ThreadBlock`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn snapshot(area: usize, best_field: usize, rest: u64) -> super::Snapshot {
        super::Snapshot {
            area: area as *mut super::Rseq,
            best_field: best_field as *const u32,
            kernel_size: rest as u32,
            best: (rest >> 32) as u8,
            owner: (rest >> 40) as u8,
        }
    }

    /// [`read`], and the memo: in one block with the first two words, so that a memo's fast
    /// path finds the block's offset once.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn read_with_memo() -> (super::Snapshot, u32, super::Memo) {
        let (area, best_field, tag_and_index, value, rest): (usize, usize, u64, usize, u64);
        // SAFETY: as in `read`, for the memo's words too (offsets 32 and 40: see `ThreadBlock`).
        // The tag and index in one load: one register fewer while the tag is compared (a
        // caller's fast path may then need no stack frame).
        unsafe {
            asm_with_block_offset!(
                "movq %fs:(%rax), {area}",
                "movq %fs:8(%rax), {best_field}",
                "movq %fs:32(%rax), {tag_and_index}",
                "movq %fs:40(%rax), {value}";
                area = out(reg) area,
                best_field = out(reg) best_field,
                tag_and_index = out(reg) tag_and_index,
                value = out(reg) value,
                out("rax") _,
            );
        }
        // Little-endian: the tag at 32, the index at 36.
        let (tag, index) = (tag_and_index as u32, (tag_and_index >> 32) as u32);
        // SAFETY: as in `read`, for the third word.
        unsafe {
            asm_with_block_offset!(
                "movq %fs:16(%rax), {rest}";
                rest = out(reg) rest,
                out("rax") _,
            );
        }
        (
            snapshot(area, best_field, rest),
            tag,
            super::Memo { index, value },
        )
    }

    /// This thread's block: the thread pointer plus the block's offset from it.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn block() -> *mut super::ThreadBlock {
        let address: usize;
        // SAFETY: finds the block's offset as in `read`, and adds the thread pointer, which
        // glibc keeps at %fs:0 (the TCB's self pointer). The result never changes for this
        // thread: `pure` and `readonly`.
        unsafe {
            asm_with_block_offset!("addq %fs:0, %rax"; out("rax") address,);
        }
        address as *mut super::ThreadBlock
    }

    /// This thread's block: the thread pointer plus the offset the block's TLS descriptor gives.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub(crate) fn block() -> *mut super::ThreadBlock {
        let address: usize;
        // SAFETY: calls the block's TLS descriptor in the sequence the ABI and the linker's
        // relaxations expect (x0 the descriptor's address, x1 its function, `.tlsdesccall` on
        // the `blr`); the offset comes back in x0, and the thread pointer (`tpidr_el0`) is added.
        // The function preserves every register but x0, the link register and the flags (x1 is
        // ours); so those are clobbered, flags included. It may use the stack: no `nostack`. The
        // result never changes for this thread: `pure` and `readonly`.
        unsafe {
            core::arch::asm!(
                concat!("adrp x0, :tlsdesc:", block_symbol!()),
                concat!("ldr x1, [x0, #:tlsdesc_lo12:", block_symbol!(), "]"),
                concat!("add x0, x0, #:tlsdesc_lo12:", block_symbol!()),
                concat!(".tlsdesccall ", block_symbol!()),
                "blr x1",
                "mrs {tp}, tpidr_el0",
                "add x0, x0, {tp}",
                tp = out(reg) _,
                out("x0") address,
                out("x1") _,
                out("x30") _,
                options(pure, readonly),
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
pub(crate) use in_assembly::{block, memo_tags};
#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
))]
pub(crate) use in_assembly::{read, read_with_memo};

/// The last memo tag handed out (0: none yet). Each copy of this crate has its own, as it has its
/// own `thread_local!` block.
#[cfg(not(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    target_env = "gnu",
    not(rseq_sys_no_sequences)
)))]
pub(crate) fn memo_tags() -> &'static core::sync::atomic::AtomicU32 {
    static MEMO_TAGS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    &MEMO_TAGS
}

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
                best_field: Cell::new(core::ptr::null()),
                kernel_size: Cell::new(0),
                best: Cell::new(0),
                owner: Cell::new(0),
                cpu_hint: Cell::new(0),
                hint_uses: Cell::new(0),
                memo_tag: Cell::new(0),
                memo_index: Cell::new(0),
                memo_value: Cell::new(0),
            }
        };
    }
    BLOCK.with(|b| core::ptr::from_ref(b).cast_mut())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::{Memo, ThreadBlock};

    /// A memo is written only beside the registration it names, and a new registration (or
    /// its loss) forgets it.
    #[test]
    fn a_memo_lives_exactly_as_long_as_its_registration() {
        // A block of our own: the thread's real one serves its registration.
        // SAFETY: all zeroes is a valid block (null pointers, zero integers), as in `.tbss`.
        let block: ThreadBlock = unsafe { core::mem::zeroed() };
        let (area, other) = (0x1000 as *mut super::Rseq, 0x2000 as *mut super::Rseq);
        let memo = |tag, index, value| (tag, Memo { index, value });
        block.remember(area, 3, 1, 2);
        assert_eq!(block.memo().0, 0, "no registration: no memo");
        let field = |area: *mut super::Rseq| area.wrapping_byte_add(4).cast::<u32>().cast_const();
        block.set(
            area,
            field(area),
            32,
            crate::Index::CpuId,
            crate::Owner::Own,
        );
        block.remember(other, 3, 1, 2);
        assert_eq!(block.memo().0, 0, "another registration's memo");
        block.remember(area, 3, 1, 2);
        assert_eq!(block.memo(), memo(3, 1, 2));
        block.set(
            other,
            field(other),
            32,
            crate::Index::CpuId,
            crate::Owner::Own,
        );
        assert_eq!(block.memo().0, 0, "a new registration forgets it");
        block.remember(other, 4, 5, 6);
        block.set(
            core::ptr::null_mut(),
            core::ptr::null(),
            0,
            crate::Index::CpuId,
            crate::Owner::None,
        );
        assert_eq!(block.memo().0, 0, "so does losing it");
    }

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
            // What the fast path reads is what the block holds, field by field, its memo too
            // (a distinct one per thread).
            if let Some(current) = current {
                let tag = crate::MemoTag::new().unwrap();
                current.remember(tag, tag.get() + 1, tag.get() as usize + 2);
                let (snapshot, memo_tag, memo) = super::read_with_memo();
                assert_eq!((memo_tag, memo), super::with(super::ThreadBlock::memo));
                assert_eq!((memo_tag, memo.index), (tag.get(), tag.get() + 1));
                assert_eq!(memo.value, tag.get() as usize + 2);
                assert_eq!(snapshot.area, current.area().as_ptr());
                assert_eq!(snapshot.best_field, super::read().best_field);
            }
            let (read, held) = (super::read(), super::with(super::ThreadBlock::snapshot));
            let fields =
                |s: super::Snapshot| (s.area, s.best_field, s.kernel_size, s.best, s.owner);
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
                assert_eq!(
                    read.best_field as usize,
                    read.area as usize + current.best_index().field_offset(),
                    "the best field is the area's field the best index names"
                );
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
