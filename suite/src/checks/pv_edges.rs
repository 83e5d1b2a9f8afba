//! KVM's paravirtual MSRs whose value is the guest-physical address of a structure KVM writes
//! (Documentation/virt/kvm/x86/msr.rst), with that address at the edges: a structure crossing a
//! page end, an address in no memslot, and a memslot deleted after the guest enabled the MSR.
//! Each check wants the guest to survive (the next KVM_RUN completes), the WRMSR to end as the
//! kernel function it cites decides, and guard bytes around the structure to stay as they were.
//! The kernel log is judged for the whole run by the report's `kernel-log.*` verdict.

use super::pv::{wall_clock_plausible, WALL_CLOCK_EXPECTED};
use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::cpuid;
use crate::kvm::memory::GuestMemory;
use crate::machine::Machine;

use crate::msr_index::MSR_KVM_ASYNC_PF_EN as ASYNC_PF_EN;
use crate::msr_index::MSR_KVM_PV_EOI_EN as PV_EOI_EN;
use crate::msr_index::MSR_KVM_STEAL_TIME as STEAL_TIME;
use crate::msr_index::MSR_KVM_SYSTEM_TIME as SYSTEM_TIME;
use crate::msr_index::MSR_KVM_SYSTEM_TIME_NEW as SYSTEM_TIME_NEW;
use crate::msr_index::MSR_KVM_WALL_CLOCK_NEW as WALL_CLOCK_NEW;

/// A page boundary in guest memory the runtime leaves free (guest/layout.rs: nothing above
/// STACK_TOP; VmConfig::default maps 4 MiB at GPA 0).
const BOUNDARY: u64 = 0x10_2000;
/// A GPA in no memslot: the harness maps only the 4 MiB at 0 (and the extra slot below).
const NO_SLOT_GPA: u64 = 0x4000_0000;
/// Where the extra one-page memslot goes, and its slot number.
const EXTRA_GPA: u64 = 0x1000_0000;
const EXTRA_SLOT: u32 = 1;
const PAGE: usize = 0x1000;
/// The structure's offset inside the extra page (64-byte aligned, as steal time needs).
const EXTRA_OFFSET: u64 = 0x800;
/// Guard bytes on each side of a structure, and their value.
const GUARD_LEN: u64 = 64;
const GUARD: u8 = 0xa5;

/// sizeof(struct pvclock_vcpu_time_info), (struct pvclock_wall_clock), (struct kvm_steal_time).
const PVCLOCK_LEN: usize = 32;
const WALL_CLOCK_LEN: usize = 12;
const STEAL_LEN: usize = 64;

/// msr.rst: bit 0 of the system-time, steal-time, async-PF and PV-EOI MSRs enables them.
const ENABLE: u64 = 1;
/// msr.rst MSR_KVM_ASYNC_PF_EN bit 3, KVM_ASYNC_PF_DELIVERY_AS_INT: with bit 0, the value x86.c
/// __kvm_pv_async_pf_enabled / kvm_pv_async_pf_enabled needs before it maps the structure.
const ASYNC_PF_AS_INT: u64 = 1 << 3;

/// A machine whose vCPU has `feature` in KVM's PV CPUID leaf (0x40000001.EAX), or a skip.
fn gated(ctx: &Context, feature: &str) -> Result<Machine, Outcome> {
    let f = cpuid::feature(feature).expect("a KVM_CPUID_FEATURES bit of kvm::cpuid::FEATURES");
    let m = ctx.machine().map_err(Outcome::harness)?;
    if m.vcpu.effective_cpuid.as_ref().is_some_and(|c| c.has(f)) {
        Ok(m)
    } else {
        Err(Outcome::skip(format!(
            "KVM_CPUID_FEATURES (0x40000001.EAX bit {}) lacks KVM_FEATURE_{}",
            f.bit,
            feature.trim_start_matches("KVM_")
        )))
    }
}

