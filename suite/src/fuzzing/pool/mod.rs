//! vCPU reuse for the `host` target. A fresh VM and vCPU cost ~0.6 ms on a nested host, which
//! caps a naive target near 1,000 inputs/s; most inputs only need a vCPU *in the state of a fresh
//! one*. The pool gives each input such a vCPU:
//!
//! - a vCPU that never ran is taken back after an input and reset: KVM_SET_CPUID2 back to the
//!   default table if the input changed it, then KVM_SET_MSRS of the values it had when it was
//!   created (every index-list and feature MSR, plus the old value of any other MSR the input
//!   wrote, captured before the write). This is how QEMU emulates RESET ("userspace blindly
//!   stuffs all MSRs", x86.c do_set_msr). The reset is then verified by reading everything back;
//!   a vCPU that does not read back as it was is dropped, not reused. An input whose accepted
//!   writes all stored the value the MSR already held (as the reset itself does) needs no reset.
//! - a vCPU that ran is reset the same way but kept apart: its CPUID and immutable feature MSRs
//!   are frozen (semantics §1.11), so it only serves inputs that do nothing before their first
//!   KVM_RUN that could tell (`host::tolerates_a_vcpu_that_ran`); an input whose first KVM_RUN
//!   would otherwise cost a never-run vCPU's first entry (~87 us on PVM, the MMU's setup) gets it.
//!   A vCPU that accepted a write whose old value could not be read is never reused, nor one with
//!   a reset request pending (a write of 1 to HV_X64_MSR_RESET).
//! - new vCPUs are created in a shared VM (~0.13 ms instead of ~0.6 ms), up to `VCPUS_PER_VM`, by
//!   a supplier thread, which also resets used vCPUs and destroys dropped ones (a VM's last one on
//!   a reaper thread); the pool posts it that work without waking it (see `Supplier`), and
//!   keeps enough vCPUs that never ran in circulation that it need not wait for their resets
//!   (`NEVER_RAN_STOCK`). A vCPU that wrote a per-VM MSR is reset on the
//!   fuzzing thread.
//! - while an input has changed nothing yet (no accepted write stored a new value, no
//!   KVM_SET_CPUID2, no KVM_RUN), the values of snapshot MSRs are the snapshot's, which its reset
//!   verified: a write deriving its value from the current one needs no read for them
//!   (`PooledVcpu::known_value`).
//! - a successful write to the x2APIC range retires the shared VM: an ICR write sends an IPI to
//!   other vCPUs of the VM (lapic.c kvm_x2apic_icr_write), state no MSR read shows.
//!
//! Every vCPU has a non-zero id so no pooled vCPU is the BSP (APIC_BASE bit 8, x86.c
//! kvm_vcpu_is_reset_bsp; each is made runnable with KVM_SET_MP_STATE). In `Fresh` mode each
//! input gets a new VM with vCPU id 1, the naive baseline, and `host::HostRunner` compares the two
//! modes (oracle `pool-equivalence`).
//!
//! Files: `vcpu` (a lent vCPU and what an input did to it), `supplier` (where fresh vCPUs come
//! from: the factory and the supplier thread), `reset` (making a used vCPU fresh again and
//! proving it), and here the pool that ties them together.

// A pooled vCPU travels boxed (`Box<PooledVcpu>`, in vectors too): it is ~600 bytes, and the
// pool and the supplier move each several times per input.
#![allow(clippy::vec_box)]

mod reset;
mod supplier;
mod vcpu;

pub use reset::{read_all, read_each, ReadBefore};
pub use vcpu::{vm_scope, PooledVcpu, Stage};

use reset::{reset, restore_vm_scope};
use supplier::{Chore, Factory, Supplier, Supply};
use vcpu::Usage;

use crate::error::{Error, Result};
use crate::kvm::{CpuidTable, KvmSystem};
use crate::session::Context;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Most reset vCPUs that ran kept for reuse (beyond it they are dropped without a reset).
const IDLE_RAN_MAX: usize = 4;

/// How many vCPUs that never ran the pool keeps in circulation (ready, or on their way back from
/// a reset) when a supplier thread resets them: below it an input gets a new vCPU rather than a
/// reset one. Most inputs need a vCPU that never ran, and those that changed an MSR go to the
/// supplier for their reset; the stock only grew when none was ready, so at times all of them
/// were with the supplier and the fuzzing thread waited. On the nested test host (host target,
/// 30 s from the seeds): 7-8 % of the fuzzing thread's time waiting without a stock, 3-4 % with
/// this one, under 1 % once the supplier also stopped destroying VMs itself (`supplier`).
const NEVER_RAN_STOCK: usize = 32;

