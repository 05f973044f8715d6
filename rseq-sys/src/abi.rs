//! The kernel ABI: `struct rseq`, `struct rseq_cs`, signatures, syscall numbers and auxv keys.
//!
//! Offsets are fixed by the kernel's UAPI (`include/uapi/linux/rseq.h`) and checked at compile
//! time below. Which fields the kernel actually fills for a thread is a separate, per-thread fact:
//! see [`crate::kernel_size`].

use core::mem::{align_of, offset_of, size_of};

/// `struct rseq`: the per-thread area shared with the kernel.
///
/// Only `rseq_cs` (and, on 7.0+, `slice_ctrl`) is written by user space once the area is
/// registered. Everything else is kernel-owned: writing it corrupts the kernel's view and, in the
/// 7.0 "V2" mode, kills the process. This crate never writes those fields after registration.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct Rseq {
    /// CPU the thread runs on; always a valid CPU number once registered.
    pub cpu_id_start: u32,
    /// CPU the thread runs on; `RSEQ_CPU_ID_UNINITIALIZED` (-1) before registration,
    /// `RSEQ_CPU_ID_REGISTRATION_FAILED` (-2) after a failed one.
    pub cpu_id: u32,
    /// Address of the active [`RseqCs`] descriptor, or 0. Written by user space.
    pub rseq_cs: u64,
    /// Kernel-owned since 6.0: any non-zero value seen during a critical-section fixup kills the
    /// process. This is why the 2020 RFC's `RSEQ_TLS_FLAG_SIZE` handshake cannot be used.
    pub flags: u32,
    /// NUMA node of `cpu_id` (kernel_size >= 24, Linux 6.3+).
    pub node_id: u32,
    /// Memory-map concurrency id: a compact per-process index `< min(threads, CPUs)`
    /// (kernel_size >= 28, Linux 6.3+).
    pub mm_cid: u32,
    /// Time-slice extension control (Linux 7.0+); unused by this crate.
    pub slice_ctrl: u32,
}

/// `struct rseq_cs`: a critical-section descriptor. `version` and `flags` must be 0.
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy)]
pub struct RseqCs {
    /// Always 0.
    pub version: u32,
    /// Always 0 (non-zero values kill the process on 6.0+).
    pub flags: u32,
    /// First instruction of the critical section.
    pub start_ip: u64,
    /// Length of the critical section: the commit instruction is the last one inside it.
    pub post_commit_offset: u64,
    /// Where the kernel resumes an interrupted section; the 4 bytes before it hold the signature.
    pub abort_ip: u64,
}

const _: () = {
    assert!(offset_of!(Rseq, cpu_id_start) == 0);
    assert!(offset_of!(Rseq, cpu_id) == 4);
    assert!(offset_of!(Rseq, rseq_cs) == 8);
    assert!(offset_of!(Rseq, flags) == 16);
    assert!(offset_of!(Rseq, node_id) == 20);
    assert!(offset_of!(Rseq, mm_cid) == 24);
    assert!(offset_of!(Rseq, slice_ctrl) == 28);
    assert!(size_of::<Rseq>() == ORIG_RSEQ_LEN);
    assert!(align_of::<Rseq>() == 32);
    assert!(offset_of!(RseqCs, version) == 0);
    assert!(offset_of!(RseqCs, flags) == 4);
    assert!(offset_of!(RseqCs, start_ip) == 8);
    assert!(offset_of!(RseqCs, post_commit_offset) == 16);
    assert!(offset_of!(RseqCs, abort_ip) == 24);
    assert!(size_of::<RseqCs>() == 32);
    assert!(align_of::<RseqCs>() == 32);
};

/// Byte offset of `cpu_id` in [`Rseq`].
pub const CPU_ID_OFFSET: usize = offset_of!(Rseq, cpu_id);
/// Byte offset of `mm_cid` in [`Rseq`].
pub const MM_CID_OFFSET: usize = offset_of!(Rseq, mm_cid);

/// Feature size of the original ABI (through `flags`): what a kernel without
/// `AT_RSEQ_FEATURE_SIZE` fills.
pub const ORIG_RSEQ_FEATURE_SIZE: u32 = 20;
/// Registration length of the original ABI, and the smallest length the kernel accepts.
pub const ORIG_RSEQ_LEN: usize = 32;
/// kernel_size from which `node_id` is filled.
pub const NODE_ID_END: u32 = 24;
/// kernel_size from which `mm_cid` is filled.
pub const MM_CID_END: u32 = 28;

/// `cpu_id` before registration.
pub const RSEQ_CPU_ID_UNINITIALIZED: i32 = -1;
/// `cpu_id` after a failed registration.
pub const RSEQ_CPU_ID_REGISTRATION_FAILED: i32 = -2;

/// `rseq(2)` flag that unregisters the area.
pub const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// `getauxval` key: bytes of `struct rseq` the kernel fills (Linux 6.3+; absent = 20).
pub const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;
/// `getauxval` key: alignment the kernel requires for areas longer than 32 bytes.
pub const AT_RSEQ_ALIGN: libc::c_ulong = 28;

/// `membarrier(2)` commands used to fence other CPUs' critical sections.
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 7;
/// Registration for [`MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`] (once per process, Linux 5.10+).
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;
/// `membarrier(2)` flag: the third argument names one CPU.
pub const MEMBARRIER_CMD_FLAG_CPU: u32 = 1 << 0;

/// The signature registered with the kernel, which must also sit in the 4 bytes before every
/// abort handler. It has to equal glibc's, because we share glibc's registration.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
pub const RSEQ_SIG: u32 = 0x5305_3053;
/// The signature registered with the kernel (the `brk #0x45e0` encoding, little-endian code).
#[cfg(target_arch = "aarch64")]
pub const RSEQ_SIG: u32 = 0xd428_bc00;
/// The signature registered with the kernel.
#[cfg(any(target_arch = "riscv64", target_arch = "riscv32"))]
pub const RSEQ_SIG: u32 = 0xf140_1073;
/// The signature registered with the kernel.
#[cfg(any(target_arch = "powerpc", target_arch = "powerpc64"))]
pub const RSEQ_SIG: u32 = 0x0fe5_000b;
/// The signature registered with the kernel.
#[cfg(target_arch = "s390x")]
pub const RSEQ_SIG: u32 = 0xb2ff_0fff;
/// The signature registered with the kernel.
#[cfg(target_arch = "loongarch64")]
pub const RSEQ_SIG: u32 = 0x002a_0010;
/// The signature registered with the kernel (no known value: registration is still attempted,
/// but no sequences exist for this architecture).
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "riscv32",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64",
)))]
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// The `rseq(2)` syscall number (libc's, which is right for every architecture it knows).
pub const SYS_RSEQ: libc::c_long = libc::SYS_rseq;

#[cfg(test)]
mod tests {
    #[test]
    fn syscall_numbers_match_the_abi_notes() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(super::SYS_RSEQ, 334);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(super::SYS_RSEQ, 293);
    }
}