/// What one op should end as.
#[derive(Clone, Copy, Debug)]
enum Want {
    Wrote,
    Gp,
    Read(u64),
    /// Completed, value not judged.
    Any,
}

impl Want {
    fn accepts(self, o: OpOutcome) -> bool {
        match self {
            Want::Wrote => o == OpOutcome::Wrote,
            Want::Gp => o.is_gp(),
            Want::Read(v) => o == OpOutcome::Read(v),
            Want::Any => matches!(o, OpOutcome::Read(_) | OpOutcome::Wrote),
        }
    }
}

/// Run `ops` and add a problem for a dead guest or each op that did not end as wanted.
fn run_expect(m: &mut Machine, ops: &[GuestOp], want: &[Want], problems: &mut Vec<String>) {
    let run = m.run_ops(ops);
    if let Some(d) = run.death {
        problems.push(format!("{ops:x?}: {d}"));
        return;
    }
    for ((op, w), o) in ops.iter().zip(want).zip(&run.outcomes) {
        if !w.accepts(*o) {
            problems.push(format!("{op:x?}: {o} (wanted {w:x?})"));
        }
    }
}

/// One more run reading `msr`: the guest survives and the MSR reads `value`.
fn reads(m: &mut Machine, msr: u32, value: u64, problems: &mut Vec<String>) {
    run_expect(m, &[GuestOp::Rdmsr(msr)], &[Want::Read(value)], problems);
}

/// Fill `[gpa - GUARD_LEN, gpa + len + GUARD_LEN)` with the guard byte and zero the structure.
fn guard(mem: &mut GuestMemory, gpa: u64, len: usize) {
    mem.fill(gpa - GUARD_LEN, len + 2 * GUARD_LEN as usize, GUARD);
    mem.fill(gpa, len, 0);
}

/// Offsets (relative to `from`) of bytes in `[from, from + n)` that are not the guard byte,
/// leaving out `[skip, skip + skip_len)`.
fn guard_damage(mem: &GuestMemory, from: u64, n: usize, skip: u64, skip_len: usize) -> Vec<u64> {
    let mut b = vec![0u8; n];
    mem.read(from, &mut b);
    b.iter()
        .enumerate()
        .map(|(i, &v)| (from + i as u64, v))
        .filter(|&(a, v)| v != GUARD && !(skip..skip + skip_len as u64).contains(&a))
        .map(|(a, _)| a)
        .collect()
}

fn damage_problem(what: &str, damaged: &[u64]) -> Option<String> {
    (!damaged.is_empty()).then(|| {
        format!(
            "{what}: {} byte(s) changed, first at {:#x}",
            damaged.len(),
            damaged[0]
        )
    })
}

/// A pvclock_vcpu_time_info (32 bytes) starting 16 bytes before a page end.
fn clock_straddle(ctx: &Context, msr: u32, feature: &str) -> Outcome {
    let mut m = match gated(ctx, feature) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let gpa = BOUNDARY - 16;
    guard(&mut m.vm.mem, gpa, PVCLOCK_LEN);
    let mut problems = Vec::new();
    let ops = [GuestOp::Wrmsr(msr, gpa | ENABLE), GuestOp::Rdmsr(msr)];
    run_expect(
        &mut m,
        &ops,
        &[Want::Wrote, Want::Read(gpa | ENABLE)],
        &mut problems,
    );
    // The clock update KVM requested runs on this entry at the latest.
    reads(&mut m, msr, gpa | ENABLE, &mut problems);
    let mut b = [0u8; PVCLOCK_LEN];
    m.vm.mem.read(gpa, &mut b);
    if b != [0; PVCLOCK_LEN] {
        problems.push(format!("the structure was written: {b:02x?}"));
    }
    let span = PVCLOCK_LEN + 2 * GUARD_LEN as usize;
    let d = guard_damage(&m.vm.mem, gpa - GUARD_LEN, span, gpa, PVCLOCK_LEN);
    problems.extend(damage_problem("guard bytes", &d));
    Outcome::unless(problems, "WRMSR succeeds and reads back; the next KVM_RUN completes; KVM writes neither the page-crossing structure nor its neighbours", format!("{gpa:#x}+32 crosses {BOUNDARY:#x}: accepted, nothing written"))
}

