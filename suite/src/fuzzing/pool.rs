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
//!   A vCPU that accepted a write whose old value could not be read is never reused.
//! - new vCPUs are created in a shared VM (~0.13 ms instead of ~0.6 ms), up to `VCPUS_PER_VM`, by
//!   a supplier thread, which also destroys dropped ones and does resets while it keeps up.
//! - a successful write to the x2APIC range retires the shared VM: an ICR write sends an IPI to
//!   other vCPUs of the VM (lapic.c kvm_x2apic_icr_write), state no MSR read shows.
//!
//! Every vCPU has a non-zero id so no pooled vCPU is the BSP (APIC_BASE bit 8, x86.c
//! kvm_vcpu_is_reset_bsp; each is made runnable with KVM_SET_MP_STATE). In `Fresh` mode each
//! input gets a new VM with vCPU id 1, the naive baseline, and `host::HostRunner` compares the two
//! modes (oracle `pool-equivalence`).

use crate::checks::Context;
use crate::error::{Error, Result};
use crate::guest::{layout::OPS, long_mode};
use crate::kvm::raw::MsrEntry;
use crate::kvm::{CpuidPolicy, CpuidTable, Exit, KvmSystem, Vcpu, Vm, VmConfig};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Most reset vCPUs that ran kept for reuse (beyond it they are dropped without a reset).
const IDLE_RAN_MAX: usize = 4;

/// vCPUs created in one shared VM before a new one is started (bounds kernel memory).
pub const VCPUS_PER_VM: u64 = 64;

/// A VM with the guest runtime installed, shared by the vCPUs created in it.
pub struct Stage {
    vm: Vm,
    /// Address of the interpreter's entry; OPS holds an empty program (memory starts zeroed).
    entry: u64,
    created: AtomicU64,
    retired: AtomicBool,
    /// Values of the per-VM MSRs (`vm_scope`) in the new VM, read by its first vCPU. Later vCPUs
    /// are created while another vCPU may have changed them, so their reset target comes from here.
    vm_pristine: OnceLock<Vec<MsrEntry>>,
}

// SAFETY: after `Stage::new` nothing in userspace touches the guest memory (only KVM does, for
// the vCPUs' KVM_RUN); through a shared Stage only the VM fd (which kvm-ioctls makes Sync), the
// atomics and the OnceLock are used.
unsafe impl Sync for Stage {}

impl Stage {
    fn new(sys: &KvmSystem) -> Result<Arc<Stage>> {
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

    fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed)
    }
}

/// MSRs whose state is per VM, not per vCPU: the wall-clock GPA (x86.c kvm_set_msr_common
/// MSR_KVM_WALL_CLOCK(_NEW): kvm->arch.wall_clock) and Hyper-V's partition-wide MSRs (hyperv.c
/// kvm_hv_msr_partition_wide). A vCPU that is dropped instead of reset must still put them back,
/// or the next vCPU of the VM would see them.
pub fn vm_scope(index: u32) -> bool {
    matches!(index, 0x11 | 0x4b56_4d00 | 0x4000_0000..=0x4000_00ff)
}

/// What an input did to a pooled vCPU that decides whether and how it can be reset.
#[derive(Default)]
struct Usage {
    ran: bool,
    cpuid_changed: bool,
    /// An accepted write whose old value is unknown.
    unrecoverable: bool,
    /// An accepted write to a per-VM MSR (`vm_scope`).
    vm_scope_written: bool,
    /// MSRs an accepted write changed (stored a value other than the one they held): without one
    /// (and without a CPUID change) the vCPU is as it was.
    changed: BTreeSet<u32>,
    /// A write to the x2APIC range retired the VM.
    retired_vm: bool,
    /// Old values of written MSRs outside the snapshot, first capture first.
    undo: Vec<MsrEntry>,
}

impl Usage {
    /// Whether a reset has anything to put back.
    fn changed_anything(&self) -> bool {
        !self.changed.is_empty() || self.cpuid_changed
    }
}

/// A vCPU lent to one input.
pub struct PooledVcpu {
    pub vcpu: Vcpu,
    stage: Arc<Stage>,
    /// Index-list and feature MSRs with their values at creation (the reset target), sorted by
    /// index.
    pristine: Vec<MsrEntry>,
    /// The CPUID table this vCPU currently has (what a save/restore destination must get).
    pub cpuid: CpuidTable,
    usage: Usage,
    /// How many times it was reset for reuse.
    resets: u64,
    /// KVM_RUN was called on it, in this input or an earlier one.
    ever_ran: bool,
}

