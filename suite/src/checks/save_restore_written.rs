//! Save/restore of written values: vCPU A takes a documented non-zero value (a catalogued write
//! the host may make), runs, and has its MSRs saved as a VMM would (the index list, plus the MSR
//! if KVM does not list it); a fresh vCPU B with the same CPUID and setup restores them all and
//! must read the value A held. `save-restore.*.roundtrip` covers what a fresh vCPU holds, mostly
//! reset values; this family covers values that differ from them.

use super::catalogued::{
    expected_after, gate_state, host_writes_gated, machine_for, not_on_backend, outcome_on,
};
use super::save_restore::{restore_saved, save};
use super::{hex, Check, Context, Outcome};
use crate::catalogue::{AccessPath, GateState, MsrInfo, WriteOutcome, WriteRule};
use crate::check_id::{CheckId, Family};
use crate::guest::GuestOp;
use crate::machine::Machine;

/// vCPU A with the rule's value written, and what it must then read (with the rule's citation
/// and the MSR's gate state); a skip or a failure where there is no written value to carry.
fn written_source(
    ctx: &Context,
    m: &MsrInfo,
    rule: &WriteRule,
) -> Result<(Machine, u64, String, Option<GateState>), Outcome> {
    let index = m.index;
    if let Some(v) = &m.volatile {
        return Err(Outcome::skip(format!(
            "{} changes without writes ({:?}: {}): the value read back after a restore is not the value written",
            m.name, v.rule, v.cite
        )));
    }
    if let Some(o) = not_on_backend(ctx, m) {
        return Err(o);
    }
    let a = match machine_for(ctx, m, None) {
        Ok(x) => x,
        Err(e) => return Err(Outcome::harness(e)),
    };
    let (outcome, cite) = outcome_on(ctx, &a, rule, AccessPath::Host);
    if !matches!(
        outcome,
        WriteOutcome::Same
            | WriteOutcome::Low32
            | WriteOutcome::Canonical
            | WriteOutcome::Canonical48
    ) {
        return Err(Outcome::skip(format!(
            "the host write of {} is documented as {outcome:?} here ({cite}): no written value to carry",
            hex(rule.value)
        )));
    }
    let gate = gate_state(m, &a);
    if let Some(o) = host_writes_gated(ctx, m, gate) {
        return Err(o);
    }
    if let Some(b) = rule.before {
        if !a.vcpu.set_msr(index, b) {
            return Err(Outcome::fail(
                format!("the host sets up {} first", hex(b)),
                "rejected",
            ));
        }
    }
    let before = a.vcpu.get_msr(index).unwrap_or(0);
    let Some(want) = expected_after(ctx, outcome, rule.value, before) else {
        return Err(Outcome::skip(format!(
            "the host write is refused here ({cite})"
        )));
    };
    if want == before {
        return Err(Outcome::skip(format!(
            "the written value reads back as {}, the value a fresh vCPU of {} already holds: nothing written to carry",
            hex(want),
            m.name
        )));
    }
    if !a.vcpu.set_msr(index, rule.value) {
        return Err(Outcome::fail(
            format!("vCPU A accepts {} ({cite})", hex(rule.value)),
            "KVM_SET_MSRS rejected it",
        ));
    }
    Ok((a, want, cite.to_string(), gate))
}

fn written_roundtrip(ctx: &Context, index: u32, k: usize) -> Outcome {
    let m = ctx
        .catalogue
        .get(index)
        .expect("generated from the catalogue");
    let rule = &m.writes[k];
    let (mut a, want, cite, gate) = match written_source(ctx, m, rule) {
        Ok(x) => x,
        Err(o) => return o,
    };
    // Let A run, as a migrated vCPU has (a guest read where the guest may read it).
    let ops = if gate == Some(GateState::Closed) || m.read_fails.is_some() {
        vec![]
    } else {
        vec![GuestOp::Rdmsr(index)]
    };
    let run = a.run_ops(&ops);
    if let Some(d) = run.death {
        return Outcome::fail("the source guest to run", d.to_string());
    }
    let mut indices = ctx.facts.msr_index_list.clone();
    if !indices.contains(&index) {
        indices.push(index);
    }
    let saved = save(&a.vcpu, &indices);
    let pos = indices.iter().position(|&i| i == index).expect("added");
    match saved[pos] {
        Some(v) if v == want => {}
        got => {
            return Outcome::fail(
                format!("vCPU A holds {} after it ran ({cite})", hex(want)),
                format!("{got:x?}"),
            )
        }
    }
    let b = match machine_for(ctx, m, None) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    let (n, accepted) = restore_saved(&b.vcpu, &indices, &saved, index);
    if !accepted {
        return Outcome::fail(
            format!("the fresh vCPU B accepts {}", hex(want)),
            "KVM_SET_MSRS rejected the entry",
        );
    }
    match b.vcpu.get_msr(index) {
        Some(v) if v == want => Outcome::pass(format!(
            "{} written into A, saved with {} MSRs and restored into B, reads {}",
            hex(rule.value),
            n,
            hex(v)
        )),
        got => Outcome::fail(
            format!("B reads what A held: {}", hex(want)),
            format!("{got:x?}"),
        ),
    }
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for m in ctx.catalogue.msrs.values() {
        if m.read_fails.is_some() {
            continue; // write-only: nothing to save
        }
        for (k, w) in m.writes.iter().enumerate() {
            if w.path == Some(AccessPath::Guest)
                || w.outcome == WriteOutcome::Rejected
                || !w.cpuid_clear.is_empty()
            {
                continue;
            }
            let index = m.index;
            v.push(Check::new(
                CheckId::msr(Family::SaveRestore, &m.id, "written").then(&w.name),
                Some(index),
                format!(
                    "{}: {:#x} ({}) written into a vCPU that then runs is saved, restored into a fresh vCPU with the same CPUID and reads back",
                    m.name, w.value, w.name
                ),
                format!(
                    "api.rst 4.3 (index list = MSRs to save/restore), 4.19 KVM_SET_MSRS; the write: {}",
                    w.cite
                ),
                move |c| written_roundtrip(c, index, k),
            ));
        }
    }
    v
}