/// An enable at a GPA in no memslot: accepted, the guest runs on.
fn outside(ctx: &Context, msr: u32, feature: &str, value: u64) -> Outcome {
    let mut m = match gated(ctx, feature) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let mut problems = Vec::new();
    let ops = [GuestOp::Wrmsr(msr, value), GuestOp::Rdmsr(msr)];
    run_expect(
        &mut m,
        &ops,
        &[Want::Wrote, Want::Read(value)],
        &mut problems,
    );
    reads(&mut m, msr, value, &mut problems);
    Outcome::unless(
        problems,
        "WRMSR succeeds and reads back; the next KVM_RUN completes",
        format!("{value:#x} accepted, two runs completed"),
    )
}

/// An enable at a GPA in no memslot that KVM refuses with #GP; `reads_back` is what RDMSR
/// returns afterwards (None: not judged on this kernel).
fn outside_refused(
    ctx: &Context,
    msr: u32,
    features: &[&str],
    value: u64,
    reads_back: Option<u64>,
) -> Outcome {
    let mut m = match gated(ctx, features[0]) {
        Ok(m) => m,
        Err(o) => return o,
    };
    for f in &features[1..] {
        if let Err(o) = gated(ctx, f) {
            return o;
        }
    }
    let mut problems = Vec::new();
    let after = reads_back.map_or(Want::Any, Want::Read);
    let ops = [GuestOp::Wrmsr(msr, value), GuestOp::Rdmsr(msr)];
    run_expect(&mut m, &ops, &[Want::Gp, after], &mut problems);
    run_expect(&mut m, &[GuestOp::Rdmsr(msr)], &[after], &mut problems);
    let read = match reads_back {
        Some(v) => format!("reads {v:#x} after"),
        None => "read-back not judged on this kernel".into(),
    };
    Outcome::unless(
        problems,
        format!("WRMSR {value:#x} raises #GP, {read}; the next KVM_RUN completes"),
        format!("{value:#x}: #GP, {read}"),
    )
}

/// kvm_pv_enable_async_pf stores msr_en_val before kvm_gfn_to_hva_cache_init in 6.1 and 6.12
/// (and up to 6.19, where the syzbot report bc0e18379a290e5edfe4 "WARNING in
/// kvm_read_guest_offset_cached" still reproduced), so the refused value reads back; the 7.2
/// source initializes the cache first and keeps the old value (0 on a fresh vCPU). 7.0 and 7.1
/// are not judged.
fn async_pf_reads_back(ctx: &Context, value: u64) -> Option<u64> {
    use crate::catalogue::KernelVersion;
    match ctx.facts.kernel_version()? {
        v if v <= KernelVersion(6, 19) => Some(value),
        v if v >= KernelVersion(7, 2) => Some(0),
        _ => None,
    }
}

/// The wall clock (12 bytes) starting 4 bytes before a page end: kvm_write_wall_clock writes it
/// with kvm_write_guest, which splits a write at page ends (kvm_main.c kvm_write_guest).
fn wall_straddle(ctx: &Context) -> Outcome {
    let mut m = match gated(ctx, "KVM_CLOCKSOURCE2") {
        Ok(m) => m,
        Err(o) => return o,
    };
    let gpa = BOUNDARY - 4;
    guard(&mut m.vm.mem, gpa, WALL_CLOCK_LEN);
    let mut problems = Vec::new();
    let ops = [GuestOp::Wrmsr(WALL_CLOCK_NEW, gpa)];
    run_expect(&mut m, &ops, &[Want::Wrote], &mut problems);
    let mut b = [0u8; WALL_CLOCK_LEN];
    m.vm.mem.read(gpa, &mut b);
    let detail = match wall_clock_plausible(&b) {
        Ok(d) => d,
        Err(d) => {
            problems.push(format!("{WALL_CLOCK_EXPECTED}: {d}"));
            d
        }
    };
    let span = WALL_CLOCK_LEN + 2 * GUARD_LEN as usize;
    let d = guard_damage(&m.vm.mem, gpa - GUARD_LEN, span, gpa, WALL_CLOCK_LEN);
    problems.extend(damage_problem("guard bytes", &d));
    Outcome::unless(
        problems,
        "WRMSR succeeds; a plausible pvclock_wall_clock across the page end; neighbours untouched",
        format!("{gpa:#x}+12 crosses {BOUNDARY:#x}: {detail}"),
    )
}

