//! The `host` target: sequences of host operations on one vCPU -- KVM_SET_MSRS / KVM_GET_MSRS
//! batches, KVM_SET_CPUID2 variations, KVM_RUN in between, and save/restore into a fresh vCPU --
//! checked by the oracles in `oracles::msr_io`. vCPUs come from a `VcpuPool`; every
//! `equivalence_every`-th input is also run on a brand-new VM and the two traces must agree
//! (oracle `pool-equivalence`: results do not depend on what earlier inputs did).

use super::pool::{PoolMode, PooledVcpu, ReadBefore, VcpuPool};
use super::{confine, harness_violation, msr_class, Features};
use crate::guest::layout::PORT_DONE;
use crate::inline_vec::InlineVec;
use crate::kvm::raw::{self, MsrEntry, MsrOp};
use crate::kvm::{CpuidTable, Errno, Exit};
use crate::oracles::msr_io::{self as o, BatchOrder, RepeatedReads, SENTINEL};
use crate::oracles::Violation;
use crate::session::ids::{CHANGED_BY_RUN_WHERE_RECORDED, SAME_CPUID_AFTER_RUN};
use crate::session::Context;
use std::time::Duration;

mod decode;
pub(super) mod input;
pub use input::{
    decode_host, CpuidChoice, HostEntry, HostIndex, HostInput, HostOp, HostValue, MAX_HOST_ENTRIES,
    MAX_HOST_OPS,
};

/// What one operation observed, minus what legitimately differs between two fresh vCPUs: values
/// of MSRs the catalogue documents as volatile, and the id-derived x2APIC ID and LDR (SDM vol. 3A
/// 12.12.5.1), are left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obs {
    Set { accepted: usize },
    Read(Vec<(u32, Option<u64>)>),
    Cpuid(Result<(), Errno>),
    Run,
    Saved(usize),
}

/// x2APIC ID and logical destination: derived from the vCPU id in x2APIC mode.
const ID_DERIVED: &[u32] = &[0x802, 0x80d];

fn visible(ctx: &Context, index: u32, value: u64) -> (u32, Option<u64>) {
    let hidden = ID_DERIVED.contains(&index) || ctx.traits.get(index).volatile;
    (index, (!hidden).then_some(value))
}

/// The value `e` writes; `current` holds the values before the batch (0 where unreadable).
fn resolve(ctx: &Context, current: &ReadBefore, e: &HostEntry) -> MsrEntry {
    let index = e.index.resolve(ctx);
    let current = || current.value(index).unwrap_or(0);
    let data = match e.value {
        HostValue::Pick(c) => c.resolve(),
        HostValue::FlipCurrent(b) => current() ^ (1u64 << (b % 64)),
        HostValue::ReservedBit(b) => {
            current() | (1u64 << reserved_bit(ctx.traits.get(index).reserved_mask, b))
        }
        HostValue::Current => current(),
    };
    MsrEntry {
        index,
        data: confine(index, data),
    }
}

/// The bit a `ReservedBit(b)` sets: the (b mod popcount)-th set bit of the catalogue's reserved
/// mask, counting from bit 0, or bit b mod 64 where the catalogue documents none.
fn reserved_bit(mask: u64, b: u8) -> u32 {
    if mask == 0 {
        return u32::from(b % 64);
    }
    // Clear the lowest k set bits; the lowest left is the k-th.
    let mut m = mask;
    for _ in 0..u32::from(b) % mask.count_ones() {
        m &= m - 1;
    }
    m.trailing_zeros()
}

/// Whether `input` may start on a vCPU that ran in an earlier input and was reset: KVM treats a
/// vCPU that has run differently only for KVM_SET_CPUID2 (cpuid.c kvm_set_cpuid) and writes to
/// immutable feature MSRs (x86.c do_set_msr), so an input that does neither before its first
/// KVM_RUN (nor a save/restore, whose source would differ) cannot tell. The `pool-equivalence`
/// oracle checks that claim against fresh VMs.
pub fn tolerates_a_vcpu_that_ran(ctx: &Context, input: &HostInput) -> bool {
    for op in input.ops.iter().take(MAX_HOST_OPS) {
        match op {
            HostOp::Run => return true,
            HostOp::SetCpuid(_) | HostOp::SaveRestore => return false,
            HostOp::Set(es) => {
                if es
                    .iter()
                    .take(MAX_HOST_ENTRIES)
                    .any(|e| ctx.traits.get(e.index.resolve(ctx)).feature)
                {
                    return false;
                }
            }
            HostOp::Get(_) => {}
        }
    }
    true
}

