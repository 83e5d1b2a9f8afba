//! KVM_X86_SET_MSR_FILTER (api.rst 4.97): a filter as userspace passes it, and the ioctl.
//! `model::filter` validates such a filter and decides accesses the way KVM does.

use crate::error::Errno;
use kvm_bindings::{kvm_msr_filter, KVMIO};
use std::os::fd::AsRawFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

ioctl_iow_nr!(KVM_X86_SET_MSR_FILTER, KVMIO, 0xc6, kvm_msr_filter);

/// KVM_MSR_FILTER_DEFAULT_DENY.
pub const DEFAULT_DENY: u32 = 1;
pub const FLAGS_VALID: u32 = 1;
pub const RANGE_READ: u32 = 1;
pub const RANGE_WRITE: u32 = 2;
pub const RANGE_FLAGS_VALID: u32 = 3;
pub const MAX_RANGES: usize = 16;
pub const MAX_BITMAP_BYTES: usize = 0x600;

/// One range as userspace passes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub flags: u32,
    pub base: u32,
    pub nmsrs: u32,
    /// Bit i allows base + i. Shorter than the kernel's copy is fine: missing bytes are 0 (deny).
    pub bitmap: Vec<u8>,
}

/// A filter as userspace passes it (at most 16 ranges; unused slots are empty ranges).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Filter {
    pub flags: u32,
    pub ranges: Vec<Range>,
}

/// Bytes the kernel copies for a range: BITS_TO_LONGS(nmsrs) * sizeof(long).
pub fn bitmap_bytes(nmsrs: u32) -> usize {
    (nmsrs as usize).div_ceil(64) * 8
}

impl Range {
    /// A range whose bitmap allows exactly `allowed` (indices outside the range are ignored).
    pub fn with_allowed(flags: u32, base: u32, nmsrs: u32, allowed: &[u32]) -> Range {
        let mut bitmap = vec![0u8; bitmap_bytes(nmsrs)];
        for &i in allowed {
            let off = i.wrapping_sub(base);
            if off < nmsrs {
                bitmap[(off / 8) as usize] |= 1 << (off % 8);
            }
        }
        Range {
            flags,
            base,
            nmsrs,
            bitmap,
        }
    }
}

/// Install `f` on the VM. Each range's bitmap is padded to what the kernel copies, so a short
/// model bitmap never makes KVM read past the allocation.
pub fn set_msr_filter(vm: &impl AsRawFd, f: &Filter) -> Result<(), Errno> {
    set_raw(vm, f, None)
}

/// Install `f` with range `unreadable`'s bitmap pointer NULL, so that KVM's copy of it
/// (x86.c kvm_add_msr_filter: memdup_user) faults.
pub fn set_msr_filter_unreadable(
    vm: &impl AsRawFd,
    f: &Filter,
    unreadable: usize,
) -> Result<(), Errno> {
    set_raw(vm, f, Some(unreadable))
}

fn set_raw(vm: &impl AsRawFd, f: &Filter, unreadable: Option<usize>) -> Result<(), Errno> {
    assert!(
        f.ranges.len() <= MAX_RANGES,
        "the ABI holds {MAX_RANGES} ranges"
    );
    let mut bitmaps: Vec<Vec<u8>> = f
        .ranges
        .iter()
        .map(|r| {
            let mut b = r.bitmap.clone();
            b.resize(b.len().max(bitmap_bytes(r.nmsrs)).max(8), 0);
            b
        })
        .collect();
    // SAFETY: kvm_msr_filter is plain data (integers and raw pointers); all-zero is valid.
    let mut raw: kvm_msr_filter = unsafe { std::mem::zeroed() };
    raw.flags = f.flags;
    for (i, (r, b)) in f.ranges.iter().zip(bitmaps.iter_mut()).enumerate() {
        raw.ranges[i].flags = r.flags;
        raw.ranges[i].nmsrs = r.nmsrs;
        raw.ranges[i].base = r.base;
        raw.ranges[i].bitmap = if unreadable == Some(i) {
            std::ptr::null_mut()
        } else {
            b.as_mut_ptr()
        };
    }
    // SAFETY: `raw` is a valid kvm_msr_filter whose bitmap pointers point into `bitmaps`, each at
    // least BITS_TO_LONGS(nmsrs) * 8 bytes, alive until the ioctl returns (KVM copies them), or
    // are NULL, which KVM's copy_from_user refuses with EFAULT without touching our memory.
    let ret = unsafe { ioctl_with_ref(vm, KVM_X86_SET_MSR_FILTER(), &raw) };
    super::raw::ioctl_result(ret).map(|_| ())
}