/// A machine with a one-page extra memslot at EXTRA_GPA, all guard bytes. The memory is
/// returned second so that it outlives the machine (and its slot) when both drop.
fn with_extra_slot(ctx: &Context, feature: &str) -> Result<(Machine, GuestMemory), Outcome> {
    let m = gated(ctx, feature)?;
    let mut extra = GuestMemory::new(PAGE).map_err(Outcome::harness)?;
    extra.fill(0, PAGE, GUARD);
    m.vm.set_extra_slot(EXTRA_SLOT, EXTRA_GPA, Some(&extra))
        .map_err(|e| {
            Outcome::fail(
                "KVM_SET_USER_MEMORY_REGION of a one-page slot",
                format!("errno {e}"),
            )
        })?;
    Ok((m, extra))
}

/// The u32 `version` at `off` in the structure at EXTRA_OFFSET of the extra page.
fn extra_version(extra: &GuestMemory, off: u64) -> u32 {
    let mut b = [0u8; 4];
    extra.read(EXTRA_OFFSET + off, &mut b);
    u32::from_le_bytes(b)
}

/// How a memslot-deleted check makes KVM want to write the structure again.
#[derive(Clone, Copy)]
enum Retrigger {
    /// KVM_GET_CLOCK + KVM_SET_CLOCK: kvm_vm_ioctl_set_clock -> kvm_end_pvclock_update
    /// requests KVM_REQ_CLOCK_UPDATE on every vCPU.
    SetClock,
    /// Nothing: kvm_arch_vcpu_load requests KVM_REQ_STEAL_UPDATE on every KVM_RUN.
    EveryRun,
}

fn retrigger(m: &Machine, how: Retrigger) -> crate::Result<()> {
    if let Retrigger::SetClock = how {
        let c =
            m.vm.fd
                .get_clock()
                .map_err(|e| crate::Error::ioctl("KVM_GET_CLOCK", e))?;
        let set = kvm_bindings::kvm_clock_data {
            clock: c.clock,
            ..Default::default()
        };
        m.vm.fd
            .set_clock(&set)
            .map_err(|e| crate::Error::ioctl("KVM_SET_CLOCK", e))?;
    }
    Ok(())
}

