//! A vCPU lent to one input, the VM it lives in, and what the input did to it (`Usage`), which
//! decides whether and how it can be reset.

use super::*;
use crate::error::Result;
use crate::guest::long_mode;
use crate::inline_vec::InlineVec;
use crate::kvm::raw::MsrEntry;
use crate::kvm::{CpuidTable, Errno, Exit, KvmSystem, Vcpu, Vm, VmConfig};
use crate::session::msr_traits::MsrTraits;
use crate::session::Context;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A VM with the guest runtime installed, shared by the vCPUs created in it.
pub struct Stage {
    pub(super) vm: Vm,
    /// Address of the interpreter's entry; OPS holds an empty program (memory starts zeroed).
    pub(super) entry: u64,
    pub(super) created: AtomicU64,
    pub(super) retired: AtomicBool,
    /// Values of the per-VM MSRs (`vm_scope`) in the new VM, read by its first vCPU. Later vCPUs
    /// are created while another vCPU may have changed them, so their reset target comes from here.
    pub(super) vm_pristine: OnceLock<Vec<MsrEntry>>,
}

// SAFETY: after `Stage::new` nothing in userspace touches the guest memory (only KVM does, for
// the vCPUs' KVM_RUN); through a shared Stage only the VM fd (which kvm-ioctls makes Sync), the
// atomics and the OnceLock are used.
unsafe impl Sync for Stage {}

impl Stage {
    pub(super) fn new(sys: &KvmSystem) -> Result<Arc<Stage>> {
        let mut vm = Vm::new(sys, &VmConfig::default())?;
        let runtime = long_mode::install(&mut vm.mem);
        Ok(Arc::new(Stage {
            entry: runtime.label("interpreter"),
            vm,
            created: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            vm_pristine: OnceLock::new(),
        }))
    }

    pub(super) fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed)
    }
}

/// MSRs whose state is per VM, not per vCPU: the wall-clock GPA (x86.c kvm_set_msr_common
/// MSR_KVM_WALL_CLOCK(_NEW): kvm->arch.wall_clock) and Hyper-V's partition-wide MSRs (hyperv.c
/// kvm_hv_msr_partition_wide: GUEST_OS_ID, HYPERCALL, REFERENCE_TSC, RESET, the SYNDBG MSRs, and
/// above 0x400000ff CRASH_P0..P4, CRASH_CTL, REENLIGHTENMENT_CONTROL, TSC_EMULATION_*,
/// TSC_INVARIANT_CONTROL; the whole 0x400001xx range is taken, per-vCPU ones included, which only
/// costs a reset). A vCPU that is dropped instead of reset must still put them back, or the next
/// vCPU of the VM would see them (the upstream testbed's campaign found CRASH_P0 leaking).
pub fn vm_scope(index: u32) -> bool {
    matches!(index, 0x11 | 0x4b56_4d00 | 0x4000_0000..=0x4000_01ff)
}

/// What an input did to a pooled vCPU that decides whether and how it can be reset.
#[derive(Default)]
pub(super) struct Usage {
    pub(super) ran: bool,
    /// KVM_SET_CPUID2 succeeded (even with the table the vCPU had).
    pub(super) cpuid_set: bool,
    pub(super) cpuid_changed: bool,
    /// An accepted write whose old value is unknown.
    pub(super) unrecoverable: bool,
    /// An accepted write to a per-VM MSR (`vm_scope`).
    pub(super) vm_scope_written: bool,
    /// MSRs an accepted write changed (stored a value other than the one they held), each once,
    /// sorted (a save/restore's destination can change dozens): without one (and without a CPUID
    /// change) the vCPU is as it was.
    pub(super) changed: InlineVec<u32, 16>,
    /// A write to the x2APIC range retired the VM.
    pub(super) retired_vm: bool,
    /// Old values of written MSRs outside the snapshot, first capture first.
    pub(super) undo: InlineVec<MsrEntry, 16>,
}

impl Usage {
    /// Whether an accepted write of this input changed `index`.
    pub(super) fn was_changed(&self, index: u32) -> bool {
        self.changed.binary_search(&index).is_ok()
    }