/// What the oracles here look up once for a campaign rather than at every operation: what this
/// host's deviation records change in them (a lookup compares check ids, ~1 us per input), and the
/// order a save/restore's reads are remembered in.
#[derive(Clone, Debug)]
pub struct Lookups {
    /// KVM_SET_CPUID2 of the identical table after KVM_RUN is refused (the check
    /// SAME_CPUID_AFTER_RUN measures it, and fails once the deviation disappears).
    same_cpuid_refused: bool,
    /// MSRs KVM_RUN changes on this host (CHANGED_BY_RUN_WHERE_RECORDED).
    changed_by_run: Vec<u32>,
    /// A save/restore reads every listed MSR, in the list's order: the order `RepeatedReads`
    /// files them in, sorted once here instead of at every save/restore.
    save_order: BatchOrder,
}

impl Lookups {
    pub fn of(ctx: &Context) -> Lookups {
        let key = crate::deviations::HostKey::of(&ctx.facts);
        let recorded = |check| ctx.deviations.find(check, key).is_some();
        let volatile = |i: u32| ctx.traits.get(i).volatile;
        Lookups {
            same_cpuid_refused: recorded(&SAME_CPUID_AFTER_RUN),
            changed_by_run: CHANGED_BY_RUN_WHERE_RECORDED
                .iter()
                .filter(|(_, check)| recorded(check))
                .map(|(index, _)| *index)
                .collect(),
            save_order: BatchOrder::of(ctx.facts.msr_index_list.iter().copied(), volatile),
        }
    }
}

/// One input's run on one lent vCPU: what the handlers of its operations share.
struct HostRun<'a> {
    ctx: &'a Context,
    lookups: &'a Lookups,
    /// Whether the input has called KVM_RUN on its vCPU: what a fresh vCPU would have done,
    /// which the oracles and the feedback go by (a pooled vCPU may have run in an earlier input).
    ran: bool,
    /// A write of 1 to HV_X64_MSR_RESET is pending (the next KVM_RUN reports the reset).
    reset_requested: bool,
    reads: RepeatedReads,
    feats: &'a mut Features,
    /// Whether to keep the trace: only an input `pool-equivalence` compares needs it.
    keep_trace: bool,
    trace: Vec<Obs>,
}

