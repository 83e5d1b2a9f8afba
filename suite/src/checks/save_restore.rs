//! Save/restore: every index-list MSR read from a vCPU that has run is written into a fresh vCPU
//! with the same CPUID, which must accept it and read it back (api.rst 4.3: the index list is
//! the list of MSRs to save and restore; QEMU's kvm_put_msrs requires every entry accepted).

use super::{hex, Check, Context, Outcome};
use crate::catalogue::Volatility;
use crate::check_id::{CheckId, Family};
use crate::guest::GuestOp;
use crate::kvm::raw::{MsrEntry, MAX_IO_MSRS};
use crate::kvm::Vcpu;
use std::time::Instant;

/// Read `indices` in batches of at most 255.
pub(super) fn save(vcpu: &Vcpu, indices: &[u32]) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for chunk in indices.chunks((MAX_IO_MSRS - 1) as usize) {
        let io = vcpu.get_msrs(chunk);
        let n = io.result.unwrap_or(0);
        for (i, e) in io.entries().iter().enumerate() {
            // Entries past a failure are re-read alone so one failure hides nothing.
            out.push(if i < n {
                Some(e.data)
            } else {
                vcpu.get_msr(e.index)
            });
        }
    }
    out
}

/// Write `entries` as a VMM restoring state would: in batches, and past a rejected entry keep
/// going with the rest. Returns which entries were accepted.
fn restore(vcpu: &Vcpu, entries: &[MsrEntry]) -> Vec<bool> {
    let mut accepted = vec![false; entries.len()];
    let mut start = 0;
    while start < entries.len() {
        let end = (start + (MAX_IO_MSRS - 1) as usize).min(entries.len());
        let n = vcpu.set_msrs(&entries[start..end]).result.unwrap_or(0);
        for a in &mut accepted[start..start + n] {
            *a = true;
        }
        // Skip the entry that failed (it stays false) and continue after it.
        start += n + usize::from(start + n < end);
    }
    accepted
}

/// Restore what `save` read (the entries that could not be read left out) into `vcpu` as a VMM
/// would. Returns how many entries were written and whether `index`'s was accepted.
pub(super) fn restore_saved(
    vcpu: &Vcpu,
    indices: &[u32],
    saved: &[Option<u64>],
    index: u32,
) -> (usize, bool) {
    let entries: Vec<MsrEntry> = indices
        .iter()
        .zip(saved)
        .filter_map(|(&index, v)| v.map(|data| MsrEntry { index, data }))
        .collect();
    let accepted = restore(vcpu, &entries);
    let epos = entries
        .iter()
        .position(|e| e.index == index)
        .expect("a saved entry");
    (entries.len(), accepted[epos])
}

fn roundtrip(ctx: &Context, index: u32) -> Outcome {
    let indices = ctx.facts.msr_index_list.clone();
    let pos = indices
        .iter()
        .position(|&i| i == index)
        .expect("index from the list");
    let mut a = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    // Let the source vCPU run, as a migrated vCPU has.
    let run = a.run_ops(&[GuestOp::Rdmsr(index)]);
    if let Some(d) = run.death {
        return Outcome::fail("the source guest to run", d.to_string());
    }
    let saved_at = Instant::now();
    let saved = save(&a.vcpu, &indices);
    let Some(value) = saved[pos] else {
        return Outcome::fail("the source vCPU's value readable", "KVM_GET_MSRS failed");
    };
    let b = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if !restore_saved(&b.vcpu, &indices, &saved, index).1 {
        return Outcome::fail(
            format!("the fresh vCPU accepts {}", hex(value)),
            "KVM_SET_MSRS rejected the entry",
        );
    }
    let Some(back) = b.vcpu.get_msr(index) else {
        return Outcome::fail("the restored value readable", "KVM_GET_MSRS failed");
    };
    let info = ctx.catalogue.get(index);
    if let Some(v) = info
        .and_then(|i| i.volatile.as_ref())
        .filter(|v| v.vm_clock)
    {
        return Outcome::pass(format!(
            "{} accepted; it reads {} from the fresh VM's own clock, which KVM_SET_MSRS does not carry ({})",
            hex(value),
            hex(back),
            v.cite
        ));
    }
    match info
        .and_then(|i| i.volatile.as_ref())
        .map(|v| v.rule.clone())
    {
        None if back == value => Outcome::pass(format!("{} restored", hex(value))),
        None => Outcome::fail(hex(value), hex(back)),
        Some(Volatility::Monotonic) => {
            // A counter restored to `value` keeps counting: it reads at least `value` and at
            // most `value` plus the ticks that passed since it was saved (KVM_GET_TSC_KHZ).
            let khz = b.vcpu.fd.get_tsc_khz().unwrap_or(0) as u64;
            if khz == 0 {
                return Outcome::skip("KVM_GET_TSC_KHZ unavailable: no bound for a counting MSR");
            }
            let elapsed_ns = saved_at.elapsed().as_nanos() as u64;
            if index == crate::msr_index::IA32_TSC
                && ctx
                    .facts
                    .kernel_version()
                    .is_some_and(|k| k < crate::catalogue::KernelVersion(6, 7))
            {
                // Before bf328e22e472 "KVM: x86: Don't sync user-written TSC against startup
                // values" (6.7), kvm_synchronize_tsc takes a write within one second's cycles
                // of the VM's own TSC as an attempt to synchronize, keeping the VM's TSC.
                let window = khz * 1000 + elapsed_ns * khz / 1_000_000 * 2;
                return if back.abs_diff(value) <= window {
                    Outcome::pass(format!("{} written, reads {} (kernel before 6.7: a write within 1 s of cycles synchronizes instead, bf328e22e472)", hex(value), hex(back)))
                } else {
                    Outcome::fail(format!("within 1 s of cycles ({}) of {} (before bf328e22e472, 6.7, kvm_synchronize_tsc treats such a write as synchronization)", hex(window), hex(value)), hex(back))
                };
            }
            let slack = khz * 10; // 10 ms of ticks for timer and scheduling noise
            let limit = value + elapsed_ns * khz / 1_000_000 * 2 + slack;
            if back >= value && back <= limit {
                Outcome::pass(format!(
                    "{} restored, reads {} (+{} ticks)",
                    hex(value),
                    hex(back),
                    back - value
                ))
            } else {
                Outcome::fail(
                    format!(
                        "between {} and {} (saved value + elapsed ticks)",
                        hex(value),
                        hex(limit)
                    ),
                    hex(back),
                )
            }
        }
        Some(Volatility::Changes) => {
            Outcome::skip("documented to change between reads; no value to compare")
        }
    }
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    ctx.facts
        .msr_index_list
        .iter()
        .map(|&index| {
            let id = ctx.catalogue.slug(index);
            let vol = ctx.catalogue.get(index).and_then(|i| i.volatile.as_ref()).map(|v| format!("; counts on: {}; x86.c kvm_synchronize_tsc", v.cite)).unwrap_or_default();
            Check::new(
                CheckId::msr(Family::SaveRestore, &id, "roundtrip"),
                Some(index),
                format!("{}: the value saved from a vCPU that ran is accepted by a fresh vCPU and reads back", ctx.catalogue.name(index)),
                format!("api.rst 4.3 (index list = MSRs to save/restore), 4.19 KVM_SET_MSRS{vol}"),
                move |c| roundtrip(c, index),
            )
        })
        .collect()
}