    /// Record that an accepted write changed `index`.
    fn note_changed(&mut self, index: u32) {
        if let Err(at) = self.changed.binary_search(&index) {
            self.changed.insert(at, index);
        }
    }

    /// Whether a reset has anything to put back.
    pub(super) fn changed_anything(&self) -> bool {
        !self.changed.is_empty() || self.cpuid_changed
    }
}

/// A vCPU lent to one input.
pub struct PooledVcpu {
    pub vcpu: Vcpu,
    pub(super) stage: Arc<Stage>,
    /// Index-list and feature MSRs with their values at creation (the reset target), sorted by
    /// index.
    pub(super) pristine: Vec<MsrEntry>,
    /// The same values by `MsrTraits::snapshot_slot` (None: not readable at creation): every
    /// entry of every batch asks, a save/restore's destination for each of ~40.
    pub(super) pristine_by_slot: Vec<Option<u64>>,
    /// The CPUID table this vCPU currently has (what a save/restore destination must get).
    pub cpuid: CpuidTable,
    pub(super) usage: Usage,
    /// How many times it was reset for reuse.
    pub(super) resets: u64,
    /// KVM_RUN was called on it, in this input or an earlier one.
    pub(super) ever_ran: bool,
}

impl PooledVcpu {
    /// Whether a write to `index` needs its old value captured first (for the reset): MSRs the
    /// catalogue knows outside the snapshot, not captured yet. An arbitrary index is almost never
    /// implemented, and if KVM does accept a write to one, the vCPU is simply not reused
    /// (`unrecoverable`) -- one ioctl saved per unknown index.
    pub fn needs_old_value(&self, ctx: &Context, index: u32) -> bool {
        self.needs_old_value_of(ctx.traits.get(index), index)
    }

    /// `needs_old_value` of `index`, whose traits are `t`.
    fn needs_old_value_of(&self, t: MsrTraits, index: u32) -> bool {
        t.catalogued
            && self.pristine_value(t).is_none()
            && !self.usage.undo.iter().any(|u| u.index == index)
    }

    /// KVM_SET_MSRS through the pool: the old values of MSRs outside the snapshot are captured
    /// first so a reset can restore them -- from `before` where it read them (the caller's own
    /// read just before, which saves an ioctl), else with a KVM_GET_MSRS here.
    pub fn set_msrs(
        &mut self,
        ctx: &Context,
        entries: &[MsrEntry],
        before: Option<&ReadBefore>,
    ) -> crate::kvm::raw::MsrIo {
        let logged = self.usage.undo.len();
        let mut unknown: InlineVec<u32, 16> = InlineVec::new();
        for e in entries {
            if !self.needs_old_value_of(ctx.traits.get(e.index), e.index)
                || unknown.contains(&e.index)
            {
                continue;
            }
            match before.filter(|b| b.attempted(e.index)) {
                Some(b) => {
                    if let Some(data) = b.value(e.index) {
                        self.usage.undo.push(MsrEntry {
                            index: e.index,
                            data,
                        });
                    }
                }
                None => unknown.push(e.index),
            }
        }
        read_each(&self.vcpu, &unknown, |e| self.usage.undo.push(e));
        let io = self.vcpu.set_msrs(entries);
        let accepted = &entries[..io.result.unwrap_or(0).min(entries.len())];
        // Old values of MSRs the batch did not get to write are not needed (and may not even be
        // writable: a GET can succeed where a SET of the same value fails).
        let mut k = logged;
        while k < self.usage.undo.len() {
            if accepted.iter().any(|e| e.index == self.usage.undo[k].index) {
                k += 1;
            } else {
                self.usage.undo.remove(k);
            }
        }
        for e in accepted {
            let t = ctx.traits.get(e.index);
            if e.index == crate::msr_index::HV_X64_MSR_RESET && e.data == 1 {
                // A pending KVM_REQ_HV_RESET (hyperv.c kvm_hv_set_msr_pw): state no MSR write
                // takes back, so the vCPU is not lent again.
                self.usage.unrecoverable = true;
            }
            if (0x800..=0x8ff).contains(&e.index) {
                self.usage.retired_vm |= !self.stage.retired();
                self.stage.retire();
            } else if self.value_now_of(t, e.index) == Some(e.data) {
                // It already held that value (a save/restore's destination is mostly written
                // so): nothing for a reset to put back. The reset itself writes such values.
                continue;
            }
            self.usage.note_changed(e.index);
            self.usage.vm_scope_written |= vm_scope(e.index);
            let known = self.pristine_value(t).is_some()
                || self.usage.undo.iter().any(|u| u.index == e.index)
                || t.read_fails;
            if !known {
                self.usage.unrecoverable = true;
            }
        }
        io
    }

