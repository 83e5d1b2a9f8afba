//! Where fresh vCPUs come from: the `Factory` (a shared VM or a new VM each) and the `Supplier`
//! thread that creates, resets and destroys vCPUs off the fuzzing thread.

// A pooled vCPU travels boxed (`Box<PooledVcpu>`, in vectors too): it is ~600 bytes, and the
// pool and the supplier move each several times per input.
#![allow(clippy::vec_box)]

use super::*;
use crate::error::{Error, Result};
use crate::guest::{layout::OPS, long_mode};
use crate::kvm::{CpuidPolicy, CpuidTable, KvmSystem};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Makes fresh vCPUs: in a shared VM (`Reuse`) or each in a new VM (`Fresh`).
pub(super) struct Factory {
    pub(super) sys: KvmSystem,
    pub(super) mode: PoolMode,
    pub(super) stage: Option<Arc<Stage>>,
    pub(super) cpuid: CpuidTable,
    pub(super) cpuid_kvm: kvm_bindings::CpuId,
    /// Index-list and feature MSRs: the snapshot a reset restores.
    pub(super) indices: Vec<u32>,
    /// MSRs the catalogue documents as changing on their own (not compared after a reset).
    pub(super) volatile: Arc<BTreeSet<u32>>,
    /// KVM_GET_VCPU_MMAP_SIZE, for `Vcpu::prefault_run_area`.
    pub(super) run_area: usize,
}

impl Factory {
    pub(super) fn create(&mut self) -> Result<Box<PooledVcpu>> {
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
        let mut vcpu = stage.vm.create_vcpu(id, &CpuidPolicy::Bare)?;
        // Here, on the supplier thread when there is one, rather than in the first KVM_RUN's
        // caller (the fuzzing thread): the page faults of a never-run vCPU's kvm_run mapping.
        vcpu.prefault_run_area(self.run_area);
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
        if self.indices.contains(&HV_X64_MSR_VP_INDEX) {
            vcpu.try_set_msr("pool: KVM_SET_MSRS (value 0)", HV_X64_MSR_VP_INDEX, 0)?;
        }
        long_mode::enter(&vcpu)?;
        vcpu.fd
            .set_regs(&long_mode::entry_regs(stage.entry, OPS))
            .map_err(|e| Error::ioctl("KVM_SET_REGS", e))?;
        // Sorted like `indices`.
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
        // `indices` is the listed and feature MSRs in index order: a position there is the MSR's
        // `MsrTraits::snapshot_slot`.
        let mut pristine_by_slot = vec![None; self.indices.len()];
        for e in pristine.iter() {
            if let Ok(slot) = self.indices.binary_search(&e.index) {
                pristine_by_slot[slot] = Some(e.data);
            }
        }
        Ok(Box::new(PooledVcpu {
            vcpu,
            stage,
            pristine,
            pristine_by_slot,
            cpuid: self.cpuid.clone(),
            usage: Usage::default(),
            resets: 0,
            ever_ran: false,
        }))
    }
}

/// A thread that resets used vCPUs, keeps a few new ones ready and destroys the dropped ones, so
/// the fuzzing thread pays for none of it. It uses the same `Factory::create` and `reset` as the
/// synchronous pool. It does one piece of work at a time, the most urgent first (`step`). Used
/// vCPUs that wrote a per-VM MSR are reset on the fuzzing thread instead: resetting them here would
/// race with the vCPU of the same VM the next input uses.
///
/// The pool posts work to a mailbox (`post`) without waking the supplier: a futex wake-up of a
/// sleeping thread costs the waker ~8 us on the nested test host (the IPI to an idle vCPU), about
/// as much as the reset it hands over, and with a channel the fuzzing thread paid one every four
/// or five inputs (1-2 % of its time). Now the supplier, when it has nothing to do, sleeps `POLL`
/// and looks again (longer while it keeps finding nothing, up to `POLL_IDLE_MAX`); only a pool
/// with nothing ready for an input wakes it (`wake`). The pool's stock of never-run vCPUs covers
/// the milliseconds a reset may wait. (An earlier supplier that polled continuously, spinning or
/// in sleeps of microseconds, made the fuzzing thread 20-50 % slower: the sibling vCPU of the
/// nested host stayed busy. A 1-ms look while idle does not: replaying a fixed corpus of 4,046
/// inputs, wake-ups fell from 2 us to 0.4 us per input and the floor fraction rose by ~1.5 points,
/// four alternations each; with the idle back-off the fuzzing thread's waits stayed at ~1 %.)
///
/// The vCPU whose destruction takes its VM with it (the last one of a VM: kvm_destroy_vm destroys
/// all `VCPUS_PER_VM` vCPUs, 3-7 ms on the nested test host) goes to a reaper thread of the lowest
/// priority: behind such a destruction the fuzzing thread waited for resets it needed, ~1 ms per
/// wait, 3-4 % of its time even with the pool's stock of never-run vCPUs; with the reaper, under
/// 1 %.
pub(super) struct Supplier {
    /// New and reset vCPUs, in the order the supplier finished them.
    pub(super) supply: mpsc::Receiver<Supply>,
    mailbox: Arc<Mailbox>,
    thread: std::thread::Thread,
    /// New vCPUs sent and not yet taken by an input.
    pub(super) unclaimed: Arc<AtomicUsize>,
    /// Supplies sent and not received yet (counted before the send): the pool looks at the
    /// channel only when there is something in it, as a `try_recv` of an empty channel costs
    /// ~600 instructions and the pool looks twice per input.
    pub(super) in_flight: Arc<AtomicUsize>,
}

