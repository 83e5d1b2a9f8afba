//! Checks generated from the catalogue's rules, for every catalogued MSR this backend has:
//! reset values, documented writes from each path (and what the other path then sees), reserved
//! bits walked one at a time, write-only reads, and the CPUID gate with its bit cleared.

use super::{Check, Context, Outcome};
use crate::catalogue::{
    AccessPath, GateState, HostWhenClosed, MsrInfo, Requirement, RuleContext, WriteOutcome,
    WriteRule,
};
pub(super) use crate::check_id::{CheckId, Family};
use crate::kvm::cpuid::{self};
use crate::machine::Machine;

mod gate;
mod reserved;
mod reset;
mod setup;
mod write;

use gate::{gate_checks, read_fails_checks};
use reserved::reserved_checks;
use reset::reset_checks;
pub(crate) use setup::machine_for;
use setup::*;
pub(crate) use write::expected_after;
use write::*;

fn info(ctx: &Context, index: u32) -> &MsrInfo {
    ctx.catalogue
        .get(index)
        .expect("checks are generated from catalogue entries")
}

/// The host conditions of `r` (capabilities, kvm parameters, supported CPUID) that do not hold.
pub(super) fn unmet(ctx: &Context, r: &Requirement) -> Vec<String> {
    let mut missing = Vec::new();
    for c in &r.caps {
        if ctx.facts.cap(c) <= 0 {
            missing.push(format!("{c} is absent"));
        }
    }
    for p in &r.kvm_params {
        if !matches!(
            ctx.facts.kvm_params.get(p).map(String::as_str),
            Some("Y" | "y" | "1")
        ) {
            missing.push(format!("kvm.{p} is not enabled"));
        }
    }
    let supported =
        |n: &String| cpuid::feature(n).is_some_and(|f| ctx.facts.supported_cpuid.has(f));
    if !r.cpuid_any.is_empty() && !r.cpuid_any.iter().any(supported) {
        missing.push(format!(
            "KVM_GET_SUPPORTED_CPUID has none of {}",
            r.cpuid_any.join(", ")
        ));
    }
    missing
}

/// The converse of `requires`: an MSR KVM lists only when its conditions hold (x86.c
/// kvm_init_msr_lists / kvm_probe_msr_to_save) must not be listed while one does not.
fn listed_only_when_supported(ctx: &Context, index: u32) -> Outcome {
    let m = info(ctx, index);
    let r = m
        .requires
        .as_ref()
        .expect("generated for MSRs with requirements");
    if !ctx.traits.get(index).in_lists() {
        return Outcome::skip(format!(
            "{} is not listed here: nothing to hold to its conditions",
            m.name
        ));
    }
    if let Some(p) = r
        .kvm_params
        .iter()
        .find(|p| !ctx.facts.kvm_params.contains_key(*p))
    {
        return Outcome::skip(format!(
            "kvm.{p} could not be read (/sys/module/kvm/parameters): its condition is unknown"
        ));
    }
    let mut missing = unmet(ctx, r);
    let mut note = String::new();
    if let Some((v, cite)) = &r.params_listing_since {
        if ctx.facts.kernel_version().is_some_and(|k| k < *v) {
            // Before `v` the listing did not look at the kvm parameters (`cite`).
            missing.retain(|m| !m.starts_with("kvm."));
            note = format!(
                " (before {v} KVM lists it whatever kvm.{} says: {cite})",
                r.kvm_params.join(", kvm.")
            );
        }
    }
    if missing.is_empty() {
        Outcome::pass(format!(
            "listed, and every condition for listing it holds{note}"
        ))
    } else {
        Outcome::fail(
            format!("listed only when its conditions hold ({})", r.cite),
            format!("listed, but {}", missing.join("; ")),
        )
    }
}

/// Skip, naming what is missing, when this host's KVM does not implement the MSR at all.
pub(super) fn not_on_backend(ctx: &Context, m: &MsrInfo) -> Option<Outcome> {
    if let Some((list, cite)) = &m.backends {
        if !list.contains(&ctx.facts.backend) {
            let names: Vec<&str> = list.iter().map(|b| b.name()).collect();
            return Some(Outcome::skip(format!(
                "{} exists only on {} ({cite})",
                m.name,
                names.join(", ")
            )));
        }
    }
    let r = m.requires.as_ref()?;
    let mut missing = unmet(ctx, r);
    if r.listed && !ctx.traits.get(m.index).in_lists() {
        missing.push("KVM does not list it on this host (the host lacks the feature)".into());
    }
    (!missing.is_empty()).then(|| {
        Outcome::skip(format!(
            "{} needs: {} ({})",
            m.name,
            missing.join("; "),
            r.cite
        ))
    })
}