/// Enable `msr` on a structure (`len` bytes, version at `version_off`) in an extra memslot; see
/// KVM write it and write it again after `how`; delete the slot; after `how` again the guest
/// runs on and the old backing page stays untouched.
fn slot_deleted(
    ctx: &Context,
    msr: u32,
    feature: &str,
    len: usize,
    version_off: u64,
    how: Retrigger,
) -> Outcome {
    let (mut m, mut extra) = match with_extra_slot(ctx, feature) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let gpa = EXTRA_GPA + EXTRA_OFFSET;
    let value = gpa | ENABLE;
    extra.fill(EXTRA_OFFSET, len, 0);
    let mut problems = Vec::new();
    let ops = [GuestOp::Wrmsr(msr, value)];
    run_expect(&mut m, &ops, &[Want::Wrote], &mut problems);
    reads(&mut m, msr, value, &mut problems);
    let v1 = extra_version(&extra, version_off);
    if let Err(e) = retrigger(&m, how) {
        return Outcome::fail("the harness to request an update", e.to_string());
    }
    reads(&mut m, msr, value, &mut problems);
    let v2 = extra_version(&extra, version_off);
    if v1 == 0 || v1 % 2 != 0 || v2 <= v1 || v2 % 2 != 0 {
        problems.push(format!(
            "before the deletion: version {v1} then {v2} (wanted even, non-zero, increasing)"
        ));
    }
    let d = guard_damage(&extra, 0, PAGE, EXTRA_OFFSET, len);
    problems.extend(damage_problem("guard bytes before the deletion", &d));
    if let Err(e) = m.vm.set_extra_slot(EXTRA_SLOT, EXTRA_GPA, None) {
        return Outcome::fail("the slot deleted (memory_size 0)", format!("errno {e}"));
    }
    extra.fill(0, PAGE, GUARD);
    if let Err(e) = retrigger(&m, how) {
        return Outcome::fail("the harness to request an update", e.to_string());
    }
    reads(&mut m, msr, value, &mut problems);
    reads(&mut m, msr, value, &mut problems);
    let d = guard_damage(&extra, 0, PAGE, 0, 0);
    problems.extend(damage_problem("the deleted slot's old page", &d));
    Outcome::unless(
        problems,
        "KVM writes the structure while the slot exists; after the slot is deleted the guest runs on, the MSR keeps its value and the old page is never written",
        format!("versions {v1}, {v2} before the deletion; nothing written after"),
    )
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    const PFN: &str = "pfncache.c (6.1 kvm_gfn_to_pfn_cache_refresh, later __kvm_gpc_refresh / kvm_gpc_is_valid_len): a cache must not cross a page end (-EINVAL), which kvm_write_system_time ignores";
    const HVA: &str = "kvm_main.c __kvm_gfn_to_hva_cache_init: -EFAULT for a gfn in no memslot";
    let mut v = Vec::new();
    for (msr, id, feature) in [
        (SYSTEM_TIME_NEW, "kvm-system-time-new", "KVM_CLOCKSOURCE2"),
        (SYSTEM_TIME, "kvm-system-time", "KVM_CLOCKSOURCE"),
    ] {
        v.push(Check::new(CheckId::msr(Family::Pv, id, "page-crossing"), Some(msr), "kvm-clock enabled on a pvclock_vcpu_time_info crossing a page end: accepted, nothing written, the guest runs on", format!("msr.rst MSR_KVM_SYSTEM_TIME(_NEW) (4-byte aligned, so never crossing a page); x86.c kvm_write_system_time (kvm_gpc_activate, result ignored), kvm_setup_guest_pvclock (returns when the refresh fails); {PFN}"), move |c| clock_straddle(c, msr, feature)));
    }
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-system-time-new.outside-memslots"), Some(SYSTEM_TIME_NEW), "kvm-clock enabled at a GPA in no memslot: accepted, reads back, the guest runs on", format!("x86.c kvm_write_system_time stores the value and ignores kvm_gpc_activate's error; kvm_setup_guest_pvclock returns when kvm_gpc_refresh fails; {HVA}"), |c| outside(c, SYSTEM_TIME_NEW, "KVM_CLOCKSOURCE2", NO_SLOT_GPA | ENABLE)));
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-system-time-new.memslot-deleted"), Some(SYSTEM_TIME_NEW), "kvm-clock in an extra memslot: written while it exists; after KVM_SET_USER_MEMORY_REGION size 0 the guest runs on and the old page is never written", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (memory_size 0 deletes the slot), 4.56 KVM_SET_CLOCK; x86.c kvm_vm_ioctl_set_clock -> kvm_end_pvclock_update (KVM_REQ_CLOCK_UPDATE), kvm_setup_guest_pvclock (kvm_gpc_check fails on the new memslot generation, the refresh fails, nothing written)", |c| slot_deleted(c, SYSTEM_TIME_NEW, "KVM_CLOCKSOURCE2", PVCLOCK_LEN, 0, Retrigger::SetClock)));
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-wall-clock-new.page-crossing"), Some(WALL_CLOCK_NEW), "the wall clock on a pvclock_wall_clock crossing a page end: written whole, neighbours untouched", "msr.rst MSR_KVM_WALL_CLOCK_NEW; x86.c kvm_write_wall_clock (kvm_read_guest / kvm_write_guest of the GPA); kvm_main.c kvm_write_guest writes page by page (next_segment)", wall_straddle));
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-wall-clock-new.outside-memslots"), Some(WALL_CLOCK_NEW), "the wall clock at a GPA in no memslot: accepted, reads back, the guest runs on", "x86.c kvm_set_msr_common MSR_KVM_WALL_CLOCK_NEW stores kvm->arch.wall_clock, kvm_write_wall_clock returns when kvm_read_guest fails (no memslot)", |c| outside(c, WALL_CLOCK_NEW, "KVM_CLOCKSOURCE2", NO_SLOT_GPA)));
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-steal-time.outside-memslots"), Some(STEAL_TIME), "steal time enabled at a GPA in no memslot: accepted, reads back, the guest runs on", format!("msr.rst MSR_KVM_STEAL_TIME (64-byte aligned, so never crossing a page); x86.c kvm_set_msr_common MSR_KVM_STEAL_TIME stores any value without reserved bits; record_steal_time returns when kvm_gfn_to_hva_cache_init fails; {HVA}"), |c| outside(c, STEAL_TIME, "KVM_STEAL_TIME", NO_SLOT_GPA | ENABLE)));
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-steal-time.memslot-deleted"), Some(STEAL_TIME), "steal time in an extra memslot: written on every KVM_RUN while it exists; after KVM_SET_USER_MEMORY_REGION size 0 the guest runs on and the old page is never written", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION; x86.c kvm_arch_vcpu_load (KVM_REQ_STEAL_UPDATE), record_steal_time (the gfn_to_hva_cache's memslot generation is stale, kvm_gfn_to_hva_cache_init fails, return)", |c| slot_deleted(c, STEAL_TIME, "KVM_STEAL_TIME", STEAL_LEN, 8, Retrigger::EveryRun)));
    let apf = NO_SLOT_GPA | ASYNC_PF_AS_INT | ENABLE;
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-async-pf-en.outside-memslots"), Some(ASYNC_PF_EN), "async PF enabled (delivery as interrupt) at a GPA in no memslot: #GP, the guest runs on; the value read back follows the kernel's order of store and cache init", format!("msr.rst MSR_KVM_ASYNC_PF_EN; x86.c kvm_pv_enable_async_pf: kvm_gfn_to_hva_cache_init fails -> 1 (#GP); 6.1/6.12 store apf.msr_en_val before that (reads back the refused value; syzbot bc0e18379a290e5edfe4), the 7.2 source after it; {HVA}"), move |c| outside_refused(c, ASYNC_PF_EN, &["KVM_ASYNC_PF", "KVM_ASYNC_PF_INT"], apf, async_pf_reads_back(c, apf))));
    v.push(Check::new(CheckId::fixed(Family::Pv, "kvm-pv-eoi-en.outside-memslots"), Some(PV_EOI_EN), "PV EOI enabled at a GPA in no memslot: #GP, the MSR keeps 0, the guest runs on", format!("msr.rst MSR_KVM_PV_EOI_EN; lapic.c kvm_lapic_set_pv_eoi returns kvm_gfn_to_hva_cache_init's error before storing pv_eoi.msr_val (6.1, 6.12, 7.2); x86.c kvm_set_msr_common -> 1; {HVA}"), |c| outside_refused(c, PV_EOI_EN, &["KVM_PV_EOI"], NO_SLOT_GPA | ENABLE, Some(0))));
    v
}