/// Work for the supplier.
pub(super) enum Chore {
    /// Reset this used vCPU and send it back.
    Reset(Box<PooledVcpu>),
    /// Destroy this vCPU.
    Bury(Box<PooledVcpu>),
}

/// Work handed to the supplier and not taken in yet, and whether the pool is gone.
#[derive(Default)]
struct Mailbox {
    chores: Mutex<Vec<Chore>>,
    closed: AtomicBool,
}

/// What the supplier sends back.
pub(super) enum Supply {
    New(Result<Box<PooledVcpu>>),
    /// A used vCPU after its reset (whether it had run, and why the reset failed if it did).
    Reset {
        ran: bool,
        result: Result<Box<PooledVcpu>>,
    },
}

/// How many new vCPUs the supplier keeps ready.
pub(super) const READY: usize = 8;

/// Most VMs waiting for the reaper; past it the supplier waits for the reaper (bounds the kernel
/// memory of VMs not destroyed yet: each holds its `VCPUS_PER_VM` vCPUs until kvm_destroy_vm).
/// 16, not 4: the reaper runs only on an idle CPU, and with 4 the supplier blocked behind it often
/// enough that the fuzzing thread waited for vCPUs 1.3 % of its time; with 16, 0.5-0.9 % (A/B,
/// two 45-s runs of `host` each on the 2-core host: floor fraction 88.5-89.0 % -> 89.7 %).
const REAPER_QUEUE: usize = 16;

/// Most vCPUs waiting for their burial: past it burials come before new vCPUs (a pool that takes
/// new vCPUs faster than the supplier makes them, like the fresh-VM reference pool of a campaign
/// that compares every input, would otherwise keep them all open until it runs out of fds).
const GRAVES_MAX: usize = 16;

/// The supplier thread's side of the supply channel and the mailbox, and the work it has taken in
/// and not done yet.
pub(super) struct SupplierWork {
    pub(super) factory: Factory,
    pub(super) supply: mpsc::Sender<Supply>,
    mailbox: Arc<Mailbox>,
    pub(super) unclaimed: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    /// Used vCPUs waiting for their reset, those that never ran first (most inputs need one).
    resets: VecDeque<Box<PooledVcpu>>,
    /// vCPUs waiting to be destroyed.
    graves: Vec<Box<PooledVcpu>>,
    /// The last vCPUs of their VMs, to the reaper thread.
    reaper: mpsc::SyncSender<Box<PooledVcpu>>,
    /// How long the next sleep lasts while there is nothing to do (`POLL`, doubling up to
    /// `POLL_IDLE_MAX` while nothing comes).
    sleep: Duration,
}

/// The pool that owned the supplier is gone.
pub(super) struct Hangup;

impl SupplierWork {
    fn send(&self, supply: Supply) -> std::result::Result<(), Hangup> {
        self.in_flight.fetch_add(1, Ordering::Release);
        self.supply.send(supply).map_err(|_| Hangup)
    }

    pub(super) fn run(mut self) {
        while self.step().is_ok() {}
    }

    /// Do one piece of work, the most urgent first: a reset (it makes a vCPU available for two or
    /// three ioctls), then a new vCPU while fewer than `READY` are unclaimed (and fewer than
    /// `GRAVES_MAX` wait for their burial), then a burial; sleep when there is nothing to do. One
    /// piece at a time, so work handed over meanwhile is seen before the next.
    pub(super) fn step(&mut self) -> std::result::Result<(), Hangup> {
        if self.mailbox.closed.load(Ordering::Acquire) {
            return Err(Hangup);
        }
        self.take_in_mail();
        let nothing_to_do = self.resets.is_empty()
            && self.graves.is_empty()
            && self.unclaimed.load(Ordering::Relaxed) >= READY;
        if nothing_to_do {
            std::thread::park_timeout(self.sleep);
            self.sleep = (2 * self.sleep).min(POLL_IDLE_MAX);
            return Ok(());
        }
        self.sleep = POLL;
        if let Some(mut v) = self.resets.pop_front() {
            let ran = v.ever_ran;
            let result =
                reset(&mut v, &self.factory.cpuid, &self.factory.volatile, true).map(|()| v);
            return self.send(Supply::Reset { ran, result });
        }
        if self.unclaimed.load(Ordering::Relaxed) < READY && self.graves.len() < GRAVES_MAX {
            // (Counted before the send: the pool may take it first.)
            self.unclaimed.fetch_add(1, Ordering::Relaxed);
            let new = self.factory.create();
            return self.send(Supply::New(new));
        }
        if let Some(v) = self.graves.pop() {
            // Only this vCPU still holds its VM (the factory holds the current one): dropping it
            // destroys the VM. (A vCPU of that VM the pool still holds only delays this to the
            // burial of the last one.)
            if Arc::strong_count(&v.stage) == 1 {
                self.reaper.send(v).map_err(|_| Hangup)?;
            }
        }
        Ok(())
    }