/// vCPUs created in one shared VM before a new one is started (bounds kernel memory).
pub const VCPUS_PER_VM: u64 = 64;

use crate::msr_index::HV_X64_MSR_VP_INDEX;

/// Where the pool's vCPUs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Reset and reuse vCPUs; new ones in a shared VM.
    Reuse,
    /// A new VM and vCPU for every request: the naive baseline.
    Fresh,
}

/// Counters a campaign can print to see how the pool behaves.
#[derive(Clone, Debug, Default)]
pub struct PoolStats {
    pub created: u64,
    pub reused: u64,
    /// Reused vCPUs that had run (for inputs that cannot tell).
    pub reused_after_run: u64,
    /// Resets that failed (the vCPU was dropped), and why the last one did (its message).
    pub reset_failures: u64,
    pub last_reset_failure: Option<String>,
    /// Takes that found no vCPU ready and waited for the supplier thread.
    pub waited: u64,
    /// Resets done on the fuzzing thread (not the supplier's), of vCPUs that never ran / ran.
    pub reset_here: [u64; 2],
    /// vCPUs dropped, by reason (besides `reset_failures`).
    pub dropped: Drops,
    /// VMs retired by a write to the x2APIC range.
    pub retired_by_x2apic: u64,
}

impl PoolStats {
    fn reset_failed(&mut self, why: Error) {
        self.reset_failures += 1;
        self.last_reset_failure = Some(why.to_string());
    }
}

/// Why the pool dropped vCPUs (each drop makes the supplier create one more).
#[derive(Clone, Debug, Default)]
pub struct Drops {
    /// Their VM was retired.
    pub retired_vm: u64,
    /// An accepted write whose old value is unknown.
    pub unrecoverable: u64,
    /// A vCPU that ran, with `IDLE_RAN_MAX` already kept.
    pub no_room: u64,
}

pub struct VcpuPool {
    pub mode: PoolMode,
    factory: Option<Factory>,
    supplier: Option<Supplier>,
    /// Reset vCPUs that never ran.
    idle: Vec<Box<PooledVcpu>>,
    /// Reset vCPUs that have run: for inputs that cannot tell them from fresh ones.
    idle_ran: Vec<Box<PooledVcpu>>,
    /// New vCPUs from the supplier, oldest first (used after the reset ones).
    new: std::collections::VecDeque<Box<PooledVcpu>>,
    /// vCPUs being reset on the supplier thread, of those that never ran / ran (with `idle_ran`,
    /// at most `IDLE_RAN_MAX` of the latter).
    in_reset: [usize; 2],
    /// Why the supplier could not make a vCPU, for the next `take` to return.
    failed: Option<Error>,
    default_cpuid: CpuidTable,
    volatile: Arc<BTreeSet<u32>>,
    stats: PoolStats,
}

impl VcpuPool {
    /// A pool; with `background`, fresh vCPUs are made, used ones reset and dropped ones
    /// destroyed on a thread of their own.
    pub fn new(ctx: &Context, mode: PoolMode, background: bool) -> Result<VcpuPool> {
        let sys = KvmSystem::open_at(ctx.sys().path())?;
        let run_area = sys.vcpu_mmap_size().map_err(|errno| Error::Ioctl {
            what: "KVM_GET_VCPU_MMAP_SIZE",
            errno,
        })?;
        let factory = Factory {
            sys,
            run_area,
            mode,
            stage: None,
            cpuid: ctx.facts.supported_cpuid.clone(),
            cpuid_kvm: ctx.facts.supported_cpuid.to_kvm(),
            indices: ctx
                .facts
                .msr_index_list
                .iter()
                .chain(&ctx.facts.msr_feature_index_list)
                .copied()
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect(),
            volatile: Arc::new(
                ctx.catalogue
                    .msrs
                    .values()
                    .filter(|m| m.volatile.is_some())
                    .map(|m| m.index)
                    .collect(),
            ),
        };
        // A vCPU's snapshot is looked up by the slot the context's traits give an MSR.
        let numbered =
            |(k, &i): (usize, &u32)| ctx.traits.get(i).snapshot_slot == u16::try_from(k).ok();
        if !factory.indices.iter().enumerate().all(numbered) {
            return Err(Error::Internal(
                "the context's MSR traits do not number the listed and feature MSRs as the pool's snapshot does",
            ));
        }
        let volatile = factory.volatile.clone();
        let (factory, supplier) = if background {
            (None, Some(Supplier::start(factory)))
        } else {
            (Some(factory), None)
        };
        Ok(VcpuPool {
            mode,
            factory,
            supplier,
            idle: Vec::new(),
            idle_ran: Vec::new(),
            new: Default::default(),
            in_reset: [0; 2],
            failed: None,
            default_cpuid: ctx.facts.supported_cpuid.clone(),
            volatile,
            stats: PoolStats::default(),
        })
    }

