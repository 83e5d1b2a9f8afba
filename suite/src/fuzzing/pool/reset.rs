//! Making a used vCPU fresh again (the snapshot written back, per-VM MSRs put back) and proving
//! it by reading everything back.

use super::*;
use crate::inline_vec::InlineVec;
use crate::kvm::raw::{set_cpuid2, MsrEntry};
use crate::kvm::{CpuidTable, Vcpu};
use std::collections::BTreeSet;

/// The MSRs of `indices` a host read succeeds for, with their values: one KVM_GET_MSRS, and
/// past an entry that fails, the rest again.
pub fn read_all(vcpu: &Vcpu, indices: &[u32]) -> Vec<MsrEntry> {
    let mut out = Vec::with_capacity(indices.len());
    read_each(vcpu, indices, |e| out.push(e));
    out
}

/// `read_all`, handing each entry read to `each` (no ioctl for no indices).
pub fn read_each(vcpu: &Vcpu, indices: &[u32], mut each: impl FnMut(MsrEntry)) {
    let mut rest = indices;
    while !rest.is_empty() {
        let io = vcpu.get_msrs(rest);
        let n = io.result.unwrap_or(0).min(rest.len());
        io.entries()[..n].iter().for_each(|&e| each(e));
        // Skip the entry that failed.
        rest = &rest[(n + 1).min(rest.len())..];
    }
}

/// Values just before a write (`PooledVcpu::read_before`): which indices were tried, sorted, and
/// what those that could be read held (in place up to a `host` batch).
pub struct ReadBefore {
    pub(super) tried: InlineVec<(u32, Option<u64>), 16>,
}

impl ReadBefore {
    /// `index` was read (successfully or not).
    pub fn attempted(&self, index: u32) -> bool {
        self.find(index).is_some()
    }

    /// What `index` held, if it was read and the read succeeded.
    pub fn value(&self, index: u32) -> Option<u64> {
        self.find(index).and_then(|k| self.tried[k].1)
    }

    /// Where `index` is in `tried`.
    pub(super) fn find(&self, index: u32) -> Option<usize> {
        self.tried.binary_search_by_key(&index, |&(i, _)| i).ok()
    }
}

/// Put the per-VM MSRs back to the values the VM had when it was new; true if they read back so.
pub(super) fn restore_vm_scope(v: &PooledVcpu) -> bool {
    let undo: Vec<MsrEntry> = v
        .usage
        .undo
        .iter()
        .rev()
        .filter(|e| vm_scope(e.index))
        .copied()
        .collect();
    let vm: Vec<MsrEntry> = v
        .pristine
        .iter()
        .filter(|e| vm_scope(e.index))
        .copied()
        .collect();
    let want: Vec<MsrEntry> = undo.iter().chain(&vm).copied().collect();
    v.vcpu.set_msrs(&want).result == Ok(want.len())
        && reads_back(v, &want, &BTreeSet::new()).is_ok()
}

/// Every entry reads back with its value (`volatile` MSRs excepted).
pub(super) fn reads_back(
    v: &PooledVcpu,
    want: &[MsrEntry],
    volatile: &BTreeSet<u32>,
) -> Result<()> {
    let idx: Vec<u32> = want.iter().map(|e| e.index).collect();
    let io = v.vcpu.get_msrs(&idx);
    io.all_processed("pool reset proof: KVM_GET_MSRS of the reset MSRs")?;
    for (a, b) in want.iter().zip(io.entries()) {
        if a.data != b.data && !volatile.contains(&a.index) {
            return Err(Error::MsrReadBack {
                what: "pool reset proof",
                index: a.index,
                read: b.data,
                want: a.data,
            });
        }
    }
    Ok(())
}

/// Make a vCPU that never ran fresh again: default CPUID, the old values of MSRs outside the
/// snapshot (last write first), then the snapshot; verified by reading everything back. With
/// `skip_vm_scope` the per-VM MSRs are left alone (the vCPU did not write them, and another
/// vCPU of the VM may be using them right now).
pub(super) fn reset(
    v: &mut PooledVcpu,
    default_cpuid: &CpuidTable,
    volatile: &BTreeSet<u32>,
    skip_vm_scope: bool,
) -> Result<()> {
    // Host reads and rejected writes change nothing (a rejected write that changed state would
    // be a KVM bug the `pool-equivalence` oracle reports).
    if v.usage.changed_anything() {
        if v.usage.cpuid_changed {
            // (The same call as the pool's KVM_SET_CPUID2 of an input, `PooledVcpu::set_cpuid`.)
            set_cpuid2(&v.vcpu.fd, &default_cpuid.entries).map_err(|errno| Error::Ioctl {
                what: "pool reset: KVM_SET_CPUID2 of the default table",
                errno,
            })?;
            v.cpuid = default_cpuid.clone();
        }
        let keep = |e: &&MsrEntry| !(skip_vm_scope && vm_scope(e.index));
        // (Sized up front: collected through a filter, the vectors grew by reallocation, a
        // tenth of the supplier's instructions.)
        let room = v.usage.undo.len() + v.pristine.len();
        let mut want = Vec::with_capacity(room);
        want.extend(
            (v.usage.undo.iter().rev())
                .chain(v.pristine.iter())
                .filter(keep),
        );
        v.vcpu
            .set_msrs(&want)
            .all_processed("pool reset: KVM_SET_MSRS of the reset values")?;
        let mut expect = Vec::with_capacity(room);
        expect.extend(v.pristine.iter().chain(&v.usage.undo).filter(keep));
        reads_back(v, &expect, volatile)?;
    }
    v.usage = Usage::default();
    v.resets += 1;
    Ok(())
}
