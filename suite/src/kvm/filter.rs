//! KVM_X86_SET_MSR_FILTER (api.rst 4.97) from the model's representation, and
//! KVM_CAP_X86_USER_SPACE_MSR (api.rst 7.21).

use crate::model::filter::{bitmap_bytes, Filter, MAX_RANGES};
use kvm_bindings::{kvm_msr_filter, KVMIO};
use std::os::fd::AsRawFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

ioctl_iow_nr!(KVM_X86_SET_MSR_FILTER, KVMIO, 0xc6, kvm_msr_filter);

/// Install `f` on the VM. Each range's bitmap is padded to what the kernel copies, so a short
/// model bitmap never makes KVM read past the allocation.
pub fn set_msr_filter(vm: &impl AsRawFd, f: &Filter) -> Result<(), i32> {
    set_raw(vm, f, None)
}

/// Install `f` with range `unreadable`'s bitmap pointer NULL, so that KVM's copy of it
/// (x86.c kvm_add_msr_filter: memdup_user) faults.
pub fn set_msr_filter_unreadable(
    vm: &impl AsRawFd,
    f: &Filter,
    unreadable: usize,
) -> Result<(), i32> {
    set_raw(vm, f, Some(unreadable))
}

fn set_raw(vm: &impl AsRawFd, f: &Filter, unreadable: Option<usize>) -> Result<(), i32> {
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
    if ret < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(())
    }
}