impl PooledVcpu {
    /// Whether a write to `index` needs its old value captured first (for the reset): MSRs the
    /// catalogue knows outside the snapshot, not captured yet. An arbitrary index is almost never
    /// implemented, and if KVM does accept a write to one, the vCPU is simply not reused
    /// (`unrecoverable`) -- one ioctl saved per unknown index.
    pub fn needs_old_value(&self, ctx: &Context, index: u32) -> bool {
        self.pristine_value(index).is_none()
            && ctx.catalogue.get(index).is_some()
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
        let mut unknown: Vec<u32> = Vec::new();
        for e in entries {
            if !self.needs_old_value(ctx, e.index) || unknown.contains(&e.index) {
                continue;
            }
            match before.filter(|b| b.attempted(e.index)) {
                Some(b) => {
                    if let Some(&data) = b.values.get(&e.index) {
                        self.usage.undo.push(MsrEntry {
                            index: e.index,
                            data,
                        });
                    }
                }
                None => unknown.push(e.index),
            }
        }
        let old = read_all(&self.vcpu, &unknown);
        self.usage.undo.extend(old);
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
            if (0x800..=0x8ff).contains(&e.index) {
                self.usage.retired_vm |= !self.stage.retired();
                self.stage.retire();
            } else if self.value_now(ctx, e.index) == Some(e.data) {
                // It already held that value (a save/restore's destination is mostly written
                // so): nothing for a reset to put back. The reset itself writes such values.
                continue;
            }
            self.usage.changed.insert(e.index);
            self.usage.vm_scope_written |= vm_scope(e.index);
            let known = self.pristine_value(e.index).is_some()
                || self.usage.undo.iter().any(|u| u.index == e.index)
                || ctx
                    .catalogue
                    .get(e.index)
                    .is_some_and(|m| m.read_fails.is_some());
            if !known {
                self.usage.unrecoverable = true;
            }
        }
        io
    }

    /// The value `index` holds now, where the pool knows it: no write of this input changed it,
    /// it does not change on its own, and it is in the snapshot (every input starts from it) or its
    /// old value was captured this input.
    fn value_now(&self, ctx: &Context, index: u32) -> Option<u64> {
        if self.usage.changed.contains(&index)
            || ctx
                .catalogue
                .get(index)
                .is_some_and(|m| m.volatile.is_some())
        {
            return None;
        }
        if let Some(data) = self.pristine_value(index) {
            return Some(data);
        }
        self.usage
            .undo
            .iter()
            .find(|u| u.index == index)
            .map(|u| u.data)
    }

    /// The value `index` had when the vCPU was created, if it is in the snapshot.
    fn pristine_value(&self, index: u32) -> Option<u64> {
        self.pristine
            .binary_search_by_key(&index, |e| e.index)
            .ok()
            .map(|k| self.pristine[k].data)
    }

    /// KVM_SET_CPUID2 through the pool; returns the errno on failure.
    pub fn set_cpuid(&mut self, table: &CpuidTable) -> std::result::Result<(), i32> {
        let r = self
            .vcpu
            .fd
            .set_cpuid2(&table.to_kvm())
            .map_err(|e| e.errno());
        if r.is_ok() {
            self.usage.cpuid_changed |= table.entries != self.cpuid.entries;
            self.cpuid = table.clone();
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
    /// Resets that failed (the vCPU was dropped), and why the last one did.
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
    fn reset_failed(&mut self, why: String) {
        self.reset_failures += 1;
        self.last_reset_failure = Some(why);
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

/// Makes fresh vCPUs: in a shared VM (`Reuse`) or each in a new VM (`Fresh`).
struct Factory {
    sys: KvmSystem,
    mode: PoolMode,
    stage: Option<Arc<Stage>>,
    cpuid: CpuidTable,
    cpuid_kvm: kvm_bindings::CpuId,
    /// Index-list and feature MSRs: the snapshot a reset restores.
    indices: Vec<u32>,
    /// MSRs the catalogue documents as changing on their own (not compared after a reset).
    volatile: Arc<BTreeSet<u32>>,
}

impl Factory {
    fn create(&mut self) -> Result<PooledVcpu> {
        let stage = match &self.stage {
            Some(s)
                if self.mode == PoolMode::Reuse
                    && !s.retired()
                    && s.created.load(Ordering::Relaxed) < VCPUS_PER_VM =>
            {
                s.clone()
            }
            _ => {
                let s = Stage::new(&self.sys)?;
                self.stage = Some(s.clone());
                s
            }
        };
        let id = stage.created.fetch_add(1, Ordering::Relaxed) + 1;
        // KVM_SET_CPUID2 here rather than through the policy: the pool does not need the
        // KVM_GET_CPUID2 read-back (its expectations are the oracles', not CPUID-gated).
        let vcpu = stage.vm.create_vcpu(id, &CpuidPolicy::Bare)?;
        vcpu.fd.set_cpuid2(&self.cpuid_kvm).map_err(|e| {
            Error::ioctl("KVM_SET_CPUID2 (the supported CPUID, on a pooled vCPU)", e)
        })?;
        // An AP (any vCPU but the BSP) with an in-kernel LAPIC starts waiting for INIT/SIPI
        // (KVM_MP_STATE_UNINITIALIZED); make it runnable as a VMM's SIPI would (api.rst 4.38).
        vcpu.fd
            .set_mp_state(kvm_bindings::kvm_mp_state {
                mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
            })
            .map_err(|e| Error::ioctl("KVM_SET_MP_STATE", e))?;
        long_mode::enter(&vcpu)?;
        vcpu.fd
            .set_regs(&long_mode::entry_regs(stage.entry, OPS))
            .map_err(|e| Error::ioctl("KVM_SET_REGS", e))?;
        // Sorted like `indices` (`PooledVcpu::pristine_value` searches it).
        let mut pristine = read_all(&vcpu, &self.indices);
        let vm_values = stage.vm_pristine.get_or_init(|| {
            pristine
                .iter()
                .filter(|e| vm_scope(e.index))
                .copied()
                .collect()
        });
        for e in pristine.iter_mut() {
            if let Some(v) = vm_values.iter().find(|v| v.index == e.index) {
                e.data = v.data;
            }
        }
        Ok(PooledVcpu {
            vcpu,
            stage,
            pristine,
            cpuid: self.cpuid.clone(),
            usage: Usage::default(),
            resets: 0,
            ever_ran: false,
        })
    }
}

/// A thread that keeps a few fresh vCPUs ready -- new ones, and used ones it has reset -- resets
/// the vCPUs that ran, and destroys the dropped ones, so the fuzzing thread pays for none of it.
/// It uses the same `Factory::create` and `reset` as the synchronous pool. Used vCPUs that wrote
/// a per-VM MSR are reset on the fuzzing thread instead: resetting them here would race with the
/// vCPU of the same VM the next input uses.
struct Supplier {
    ready: mpsc::Receiver<Result<PooledVcpu>>,
    dirty: mpsc::Sender<PooledVcpu>,
    /// vCPUs that ran, to be reset; they come back through `ready_ran` (or why they could not).
    dirty_ran: mpsc::Sender<PooledVcpu>,
    ready_ran: mpsc::Receiver<std::result::Result<PooledVcpu, String>>,
    graveyard: mpsc::Sender<PooledVcpu>,
    failures: Arc<std::sync::Mutex<PoolStats>>,
    /// vCPUs sent to `dirty` or `dirty_ran` and not reset yet.
    backlog: Arc<AtomicUsize>,
}

/// How many fresh vCPUs the supplier keeps ready.
const READY: usize = 8;

/// The supplier thread's side of its channels.
struct SupplierWork {
    factory: Factory,
    ready: mpsc::SyncSender<Result<PooledVcpu>>,
    dirty: mpsc::Receiver<PooledVcpu>,
    dirty_ran: mpsc::Receiver<PooledVcpu>,
    ready_ran: mpsc::Sender<std::result::Result<PooledVcpu, String>>,
    graveyard: mpsc::Receiver<PooledVcpu>,
    failures: Arc<std::sync::Mutex<PoolStats>>,
    backlog: Arc<AtomicUsize>,
}

/// The pool that owned the supplier is gone.
struct Hangup;

impl SupplierWork {
    fn run(mut self) {
        while self.step().is_ok() {}
    }

    fn step(&mut self) -> std::result::Result<(), Hangup> {
        self.bury_and_reset_ran()?;
        let mut next = match self.dirty.try_recv() {
            Ok(mut v) => match self.reset(&mut v) {
                Ok(()) => Ok(v),
                Err(why) => {
                    self.failures
                        .lock()
                        .expect("supplier stats")
                        .reset_failed(why);
                    return Ok(());
                }
            },
            Err(_) => self.factory.create(),
        };
        // While `ready` is full, go on resetting the vCPUs that ran as they come back.
        loop {
            match self.ready.try_send(next) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(Hangup),
                Err(mpsc::TrySendError::Full(n)) => next = n,
            }
            match self.dirty_ran.recv_timeout(Duration::from_millis(1)) {
                Ok(v) => self.reset_ran(v)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Hangup),
            }
            self.bury_and_reset_ran()?;
        }
    }

    fn bury_and_reset_ran(&mut self) -> std::result::Result<(), Hangup> {
        while let Ok(v) = self.graveyard.try_recv() {
            drop(v);
        }
        while let Ok(v) = self.dirty_ran.try_recv() {
            self.reset_ran(v)?;
        }
        Ok(())
    }

    fn reset_ran(&mut self, mut v: PooledVcpu) -> std::result::Result<(), Hangup> {
        let r = self.reset(&mut v).map(|()| v);
        self.ready_ran.send(r).map_err(|_| Hangup)
    }

    fn reset(&mut self, v: &mut PooledVcpu) -> std::result::Result<(), String> {
        let r = reset(v, &self.factory.cpuid, &self.factory.volatile, true);
        self.backlog.fetch_sub(1, Ordering::Relaxed);
        r
    }
}

impl Supplier {
    fn start(factory: Factory) -> Supplier {
        let (ready_tx, ready) = mpsc::sync_channel(READY);
        let (graveyard, dead) = mpsc::channel::<PooledVcpu>();
        let (dirty, used) = mpsc::channel::<PooledVcpu>();
        let (dirty_ran, used_ran) = mpsc::channel::<PooledVcpu>();
        let (ran_tx, ready_ran) = mpsc::channel();
        let failures = Arc::new(std::sync::Mutex::new(PoolStats::default()));
        let backlog = Arc::new(AtomicUsize::new(0));
        let work = SupplierWork {
            backlog: backlog.clone(),
            factory,
            ready: ready_tx,
            dirty: used,
            dirty_ran: used_ran,
            ready_ran: ran_tx,
            graveyard: dead,
            failures: failures.clone(),
        };
        std::thread::Builder::new()
            .name("kvm-msr-vcpu-supplier".into())
            .spawn(move || work.run())
            .expect("spawning the vCPU supplier thread");
        Supplier {
            ready,
            dirty,
            dirty_ran,
            ready_ran,
            graveyard,
            failures,
            backlog,
        }
    }
}

pub struct VcpuPool {
    pub mode: PoolMode,
    factory: Option<Factory>,
    supplier: Option<Supplier>,
    idle: Vec<PooledVcpu>,
    /// Reset vCPUs that have run: for inputs that cannot tell them from fresh ones.
    idle_ran: Vec<PooledVcpu>,
    /// vCPUs that ran, being reset on the supplier thread (with `idle_ran`, at most
    /// `IDLE_RAN_MAX`).
    ran_in_reset: usize,
    default_cpuid: CpuidTable,
    volatile: Arc<BTreeSet<u32>>,
    stats: PoolStats,
}

impl VcpuPool {
    /// A pool; with `background`, fresh vCPUs are made (and dropped ones destroyed) on a thread
    /// of their own.
    pub fn new(ctx: &Context, mode: PoolMode, background: bool) -> Result<VcpuPool> {
        let factory = Factory {
            sys: KvmSystem::open_at(ctx.sys.path())?,
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
            ran_in_reset: 0,
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
    /// `host::tolerates_a_vcpu_that_ran`).
    pub fn take(&mut self, may_have_run: bool) -> Result<PooledVcpu> {
        // (An input that needs a never-run vCPU leaves the ran ones where they are.)
        if may_have_run {
            self.collect_ran();
        }
        while let Some(v) = may_have_run.then(|| self.idle_ran.pop()).flatten() {
            if !v.stage.retired() {
                self.stats.reused_after_run += 1;
                return Ok(v);
            }
            self.stats.dropped.retired_vm += 1;
            self.bury(v);
        }
        while let Some(v) = self.idle.pop() {
            if !v.stage.retired() {
                self.stats.reused += 1;
                return Ok(v);
            }
            self.stats.dropped.retired_vm += 1;
            self.bury(v);
        }
        // (Resets done on the supplier thread come back through `ready`.)
        loop {
            let v = match (&mut self.factory, &self.supplier) {
                (Some(f), _) => f.create()?,
                (None, Some(s)) => match s.ready.try_recv() {
                    Ok(v) => v,
                    Err(_) => {
                        self.stats.waited += 1;
                        s.ready.recv().map_err(|_| Error::Ioctl {
                            what: "the vCPU supplier thread (it stopped)",
                            errno: 0,
                        })?
                    }
                }?,
                (None, None) => unreachable!("a pool has a factory or a supplier"),
            };
            // A vCPU made before its VM was retired is not fresh with respect to it.
            if v.stage.retired() {
                self.bury(v);
                continue;
            }
            if v.resets == 0 {
                self.stats.created += 1;
            } else {
                self.stats.reused += 1;
            }
            return Ok(v);
        }
    }

    /// Whether there is room for `v` after its reset: always for one that never ran; for one that
    /// ran, while fewer than `IDLE_RAN_MAX` are kept or being reset.
    fn keep(&mut self, v: &mut PooledVcpu) -> bool {
        if !v.ever_ran {
            return true;
        }
        self.collect_ran();
        self.idle_ran.len() + self.ran_in_reset < IDLE_RAN_MAX
    }

    /// Keep a reset vCPU for the next input that can use it.
    fn shelve(&mut self, v: PooledVcpu) {
        if v.ever_ran {
            self.idle_ran.push(v);
        } else {
            self.idle.push(v);
        }
    }

    /// Take in the vCPUs that ran which the supplier has reset since the last call.
    fn collect_ran(&mut self) {
        let Some(s) = &self.supplier else { return };
        while let Ok(r) = s.ready_ran.try_recv() {
            self.ran_in_reset -= 1;
            match r {
                Ok(v) => self.idle_ran.push(v),
                Err(why) => self.stats.reset_failed(why),
            }
        }
    }

    /// Destroy a vCPU, on the supplier thread if there is one.
    fn bury(&self, v: PooledVcpu) {
        if let Some(s) = &self.supplier {
            let _ = s.graveyard.send(v);
        }
    }

    /// Take a vCPU back after an input: reset and keep it if it can be made fresh again.
    pub fn give_back(&mut self, mut v: PooledVcpu) {
        self.stats.retired_by_x2apic += u64::from(v.usage.retired_vm);
        if self.mode == PoolMode::Fresh || v.stage.retired() {
            if self.mode == PoolMode::Reuse {
                self.stats.dropped.retired_vm += 1;
            }
            self.bury(v);
            return;
        }
        if v.usage.unrecoverable {
            self.stats.dropped.unrecoverable += 1;
        } else if !self.keep(&mut v) {
            self.stats.dropped.no_room += 1;
        } else {
            if !v.usage.changed_anything() {
                // Host reads and rejected writes change nothing: reusable as it is.
                v.usage = Usage::default();
                v.resets += 1;
                self.shelve(v);
                return;
            }
            // On the supplier thread if there is one and it has caught up (creating vCPUs keeps
            // it busy), except for a vCPU that wrote a per-VM MSR (see `Supplier`); here
            // otherwise.
            if let (Some(s), false) = (&self.supplier, v.usage.vm_scope_written) {
                if s.backlog.load(Ordering::Relaxed) == 0 {
                    // (Counted before the send: the supplier may finish the reset first.)
                    s.backlog.fetch_add(1, Ordering::Relaxed);
                    let ran = v.ever_ran;
                    let sent = if ran {
                        s.dirty_ran.send(v)
                    } else {
                        s.dirty.send(v)
                    };
                    match sent {
                        Ok(()) => self.ran_in_reset += usize::from(ran),
                        // The supplier stopped; the vCPU goes with the channel.
                        Err(_) => {
                            s.backlog.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    return;
                }
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

    /// The counters, including resets done on the supplier thread.
    pub fn stats(&self) -> PoolStats {
        let mut st = self.stats.clone();
        if let Some(s) = &self.supplier {
            let f = s.failures.lock().expect("supplier stats");
            st.reset_failures += f.reset_failures;
            if f.last_reset_failure.is_some() {
                st.last_reset_failure = f.last_reset_failure.clone();
            }
        }
        st
    }
}

/// The MSRs of `indices` a host read succeeds for, with their values: one KVM_GET_MSRS, and
/// past an entry that fails, the rest again.
pub fn read_all(vcpu: &Vcpu, indices: &[u32]) -> Vec<MsrEntry> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let io = vcpu.get_msrs(rest);
        let n = io.result.unwrap_or(0).min(rest.len());
        out.extend_from_slice(&io.entries[..n]);
        // Skip the entry that failed.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    out
}

/// Values read just before a write: which indices were tried (sorted) and what those that could be
/// read held.
pub struct ReadBefore {
    attempted: Vec<u32>,
    pub values: std::collections::BTreeMap<u32, u64>,
}

impl ReadBefore {
    /// Read `indices` (any order, duplicates allowed) with `read_all`.
    pub fn read(vcpu: &Vcpu, indices: &[u32]) -> ReadBefore {
        let mut attempted = indices.to_vec();
        attempted.sort_unstable();
        attempted.dedup();
        let values = read_all(vcpu, &attempted)
            .into_iter()
            .map(|e| (e.index, e.data))
            .collect();
        ReadBefore { attempted, values }
    }

    /// `index` was read (successfully or not).
    pub fn attempted(&self, index: u32) -> bool {
        self.attempted.binary_search(&index).is_ok()
    }
}

/// Put the per-VM MSRs back to the values the VM had when it was new; true if they read back so.
fn restore_vm_scope(v: &PooledVcpu) -> bool {
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
fn reads_back(
    v: &PooledVcpu,
    want: &[MsrEntry],
    volatile: &BTreeSet<u32>,
) -> std::result::Result<(), String> {
    let idx: Vec<u32> = want.iter().map(|e| e.index).collect();
    let io = v.vcpu.get_msrs(&idx);
    if io.result != Ok(want.len()) {
        return Err(format!(
            "KVM_GET_MSRS of the reset MSRs returned {:?} of {}",
            io.result,
            want.len()
        ));
    }
    for (a, b) in want.iter().zip(&io.entries) {
        if a.data != b.data && !volatile.contains(&a.index) {
            return Err(format!(
                "MSR {:#x} reads {:#x} after being reset to {:#x}",
                a.index, b.data, a.data
            ));
        }
    }
    Ok(())
}

/// Make a vCPU that never ran fresh again: default CPUID, the old values of MSRs outside the
/// snapshot (last write first), then the snapshot; verified by reading everything back. With
/// `skip_vm_scope` the per-VM MSRs are left alone (the vCPU did not write them, and another
/// vCPU of the VM may be using them right now).
fn reset(
    v: &mut PooledVcpu,
    default_cpuid: &CpuidTable,
    volatile: &BTreeSet<u32>,
    skip_vm_scope: bool,
) -> std::result::Result<(), String> {
    // Host reads and rejected writes change nothing (a rejected write that changed state would
    // be a KVM bug the `pool-equivalence` oracle reports).
    if v.usage.changed_anything() {
        if v.usage.cpuid_changed {
            v.vcpu
                .fd
                .set_cpuid2(&default_cpuid.to_kvm())
                .map_err(|e| format!("KVM_SET_CPUID2 of the default table: errno {}", e.errno()))?;
            v.cpuid = default_cpuid.clone();
        }
        let keep = |e: &&MsrEntry| !(skip_vm_scope && vm_scope(e.index));
        let want: Vec<MsrEntry> = v
            .usage
            .undo
            .iter()
            .rev()
            .chain(v.pristine.iter())
            .filter(keep)
            .copied()
            .collect();
        let io = v.vcpu.set_msrs(&want);
        if io.result != Ok(want.len()) {
            let n = io.result.unwrap_or(0);
            return Err(format!(
                "KVM_SET_MSRS of the reset values stopped at #{n} ({:x?})",
                want.get(n)
            ));
        }
        let expect: Vec<MsrEntry> = v
            .pristine
            .iter()
            .chain(&v.usage.undo)
            .filter(keep)
            .copied()
            .collect();
        reads_back(v, &expect, volatile)?;
    }
    v.usage = Usage::default();
    v.resets += 1;
    Ok(())
}

/// Pin the calling thread to one CPU (sched_setaffinity), as AFL++ binds its fuzzers to free
/// cores: every vCPU ioctl loads the vCPU on the calling CPU (kvm_arch_vcpu_load), which costs
/// more after a migration. Call it after creating the pool, so the supplier thread (which inherits
/// the affinity of the thread that spawns it) stays free to run on the other CPUs.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (cpu is checked
    // against its capacity first); sched_setaffinity(0, ..) reads it and affects only this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