    /// The value `index` holds now, where the pool knows it: no write of this input changed it,
    /// it does not change on its own, and it is in the snapshot (every input starts from it) or its
    /// old value was captured this input.
    pub(super) fn value_now(&self, ctx: &Context, index: u32) -> Option<u64> {
        self.value_now_of(ctx.traits.get(index), index)
    }

    /// `value_now` of `index`, whose traits are `t`.
    fn value_now_of(&self, t: MsrTraits, index: u32) -> Option<u64> {
        if t.volatile || self.usage.was_changed(index) {
            return None;
        }
        if let Some(data) = self.pristine_value(t) {
            return Some(data);
        }
        self.usage
            .undo
            .iter()
            .find(|u| u.index == index)
            .map(|u| u.data)
    }

    /// The value `index` holds now without asking KVM: the vCPU is as it was taken (verified by
    /// its reset or just created: no accepted write changed a value, no KVM_SET_CPUID2, no
    /// KVM_RUN in this input), `index` is in the snapshot and does not change on its own.
    pub fn known_value(&self, ctx: &Context, index: u32) -> Option<u64> {
        let u = &self.usage;
        if !u.changed.is_empty() || u.cpuid_set || u.ran {
            return None;
        }
        self.value_now(ctx, index)
    }

    /// Read `indices` (any order, duplicates allowed) before a write: values the pool knows
    /// (`known_value`) without an ioctl, the others with `read_each`.
    pub fn read_before(&self, ctx: &Context, indices: &[u32]) -> ReadBefore {
        let mut before = ReadBefore {
            tried: indices.iter().map(|&i| (i, None)).collect(),
        };
        let tried = &mut before.tried;
        tried.sort_unstable_by_key(|&(i, _)| i);
        tried.dedup();
        let mut ask: InlineVec<u32, 16> = InlineVec::new();
        for (i, value) in tried.iter_mut() {
            *value = self.known_value(ctx, *i);
            if value.is_none() {
                ask.push(*i);
            }
        }
        read_each(&self.vcpu, &ask, |e| {
            if let Some(k) = before.find(e.index) {
                before.tried[k].1 = Some(e.data);
            }
        });
        before
    }

    /// The value the MSR with traits `t` had when the vCPU was created, if it is in the snapshot
    /// (which holds the listed and feature MSRs that could be read).
    pub(super) fn pristine_value(&self, t: MsrTraits) -> Option<u64> {
        let slot = usize::from(t.snapshot_slot?);
        self.pristine_by_slot.get(slot).copied().flatten()
    }

    /// KVM_SET_CPUID2 through the pool; returns the errno on failure. On success `table` becomes
    /// the vCPU's `cpuid`.
    pub fn set_cpuid(&mut self, table: CpuidTable) -> std::result::Result<(), Errno> {
        let r = crate::kvm::raw::set_cpuid2(&self.vcpu.fd, &table.entries);
        if r.is_ok() {
            self.usage.cpuid_set = true;
            self.usage.cpuid_changed |= !table.same_entries(&self.cpuid);
            self.cpuid = table;
        }
        r
    }

    /// KVM_RUN of the empty guest program (the interpreter finds no op and signals PORT_DONE).
    /// The registers were set to the interpreter's entry when the vCPU was made, and after
    /// PORT_DONE the runtime reloads rsi and jumps back to its entry, so no KVM_SET_REGS is needed.
    pub fn run_empty(&mut self, timeout: Duration) -> Exit {
        self.usage.ran = true;
        self.ever_ran = true;
        self.vcpu.run(timeout)
    }

    /// KVM_RUN was called on this vCPU (in this input or, for one taken with `may_have_run`, an
    /// earlier one).
    pub fn has_run(&self) -> bool {
        self.ever_ran
    }
}
