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
//!   a supplier thread, which also resets used vCPUs and destroys dropped ones; the pool hands it
//!   that work in batches (see `Supplier`). A vCPU that wrote a per-VM MSR is reset on the
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

use crate::error::{Error, Result};
use crate::guest::{layout::OPS, long_mode};
use crate::kvm::raw::MsrEntry;
use crate::kvm::{CpuidPolicy, CpuidTable, Exit, KvmSystem, Vcpu, Vm, VmConfig};
use crate::session::msr_traits::MsrTraits;
use crate::session::Context;
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

/// HV_X64_MSR_VP_INDEX (Hyper-V TLFS): the vCPU's virtual processor index.
const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;

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
struct Usage {
    ran: bool,
    /// KVM_SET_CPUID2 succeeded (even with the table the vCPU had).
    cpuid_set: bool,
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
        let t = ctx.traits.get(index);
        t.catalogued
            && self.pristine_value(t, index).is_none()
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
            if e.index == crate::msr_index::HV_X64_MSR_RESET && e.data == 1 {
                // A pending KVM_REQ_HV_RESET (hyperv.c kvm_hv_set_msr_pw): state no MSR write
                // takes back, so the vCPU is not lent again.
                self.usage.unrecoverable = true;
            }
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
            let t = ctx.traits.get(e.index);
            let known = self.pristine_value(t, e.index).is_some()
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
    fn value_now(&self, ctx: &Context, index: u32) -> Option<u64> {
        let t = ctx.traits.get(index);
        if t.volatile || self.usage.changed.contains(&index) {
            return None;
        }
        if let Some(data) = self.pristine_value(t, index) {
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
    /// (`known_value`) without an ioctl, the others with `read_all`.
    pub fn read_before(&self, ctx: &Context, indices: &[u32]) -> ReadBefore {
        let mut attempted = indices.to_vec();
        attempted.sort_unstable();
        attempted.dedup();
        let mut values = std::collections::BTreeMap::new();
        let mut ask = Vec::new();
        for &i in &attempted {
            match self.known_value(ctx, i) {
                Some(data) => {
                    values.insert(i, data);
                }
                None => ask.push(i),
            }
        }
        values.extend(
            read_all(&self.vcpu, &ask)
                .into_iter()
                .map(|e| (e.index, e.data)),
        );
        ReadBefore { attempted, values }
    }

    /// The value `index` (with traits `t`) had when the vCPU was created, if it is in the
    /// snapshot (which holds the listed and feature MSRs that could be read).
    fn pristine_value(&self, t: MsrTraits, index: u32) -> Option<u64> {
        if !t.in_lists() {
            return None;
        }
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
            self.usage.cpuid_set = true;
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
        // HV_X64_MSR_VP_INDEX starts at the vCPU's index in its VM (hyperv.c kvm_hv_vcpu_init:
        // vp_index = vcpu_idx), 0 for a fresh VM's only vCPU: give a pooled vCPU that value, as
        // a VMM may (a host write sets it), so it looks like a fresh one (pool-equivalence).
        if self.indices.contains(&HV_X64_MSR_VP_INDEX) && !vcpu.set_msr(HV_X64_MSR_VP_INDEX, 0) {
            return Err(Error::Usage(
                "pool: KVM_SET_MSRS of HV_X64_MSR_VP_INDEX = 0 was rejected".into(),
            ));
        }
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

/// A thread that resets used vCPUs, keeps a few new ones ready and destroys the dropped ones, so
/// the fuzzing thread pays for none of it. It uses the same `Factory::create` and `reset` as the
/// synchronous pool. Resets come first (two ioctls each, and they make a vCPU available); new
/// vCPUs are made while fewer than `READY` are unclaimed. Used vCPUs that wrote a per-VM MSR are
/// reset on the fuzzing thread instead: resetting them here would race with the vCPU of the same
/// VM the next input uses.
///
/// The pool hands work over in batches (`Chores`, `BATCH` vCPUs): a send to the supplier while it
/// sleeps costs the fuzzing thread a futex wake-up and, on a nested host, an IPI -- about as much
/// as the reset it hands over. (A supplier that polls instead, spinning or in short sleeps, made
/// the fuzzing thread slower on the nested test host, by 20-50 %.)
struct Supplier {
    /// New and reset vCPUs, in the order the supplier finished them.
    supply: mpsc::Receiver<Supply>,
    chores: mpsc::Sender<Chores>,
    /// New vCPUs sent and not yet taken by an input.
    unclaimed: Arc<AtomicUsize>,
}

/// Work for the supplier: vCPUs to reset and vCPUs to destroy.
#[derive(Default)]
struct Chores {
    reset: Vec<PooledVcpu>,
    bury: Vec<PooledVcpu>,
}

impl Chores {
    fn len(&self) -> usize {
        self.reset.len() + self.bury.len()
    }
}

/// What the supplier sends back.
enum Supply {
    New(Result<PooledVcpu>),
    /// A used vCPU after its reset (whether it had run, and why the reset failed if it did).
    Reset {
        ran: bool,
        result: std::result::Result<PooledVcpu, String>,
    },
}

/// How many new vCPUs the supplier keeps ready.
const READY: usize = 8;

/// How many vCPUs the pool collects for the supplier before it hands them over.
const BATCH: usize = 4;

/// The supplier thread's side of its channels.
struct SupplierWork {
    factory: Factory,
    supply: mpsc::Sender<Supply>,
    chores: mpsc::Receiver<Chores>,
    unclaimed: Arc<AtomicUsize>,
}

/// The pool that owned the supplier is gone.
struct Hangup;

impl SupplierWork {
    fn run(mut self) {
        while self.step().is_ok() {}
    }

    fn step(&mut self) -> std::result::Result<(), Hangup> {
        let chores = if self.unclaimed.load(Ordering::Relaxed) < READY {
            match self.chores.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return Err(Hangup),
            }
        } else {
            // Enough new ones ready: sleep until there is work (the pool also sends when it runs
            // out; the timeout is a backstop).
            match self.chores.recv_timeout(Duration::from_millis(10)) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Hangup),
            }
        };
        let Some(chores) = chores else {
            // (Counted before the send: the pool may take it first.)
            self.unclaimed.fetch_add(1, Ordering::Relaxed);
            return self
                .supply
                .send(Supply::New(self.factory.create()))
                .map_err(|_| Hangup);
        };
        for mut v in chores.reset {
            let ran = v.ever_ran;
            let result =
                reset(&mut v, &self.factory.cpuid, &self.factory.volatile, true).map(|()| v);
            self.supply
                .send(Supply::Reset { ran, result })
                .map_err(|_| Hangup)?;
        }
        drop(chores.bury);
        Ok(())
    }
}

impl Supplier {
    fn start(factory: Factory) -> Supplier {
        let (supply_tx, supply) = mpsc::channel();
        let (chores, todo) = mpsc::channel::<Chores>();
        let unclaimed = Arc::new(AtomicUsize::new(0));
        let work = SupplierWork {
            factory,
            supply: supply_tx,
            chores: todo,
            unclaimed: unclaimed.clone(),
        };
        std::thread::Builder::new()
            .name("kvm-msr-vcpu-supplier".into())
            .spawn(move || work.run())
            .expect("spawning the vCPU supplier thread");
        Supplier {
            supply,
            chores,
            unclaimed,
        }
    }
}

pub struct VcpuPool {
    pub mode: PoolMode,
    factory: Option<Factory>,
    supplier: Option<Supplier>,
    /// Reset vCPUs that never ran.
    idle: Vec<PooledVcpu>,
    /// Reset vCPUs that have run: for inputs that cannot tell them from fresh ones.
    idle_ran: Vec<PooledVcpu>,
    /// New vCPUs from the supplier, oldest first (used after the reset ones).
    new: std::collections::VecDeque<PooledVcpu>,
    /// vCPUs being reset on the supplier thread, of those that never ran / ran (with `idle_ran`,
    /// at most `IDLE_RAN_MAX` of the latter).
    in_reset: [usize; 2],
    /// Why the supplier could not make a vCPU, for the next `take` to return.
    failed: Option<Error>,
    /// Work collected for the supplier, not handed over yet.
    chores: Chores,
    default_cpuid: CpuidTable,
    volatile: Arc<BTreeSet<u32>>,
    stats: PoolStats,
}

impl VcpuPool {
    /// A pool; with `background`, fresh vCPUs are made, used ones reset and dropped ones
    /// destroyed on a thread of their own.
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
            new: Default::default(),
            in_reset: [0; 2],
            failed: None,
            chores: Chores::default(),
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
    pub fn take(&mut self, may_have_run: bool) -> Result<PooledVcpu> {
        loop {
            self.collect(false);
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            // (An input that needs a never-run vCPU leaves the ran ones where they are.)
            type Counter = fn(&mut PoolStats) -> &mut u64;
            let next: Option<(PooledVcpu, Counter)> =
                if let Some(v) = may_have_run.then(|| self.idle_ran.pop()).flatten() {
                    Some((v, |s| &mut s.reused_after_run))
                } else if let Some(v) = self.idle.pop() {
                    Some((v, |s| &mut s.reused))
                } else if let Some(v) = self.new.pop_front() {
                    if let Some(s) = &self.supplier {
                        s.unclaimed.fetch_sub(1, Ordering::Relaxed);
                    }
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
                    // Whatever work is collected goes over now; the send also wakes a supplier
                    // asleep because enough new vCPUs were unclaimed when it last looked.
                    self.hand_over();
                    self.stats.waited += 1;
                    self.collect(true);
                }
            }
        }
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
        let unclaimed = s.unclaimed.clone();
        let mut got = Vec::new();
        if wait {
            match s.supply.recv() {
                Ok(supply) => got.push(supply),
                Err(_) => {
                    self.failed.get_or_insert(Error::Ioctl {
                        what: "the vCPU supplier thread (it stopped)",
                        errno: 0,
                    });
                }
            }
        }
        got.extend(s.supply.try_iter());
        for supply in got {
            match supply {
                Supply::New(Ok(v)) => self.new.push_back(v),
                Supply::New(Err(e)) => {
                    unclaimed.fetch_sub(1, Ordering::Relaxed);
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
    }

    /// Whether there is room for `v` after its reset: always for one that never ran; for one that
    /// ran, while fewer than `IDLE_RAN_MAX` are kept or being reset.
    fn keep(&mut self, v: &PooledVcpu) -> bool {
        !v.ever_ran || self.idle_ran.len() + self.in_reset[1] < IDLE_RAN_MAX
    }

    /// Keep a reset vCPU for the next input that can use it.
    fn shelve(&mut self, v: PooledVcpu) {
        if v.ever_ran {
            self.idle_ran.push(v);
        } else {
            self.idle.push(v);
        }
    }

    /// Destroy a vCPU, on the supplier thread if there is one.
    fn bury(&mut self, v: PooledVcpu) {
        if self.supplier.is_some() {
            self.chores.bury.push(v);
            self.hand_over_batch();
        }
    }

    /// Hand the collected work to the supplier once there is a batch of it.
    fn hand_over_batch(&mut self) {
        if self.chores.len() >= BATCH {
            self.hand_over();
        }
    }

    /// Hand the collected work to the supplier. (If it stopped, the vCPUs go with the channel
    /// and the next `take` says so.)
    fn hand_over(&mut self) {
        let chores = std::mem::take(&mut self.chores);
        if let Some(s) = &self.supplier {
            let _ = s.chores.send(chores);
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
            if self.supplier.is_some() && !v.usage.vm_scope_written {
                self.in_reset[usize::from(v.ever_ran)] += 1;
                self.chores.reset.push(v);
                self.hand_over_batch();
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

/// Values just before a write (`PooledVcpu::read_before`): which indices were tried (sorted) and
/// what those that could be read held.
pub struct ReadBefore {
    attempted: Vec<u32>,
    pub values: std::collections::BTreeMap<u32, u64>,
}

impl ReadBefore {
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