impl HostRun<'_> {
    fn record(&mut self, o: Obs) {
        if self.keep_trace {
            self.trace.push(o);
        }
    }

    /// KVM_SET_MSRS of a batch, then the accepted MSRs read back.
    fn set(&mut self, v: &mut PooledVcpu, es: &[HostEntry]) -> Result<(), Violation> {
        let ctx = self.ctx;
        let volatile = |i: u32| ctx.traits.get(i).volatile;
        let es = &es[..es.len().min(MAX_HOST_ENTRIES)];
        // One read before the write: the current values the entries' values derive
        // from, the old values the pool captures for its reset, and after KVM_RUN the
        // feature MSRs' values (immutable then).
        let wanted: InlineVec<u32, MAX_HOST_ENTRIES> = es
            .iter()
            .map(|e| e.index.resolve(ctx))
            .zip(es)
            .filter(|(i, e)| {
                !matches!(e.value, HostValue::Pick(_))
                    || v.needs_old_value(ctx, *i)
                    || (self.ran && ctx.traits.get(*i).feature)
            })
            .map(|(i, _)| i)
            .collect();
        let current = v.read_before(ctx, &wanted);
        let entries: InlineVec<MsrEntry, MAX_HOST_ENTRIES> =
            es.iter().map(|e| resolve(ctx, &current, e)).collect();
        let io = v.set_msrs(ctx, &entries, Some(&current));
        let n = o::msr_io_count(&io)?;
        if self.ran {
            o::feature_msrs_immutable(
                |i| ctx.traits.get(i).feature,
                &entries[..n],
                |i| current.value(i),
            )?;
        }
        o::set_batch_stopper_rejected(&v.vcpu, &entries, n)?;
        // hyperv.c kvm_hv_set_msr_pw HV_X64_MSR_RESET: 'if (data == 1)
        // kvm_make_request(KVM_REQ_HV_RESET, vcpu)', host writes included: the next
        // KVM_RUN ends in KVM_EXIT_SYSTEM_EVENT (reset) instead of running the guest.
        self.reset_requested |= entries[..n]
            .iter()
            .any(|e| e.index == crate::msr_index::HV_X64_MSR_RESET && e.data == 1);
        self.reads.forget();
        self.record(Obs::Set { accepted: n });
        for (k, e) in entries.iter().enumerate() {
            let state = u32::from(k < n) + 2 * u32::from(k == n);
            self.feats
                .add(&[10, msr_class(ctx, e.index), state, u32::from(self.ran)]);
        }
        // Read the accepted MSRs back, each once, in index order. Value profile: how many bits
        // of the last value written to each differ from what reads back (0 = stored as written).
        let accepted = &entries[..n];
        let mut idx: InlineVec<u32, MAX_HOST_ENTRIES> = accepted.iter().map(|e| e.index).collect();
        idx.sort_unstable();
        idx.dedup();
        let last = |index: u32| {
            accepted
                .iter()
                .rev()
                .find(|e| e.index == index)
                .map_or(0, |e| e.data)
        };
        let mut seen = Vec::new();
        // (Nothing accepted: nothing to read back, and no ioctl for it.)
        if !idx.is_empty() {
            let back = v.vcpu.get_msrs(&idx);
            let m = o::msr_io_count(&back)?;
            for e in &back.entries()[..m] {
                self.reads
                    .observe(volatile, e.index, e.data, "after KVM_SET_MSRS")?;
                let diff = (last(e.index) ^ e.data).count_ones();
                self.feats.add(&[11, msr_class(ctx, e.index), diff]);
                if self.keep_trace {
                    seen.push(visible(ctx, e.index, e.data));
                }
            }
        }
        self.record(Obs::Read(seen));
        Ok(())
    }

    /// KVM_GET_MSRS of a batch: a prefix is processed, the rest untouched; repeated reads agree.
    fn get(&mut self, v: &PooledVcpu, ix: &[HostIndex]) -> Result<(), Violation> {
        let ctx = self.ctx;
        let volatile = |i: u32| ctx.traits.get(i).volatile;
        let entries: InlineVec<MsrEntry, MAX_HOST_ENTRIES> = ix
            .iter()
            .take(MAX_HOST_ENTRIES)
            .map(|i| MsrEntry {
                index: i.resolve(ctx),
                data: SENTINEL,
            })
            .collect();
        let io = raw::msr_io(&v.vcpu, MsrOp::Get, &entries, entries.len() as u32);
        let n = o::msr_io_count(&io)?;
        o::get_batch_untouched(&io, n)?;
        let mut seen = Vec::new();
        for (k, e) in io.entries().iter().enumerate() {
            let state = u32::from(k < n) + 2 * u32::from(k == n);
            self.feats.add(&[
                12,
                msr_class(ctx, e.index),
                state,
                u32::from(k < n && e.data == 0),
            ]);
            if k < n {
                self.reads
                    .observe(volatile, e.index, e.data, "repeated KVM_GET_MSRS")?;
                if self.keep_trace {
                    seen.push(visible(ctx, e.index, e.data));
                }
            }
        }
        self.record(Obs::Read(seen));
        Ok(())
    }

    /// KVM_SET_CPUID2: after KVM_RUN only the same table is accepted.
    fn set_cpuid(
        &mut self,
        v: &mut PooledVcpu,
        default_cpuid: &CpuidTable,
        c: &CpuidChoice,
    ) -> Result<(), Violation> {
        let table = c.table(default_cpuid);
        // Bits KVM owns at run time do not make a table different after KVM_RUN.
        let same = table.same_but_runtime_bits(&v.cpuid);
        let r = v.set_cpuid(table);
        if let Err(e) = r {
            o::SET_CPUID2.check(e)?;
        }
        // A backend with a recorded deviation refuses the identical table too.
        let same_refused = self.lookups.same_cpuid_refused;
        if self.ran && r.is_ok() != same && !(same && same_refused) {
            return Err(Violation {
                oracle: "cpuid-frozen-after-run",
                msr: None,
                expected: format!(
                    "KVM_SET_CPUID2 after KVM_RUN to {} a {} table (cpuid.c kvm_set_cpuid: kvm_cpuid_check_equal)",
                    if same { "accept" } else { "refuse with EINVAL" },
                    if same { "identical" } else { "different" }
                ),
                actual: format!("{r:?}"),
            });
        }
        self.reads.forget();
        self.feats.add(&[
            13,
            u32::from(self.ran),
            u32::from(same),
            Errno::number(r.err()) as u32,
        ]);
        self.record(Obs::Cpuid(r));
        Ok(())
    }

    /// KVM_RUN of the empty guest program: it completes (or reports a requested reset).
    fn run(&mut self, v: &mut PooledVcpu) -> Result<(), Violation> {
        let exit = v.run_empty(Duration::from_secs(5));
        let done = matches!(&exit, Exit::IoOut { port, .. } if *port == PORT_DONE);
        let reset = matches!(&exit, Exit::SystemEvent { kind } if *kind == kvm_bindings::KVM_SYSTEM_EVENT_RESET);
        if reset && std::mem::take(&mut self.reset_requested) {
            // The requested reset, reported to userspace; the guest did not run.
            self.feats.add(&[14, 1]);
            self.record(Obs::Run);
            return Ok(());
        }
        if !done {
            return Err(Violation {
                oracle: "guest-alive",
                msr: None,
                expected: "the empty guest program to complete".into(),
                actual: exit.to_string(),
            });
        }
        self.ran = true;
        for &index in &self.lookups.changed_by_run {
            self.reads.forget_index(index);
        }
        self.feats.add(&[14]);
        self.record(Obs::Run);
        Ok(())
    }

    /// Save every listed MSR, give the vCPU back, restore into a vCPU that never ran: it reads
    /// the same. Returns the destination, which the rest of the input uses.
    fn save_restore(
        &mut self,
        pool: &mut VcpuPool,
        v: Box<PooledVcpu>,
    ) -> Result<Box<PooledVcpu>, Violation> {
        let ctx = self.ctx;
        let volatile = |i: u32| ctx.traits.get(i).volatile;
        let list = &ctx.facts.msr_index_list;
        let saved = v.vcpu.get_msrs(list);
        let n = o::msr_io_count(&saved)?;
        if n != list.len() {
            return Err(Violation {
                oracle: "save-restore-equal",
                msr: list.get(n).copied(),
                expected: format!("the source to read all {} listed MSRs", list.len()),
                actual: format!("KVM_GET_MSRS stopped at entry #{n}"),
            });
        }
        // The source goes back first, as on a migration the source VM is gone: the
        // destination may be a vCPU of the same VM, and the per-VM MSRs (wall clock)
        // must end up with the restored values, not the source's reset ones.
        let source_cpuid = v.cpuid.clone();
        let source_ran = self.ran;
        pool.give_back(v);
        // The destination is a vCPU that never ran, as on a migration.
        let mut v = pool.take(false).map_err(harness_violation)?;
        self.ran = false;
        let dest = &mut v;
        if !dest.cpuid.same_entries(&source_cpuid) {
            if let Err(e) = dest.set_cpuid(source_cpuid) {
                return Err(Violation {
                    oracle: "save-restore-equal",
                    msr: None,
                    expected: "the destination to accept the source's CPUID".into(),
                    actual: format!("KVM_SET_CPUID2 errno {e}"),
                });
            }
        }
        let restore = dest.set_msrs(ctx, saved.entries(), None);
        let back = dest.vcpu.get_msrs(list);
        o::save_restore_equal(volatile, saved.entries(), &restore, &back)?;
        let order = &self.lookups.save_order;
        self.reads
            .observe_in_order(volatile, order, saved.entries(), "saved")?;
        self.feats.add(&[15, u32::from(source_ran)]);
        self.record(Obs::Saved(n));
        Ok(v)
    }
}