/// How the checks' sentences name a read from `path`.
pub(super) fn reader(path: AccessPath) -> &'static str {
    match path {
        AccessPath::Host => "host read",
        AccessPath::Guest => "guest RDMSR",
    }
}

pub(super) fn gate_state(m: &MsrInfo, mach: &Machine) -> Option<GateState> {
    m.gate.as_ref().map(|g| mach.gate_state(g))
}

/// A skip when the gate is closed for this vCPU and host writes follow it (not exempt).
pub(super) fn host_writes_gated(
    ctx: &Context,
    m: &MsrInfo,
    gate: Option<GateState>,
) -> Option<Outcome> {
    let g = m.gate.as_ref()?;
    (gate == Some(GateState::Closed)
        && g.host_on(ctx.facts.kernel_version()) != HostWhenClosed::Exempt)
        .then(|| {
            Outcome::skip(format!(
                "gate closed for this vCPU and host writes follow it ({})",
                g.cite
            ))
        })
}

/// The documented outcome of `rule` on this machine (backend, its guest vendor) for `path`.
pub(super) fn outcome_on(
    ctx: &Context,
    mach: &Machine,
    rule: &WriteRule,
    path: AccessPath,
) -> (WriteOutcome, String) {
    let guest_vendor = mach
        .vcpu
        .effective_cpuid
        .as_ref()
        .and_then(|c| vendor_class(c.vendor()));
    let (o, cite) = rule.outcome_for(RuleContext {
        backend: ctx.facts.backend,
        kernel: ctx.facts.kernel_version(),
        kvm_cpuid: Some(&ctx.facts.supported_cpuid),
        guest_vendor,
        path,
        emulated: crate::machine::forced_emulation(),
    });
    (o, cite.to_string())
}

fn coverage(ctx: &Context) -> Outcome {
    let missing: Vec<String> = ctx
        .facts
        .msr_index_list
        .iter()
        .chain(&ctx.facts.msr_feature_index_list)
        .filter(|i| ctx.catalogue.get(**i).is_none())
        .map(|i| format!("{i:#x}"))
        .collect();
    if missing.is_empty() {
        Outcome::pass(format!(
            "all {} listed MSRs catalogued",
            ctx.facts.msr_index_list.len() + ctx.facts.msr_feature_index_list.len()
        ))
    } else {
        Outcome::fail(
            "every MSR this KVM lists is in fixtures/catalogue",
            format!("not catalogued: {}", missing.join(", ")),
        )
    }
}

/// `lists.<msr>.listed-only-when-supported`, where the catalogue states when KVM lists it.
pub(super) fn listing_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
    if let Some(r) = m
        .requires
        .as_ref()
        .filter(|r| !(r.caps.is_empty() && r.kvm_params.is_empty() && r.cpuid_any.is_empty()))
    {
        v.push(Check::new(
            CheckId::msr(Family::Lists, &id, "listed-only-when-supported"),
            Some(index),
            format!("{name}: in KVM's lists only while the conditions for listing it hold"),
            r.cite.clone(),
            move |c| listed_only_when_supported(c, index),
        ));
    }
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = vec![Check::new(
        CheckId::fixed(Family::Catalogue, "covers-host-lists"),
        None,
        "every MSR in this host's index and feature lists has a catalogue entry",
        "api.rst 4.3 (the lists); fixtures/catalogue/README.md",
        coverage,
    )];
    for m in ctx.catalogue.msrs.values() {
        listing_checks(m, &mut v);
        reset_checks(m, &mut v);
        write_checks(m, &mut v);
        reserved_checks(m, &mut v);
        read_fails_checks(m, &mut v);
        gate_checks(m, &mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sign_extends_at_the_host_width() {
        assert_eq!(
            canonical(0x0000_8000_0000_0000, false),
            0xffff_8000_0000_0000
        );
        assert_eq!(
            canonical(0x0000_7fff_ffff_ffff, false),
            0x0000_7fff_ffff_ffff
        );
        assert_eq!(
            canonical(0xaaaa_aaaa_aaaa_aaaa, false),
            0xffff_aaaa_aaaa_aaaa
        );
        assert_eq!(
            canonical(0x0100_0000_0000_0000, true),
            0xff00_0000_0000_0000
        );
    }
}