    /// The CPUID table every vCPU starts with (KVM_GET_SUPPORTED_CPUID).
    pub fn default_cpuid(&self) -> &CpuidTable {
        &self.default_cpuid
    }

    /// A vCPU in the state of a freshly created one; with `may_have_run`, possibly one that has
    /// run before and was reset (same MSR values, default CPUID) -- for an input that does nothing
    /// before its first KVM_RUN that KVM answers differently once a vCPU has run (see
    /// `host::tolerates_a_vcpu_that_ran`). Reset vCPUs first, new ones after.
    pub fn take(&mut self, may_have_run: bool) -> Result<Box<PooledVcpu>> {
        loop {
            self.collect(false);
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            // (An input that needs a never-run vCPU leaves the ran ones where they are.)
            // (A new vCPU before a reset one while the stock of those that never ran is low.)
            let grow = self.supplier.is_some() && self.never_ran_stock() < NEVER_RAN_STOCK;
            type Counter = fn(&mut PoolStats) -> &mut u64;
            let next: Option<(Box<PooledVcpu>, Counter)> =
                if let Some(v) = may_have_run.then(|| self.idle_ran.pop()).flatten() {
                    Some((v, |s| &mut s.reused_after_run))
                } else if let Some(v) = grow.then(|| self.take_new()).flatten() {
                    Some((v, |s| &mut s.created))
                } else if let Some(v) = self.idle.pop() {
                    Some((v, |s| &mut s.reused))
                } else if let Some(v) = self.take_new() {
                    Some((v, |s| &mut s.created))
                } else {
                    None
                };
            if let Some((v, counter)) = next {
                if self.usable(&v) {
                    *counter(&mut self.stats) += 1;
                    return Ok(v);
                }
                self.bury(v);
                continue;
            }
            match &mut self.factory {
                Some(f) => {
                    self.stats.created += 1;
                    return f.create();
                }
                None => {
                    // Wake a supplier asleep because it had nothing to do when it last looked.
                    if let Some(s) = &self.supplier {
                        s.wake();
                    }
                    self.stats.waited += 1;
                    self.collect(true);
                }
            }
        }
    }

    /// The oldest new vCPU the supplier sent, if any.
    fn take_new(&mut self) -> Option<Box<PooledVcpu>> {
        let v = self.new.pop_front()?;
        if let Some(s) = &self.supplier {
            s.unclaimed.fetch_sub(1, Ordering::Relaxed);
        }
        Some(v)
    }

    /// vCPUs that never ran and will be ready for an input again: reset, or being reset.
    fn never_ran_stock(&self) -> usize {
        self.idle.len() + self.in_reset[0]
    }

    /// Not made stale by its VM's retirement (a vCPU made or reset before its VM was retired is
    /// not fresh with respect to it); counted as dropped if it is.
    fn usable(&mut self, v: &PooledVcpu) -> bool {
        let stale = v.stage.retired();
        self.stats.dropped.retired_vm += u64::from(stale);
        !stale
    }

    /// Take in what the supplier has finished since the last call; with `wait`, at least one.
    /// A failure to make a vCPU (or a supplier that stopped) is kept for the next `take`.
    fn collect(&mut self, wait: bool) {
        let Some(s) = &self.supplier else { return };
        if !wait && s.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        let first = if wait {
            match s.supply.recv() {
                Ok(supply) => Some(supply),
                Err(_) => {
                    self.failed
                        .get_or_insert(Error::Internal("the vCPU supplier thread stopped"));
                    None
                }
            }
        } else {
            None
        };
        if let Some(supply) = first {
            self.take_supply(supply);
        }
        while let Some(supply) = self
            .supplier
            .as_ref()
            .and_then(|s| s.supply.try_recv().ok())
        {
            self.take_supply(supply);
        }
    }