/// Run one input on a vCPU from `pool`: the trace of what it observed, or the first violated
/// oracle, the oracles following this host's deviation records (`Lookups::of`). With
/// `keep_trace` the trace holds what every operation observed (for `pool-equivalence`); without,
/// it is empty.
pub fn run_host(
    ctx: &Context,
    lookups: &Lookups,
    pool: &mut VcpuPool,
    input: &HostInput,
    feats: &mut Features,
    keep_trace: bool,
) -> Result<Vec<Obs>, Violation> {
    let mut v = pool
        .take(tolerates_a_vcpu_that_ran(ctx, input))
        .map_err(harness_violation)?;
    let mut run = HostRun {
        ctx,
        lookups,
        ran: false,
        reset_requested: false,
        reads: RepeatedReads::default(),
        feats,
        keep_trace,
        trace: Vec::new(),
    };
    for op in input.ops.iter().take(MAX_HOST_OPS) {
        match op {
            HostOp::Set(es) => run.set(&mut v, es)?,
            HostOp::Get(ix) => run.get(&v, ix)?,
            HostOp::SetCpuid(c) => run.set_cpuid(&mut v, pool.default_cpuid(), c)?,
            HostOp::Run => run.run(&mut v)?,
            HostOp::SaveRestore => v = run.save_restore(pool, v)?,
        }
    }
    pool.give_back(v);
    Ok(run.trace)
}