    /// Take in the work posted since the last look (the mailbox keeps its storage).
    fn take_in_mail(&mut self) {
        let mut mail = self
            .mailbox
            .chores
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for chore in mail.drain(..) {
            match chore {
                Chore::Reset(v) if v.ever_ran => self.resets.push_back(v),
                Chore::Reset(v) => self.resets.push_front(v),
                Chore::Bury(v) => self.graves.push(v),
            }
        }
    }
}

/// The reaper thread: destroys the VMs it is sent, at the lowest priority (SCHED_IDLE), so the
/// milliseconds each takes are spent where neither the fuzzing thread nor the supplier needs the
/// CPU.
fn start_reaper() -> mpsc::SyncSender<Box<PooledVcpu>> {
    let (reaper, graves) = mpsc::sync_channel::<Box<PooledVcpu>>(REAPER_QUEUE);
    std::thread::Builder::new()
        .name("kvm-msr-vm-reaper".into())
        .spawn(move || {
            set_own_policy(libc::SCHED_IDLE);
            for last_vcpu_of_a_vm in graves {
                drop(last_vcpu_of_a_vm);
            }
        })
        .expect("spawning the VM reaper thread");
    reaper
}

/// Make the calling thread a background one (SCHED_BATCH or SCHED_IDLE, sched(7)): a helper
/// thread woken by the fuzzing thread must not take that thread's CPU from it. Under the default
/// policy a wake-up may preempt the waker (the scheduler places the wakee on the waker's CPU and
/// favours it), and on the 2-CPU nested test host the fuzzing thread lost 2.6-3.9 % of its time
/// waiting on the run queue, ~360 preemptions a second (/proc/<tid>/schedstat). With the
/// supplier SCHED_BATCH (never preempts on wake-up) and the reaper SCHED_IDLE (runs only on a
/// CPU nothing else wants): 1.7 % and ~245, and exec/s +6-11 % (A/B of 30-s soaks of `host`).
/// Neither policy needs a privilege. Failure leaves the default policy, which is only slower.
fn set_own_policy(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(0, ..) changes the policy of the calling thread (on Linux a pid
    // of 0 is the caller, and policies are per thread); it reads `param`, which lives across the
    // call, and writes no memory.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

impl Supplier {
    pub(super) fn start(factory: Factory) -> Supplier {
        let (supply_tx, supply) = mpsc::channel();
        let mailbox = Arc::new(Mailbox::default());
        let unclaimed = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let work = SupplierWork {
            factory,
            supply: supply_tx,
            mailbox: mailbox.clone(),
            unclaimed: unclaimed.clone(),
            in_flight: in_flight.clone(),
            resets: VecDeque::new(),
            graves: Vec::new(),
            reaper: start_reaper(),
            sleep: POLL,
        };
        let thread = std::thread::Builder::new()
            .name("kvm-msr-vcpu-supplier".into())
            .spawn(move || {
                set_own_policy(libc::SCHED_BATCH);
                work.run()
            })
            .expect("spawning the vCPU supplier thread")
            .thread()
            .clone();
        Supplier {
            supply,
            mailbox,
            thread,
            unclaimed,
            in_flight,
        }
    }

    /// Hand one piece of work over. The supplier is not woken for it: it finds the work when it
    /// next looks, at once if busy, within `POLL` if it just went to sleep, `POLL_IDLE_MAX` if it
    /// has slept for a while.
    pub(super) fn post(&self, chore: Chore) {
        self.mailbox
            .chores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(chore);
    }

    /// Wake the supplier if it sleeps (for a pool that has no vCPU ready for an input).
    pub(super) fn wake(&self) {
        self.thread.unpark();
    }
}

impl Drop for Supplier {
    fn drop(&mut self) {
        self.mailbox.closed.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// How long the supplier sleeps when it has nothing to do before it looks at its mailbox again
/// (and at how many new vCPUs the pool has taken).
const POLL: Duration = Duration::from_millis(1);

/// The longest sleep of a supplier that keeps finding nothing to do (the fresh-VM reference pool's,
/// used for one input in 64): 250 looks a second rather than 1,000.
const POLL_IDLE_MAX: Duration = Duration::from_millis(4);