    /// One thing the supplier finished.
    fn take_supply(&mut self, supply: Supply) {
        if let Some(s) = &self.supplier {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        match supply {
            Supply::New(Ok(v)) => self.new.push_back(v),
            Supply::New(Err(e)) => {
                if let Some(s) = &self.supplier {
                    s.unclaimed.fetch_sub(1, Ordering::Relaxed);
                }
                self.failed.get_or_insert(e);
            }
            Supply::Reset { ran, result } => {
                self.in_reset[usize::from(ran)] -= 1;
                match result {
                    Ok(v) => self.shelve(v),
                    Err(why) => self.stats.reset_failed(why),
                }
            }
        }
    }

    /// Whether there is room for `v` after its reset: always for one that never ran; for one that
    /// ran, while fewer than `IDLE_RAN_MAX` are kept or being reset.
    fn keep(&mut self, v: &PooledVcpu) -> bool {
        !v.ever_ran || self.idle_ran.len() + self.in_reset[1] < IDLE_RAN_MAX
    }

    /// Keep a reset vCPU for the next input that can use it.
    fn shelve(&mut self, v: Box<PooledVcpu>) {
        if v.ever_ran {
            self.idle_ran.push(v);
        } else {
            self.idle.push(v);
        }
    }

    /// Destroy a vCPU, on the supplier thread if there is one.
    fn bury(&mut self, v: Box<PooledVcpu>) {
        if let Some(s) = &self.supplier {
            s.post(Chore::Bury(v));
        }
    }

    /// Take a vCPU back after an input: reset and keep it if it can be made fresh again.
    pub fn give_back(&mut self, mut v: Box<PooledVcpu>) {
        self.stats.retired_by_x2apic += u64::from(v.usage.retired_vm);
        if self.mode == PoolMode::Fresh || v.stage.retired() {
            if self.mode == PoolMode::Reuse {
                self.stats.dropped.retired_vm += 1;
            }
            self.bury(v);
            return;
        }
        // (What the supplier has reset so far counts for the room left.)
        self.collect(false);
        if v.usage.unrecoverable {
            self.stats.dropped.unrecoverable += 1;
        } else if !self.keep(&v) {
            self.stats.dropped.no_room += 1;
        } else {
            if !v.usage.changed_anything() {
                // Host reads and rejected writes change nothing: reusable as it is.
                v.usage = Usage::default();
                v.resets += 1;
                self.shelve(v);
                return;
            }
            // On the supplier thread if there is one, except for a vCPU that wrote a per-VM MSR
            // (see `Supplier`).
            if let Some(s) = self.supplier.as_ref().filter(|_| !v.usage.vm_scope_written) {
                self.in_reset[usize::from(v.ever_ran)] += 1;
                s.post(Chore::Reset(v));
                return;
            }
            // A vCPU whose CPUID or feature MSRs an input changed before running cannot be reset
            // (KVM refuses the default values now) and is dropped.
            let volatile = self.volatile.clone();
            self.stats.reset_here[usize::from(v.ever_ran)] += 1;
            match reset(&mut v, &self.default_cpuid, &volatile, false) {
                Ok(()) => {
                    self.shelve(v);
                    return;
                }
                Err(why) => self.stats.reset_failed(why),
            }
        }
        // Dropped. Per-VM state it changed goes back, or the VM is retired (an unrecoverable
        // write may have been the per-VM one).
        if v.usage.vm_scope_written && (v.usage.unrecoverable || !restore_vm_scope(&v)) {
            v.stage.retire();
        }
        self.bury(v);
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.stats.clone()
    }
}

/// Pin the calling thread to one CPU (sched_setaffinity), as AFL++ binds its fuzzers to free
/// cores: every vCPU ioctl loads the vCPU on the calling CPU (kvm_arch_vcpu_load), which costs
/// more after a migration. Call `keep_off_cpu` first and create the pool in between, so the
/// supplier and reaper threads (which inherit the affinity of the thread that spawns them) run on
/// the other CPUs and never take this one from the fuzzing thread.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    set_current_affinity(|c| c == cpu)
}

/// Take `cpu` out of the CPUs the calling thread may run on (a no-op if it is the only one left).
pub fn keep_off_cpu(cpu: usize) -> std::io::Result<()> {
    let allowed = current_affinity()?;
    if (0..CPU_SET_BITS).any(|c| c != cpu && allowed(c)) {
        set_current_affinity(|c| c != cpu && allowed(c))?;
    }
    Ok(())
}

/// CPUs a `cpu_set_t` can name.
const CPU_SET_BITS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// The CPUs the calling thread may run on (sched_getaffinity).
fn current_affinity() -> std::io::Result<impl Fn(usize) -> bool> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity(0, ..) fills it for the
    // calling thread and writes nothing else.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads bit `c` of the set, `c` checked against its size first.
    Ok(move |c: usize| c < CPU_SET_BITS && unsafe { libc::CPU_ISSET(c, &set) })
}

/// Let the calling thread run on the CPUs `allowed` names (sched_setaffinity).
fn set_current_affinity(allowed: impl Fn(usize) -> bool) -> std::io::Result<()> {
    if !(0..CPU_SET_BITS).any(&allowed) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let cpus: Vec<usize> = (0..CPU_SET_BITS).filter(|&c| allowed(c)).collect();
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes bits below its size inside it;
    // sched_setaffinity(0, ..) reads it and affects only this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in &cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