/// The state of a campaign: the pool, the fresh-VM reference and how often to compare them.
pub struct HostRunner {
    pub pool: VcpuPool,
    pub reference: VcpuPool,
    /// Run every n-th input on a fresh VM too (0: never).
    pub equivalence_every: u64,
    inputs: u64,
    lookups: Lookups,
}

impl HostRunner {
    /// `background`: fresh vCPUs for the pool come from a supplier thread (see `pool`).
    pub fn new(
        ctx: &Context,
        mode: PoolMode,
        equivalence_every: u64,
        background: bool,
    ) -> crate::Result<HostRunner> {
        Ok(HostRunner {
            pool: VcpuPool::new(ctx, mode, background && mode == PoolMode::Reuse)?,
            reference: VcpuPool::new(ctx, PoolMode::Fresh, background && mode == PoolMode::Reuse)?,
            equivalence_every,
            inputs: 0,
            lookups: Lookups::of(ctx),
        })
    }

    /// How many inputs `run` has seen.
    pub fn inputs(&self) -> u64 {
        self.inputs
    }

    /// Run `input`; on every `equivalence_every`-th input also on a fresh VM, and compare.
    pub fn run(
        &mut self,
        ctx: &Context,
        input: &HostInput,
        feats: &mut Features,
    ) -> Result<(), Violation> {
        self.inputs += 1;
        let due = self.equivalence_every != 0
            && self.pool.mode == PoolMode::Reuse
            && self.inputs % self.equivalence_every == 0;
        let pooled = run_host(ctx, &self.lookups, &mut self.pool, input, feats, due);
        if !due {
            return pooled.map(|_| ());
        }
        let fresh = run_host(
            ctx,
            &self.lookups,
            &mut self.reference,
            input,
            &mut Features::default(),
            true,
        );
        match (&pooled, &fresh) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (Err(a), Err(b)) if a.oracle == b.oracle && a.msr == b.msr => pooled.map(|_| ()),
            _ => Err(Violation {
                oracle: "pool-equivalence",
                msr: None,
                expected: format!("what a fresh VM observes: {fresh:?}"),
                actual: format!("on a reused vCPU: {pooled:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bit_is_the_nth_set_bit_of_the_mask() {
        let naive = |mask: u64, b: u8| -> u32 {
            let k = u32::from(b) % mask.count_ones();
            (0..64)
                .filter(|i| mask & (1 << i) != 0)
                .nth(k as usize)
                .unwrap()
        };
        for mask in [
            1u64,
            0x8000_0000_0000_0000,
            0xffff_ffff_0000_0000,
            0x0000_0f00_0000_06ff,
            u64::MAX,
        ] {
            for b in 0..=255u8 {
                assert_eq!(
                    reserved_bit(mask, b),
                    naive(mask, b),
                    "mask {mask:#x} b {b}"
                );
            }
        }
        assert_eq!(reserved_bit(0, 70), 6);
    }
}
