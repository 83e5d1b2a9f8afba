//! One catalogue entry's rules, from their TOML shape to the catalogue's types: every name
//! checked against what the code knows, every rule cited.

use super::super::*;
use super::raw::*;

pub(super) fn features(
    names: &[String],
    key: &str,
) -> std::result::Result<Vec<&'static str>, String> {
    names
        .iter()
        .map(|n| {
            crate::kvm::cpuid::feature(n)
                .map(|f| f.name)
                .ok_or_else(|| {
                    format!("{key} names unknown feature {n:?} (see kvm/cpuid.rs FEATURES)")
                })
        })
        .collect()
}

pub(super) fn parse_backend(s: &str) -> std::result::Result<Backend, String> {
    match s {
        "vmx" => Ok(Backend::Vmx),
        "svm" => Ok(Backend::Svm),
        "pvm" => Ok(Backend::Pvm),
        o => Err(format!("backend {o:?}: expected vmx, svm or pvm")),
    }
}

pub(super) fn parse_path(s: &str) -> std::result::Result<AccessPath, String> {
    match s {
        "host" => Ok(AccessPath::Host),
        "guest" => Ok(AccessPath::Guest),
        o => Err(format!("path {o:?}: expected host or guest")),
    }
}

pub(super) fn parse_vendor(s: &str) -> std::result::Result<GuestVendor, String> {
    match s {
        "intel" => Ok(GuestVendor::Intel),
        "amd" => Ok(GuestVendor::Amd),
        o => Err(format!("guest_vendor {o:?}: expected intel or amd")),
    }
}

pub(super) fn parse_outcome(s: &str) -> std::result::Result<WriteOutcome, String> {
    Ok(match s {
        "same" => WriteOutcome::Same,
        "low32" => WriteOutcome::Low32,
        "canonical" => WriteOutcome::Canonical,
        "canonical-48" => WriteOutcome::Canonical48,
        "ignored" => WriteOutcome::Ignored,
        "reads-zero" => WriteOutcome::ReadsZero,
        "rejected" => WriteOutcome::Rejected,
        "unsupported" => WriteOutcome::Unsupported,
        o => {
            return Err(format!(
                "outcome {o:?}: expected same, low32, canonical, canonical-48, ignored, reads-zero, rejected or unsupported"
            ))
        }
    })
}

pub(super) fn parse_kernel(s: &str) -> std::result::Result<KernelVersion, String> {
    match KernelVersion::parse(s) {
        Some(v) if v.to_string() == s => Ok(v),
        _ => Err(format!(
            "kernel version {s:?}: expected MAJOR.MINOR, e.g. \"6.13\""
        )),
    }
}

pub(super) fn parse_host_mode(s: &str) -> std::result::Result<HostWhenClosed, String> {
    Ok(match s {
        "exempt" => HostWhenClosed::Exempt,
        "advertised-zero" => HostWhenClosed::AdvertisedZero,
        "fails" => HostWhenClosed::Fails,
        "zero-only" => HostWhenClosed::ZeroOnly,
        "unsupported" => HostWhenClosed::Unsupported,
        "write-unsupported" => HostWhenClosed::WriteUnsupported,
        other => {
            return Err(format!(
                "gate.host {other:?}: expected exempt, advertised-zero, fails, zero-only, unsupported or write-unsupported"
            ))
        }
    })
}

pub(super) fn cited(what: &str, cite: &str) -> std::result::Result<(), String> {
    if cite.trim().is_empty() {
        Err(format!("{what}.cite is empty: every rule names its source"))
    } else {
        Ok(())
    }
}

pub(super) type Rules = (
    Option<ResetRule>,
    Vec<WriteRule>,
    Option<ReservedRule>,
    Option<PathRule>,
    Option<(Vec<Backend>, String)>,
    Option<Requirement>,
);

/// `reset = { value, cite, when = [{ backend | quirk_disabled, value, cite }] }`.
fn parse_reset(r: ResetRaw) -> std::result::Result<ResetRule, String> {
    cited("reset", &r.cite)?;
    let mut by_backend = Vec::new();
    let mut quirk_off = Vec::new();
    for w in r.when {
        cited("reset.when", &w.cite)?;
        match (w.backend, w.quirk_disabled) {
            (Some(b), None) => by_backend.push((parse_backend(&b)?, w.value, w.cite)),
            (None, Some(q)) => {
                let quirk = Quirk::parse(&q).ok_or_else(|| format!("reset.when.quirk_disabled {q:?}: expected STUFF_FEATURE_MSRS or MISC_ENABLE_NO_MWAIT"))?;
                quirk_off.push((quirk, w.value, w.cite));
            }
            _ => return Err("reset.when needs exactly one of `backend`, `quirk_disabled`".into()),
        }
    }
    Ok(ResetRule {
        value: r.value,
        cite: r.cite,
        by_backend,
        quirk_off,
    })
}

/// One `[[msr.write]]` rule with its `when` conditions.
fn parse_write(w: WriteRaw) -> std::result::Result<WriteRule, String> {
    cited(&format!("write {:?}", w.name), &w.cite)?;
    if !crate::check_id::is_segment(&w.name) {
        return Err(format!(
            "write name {:?} must be lowercase letters, digits and '-'",
            w.name
        ));
    }
    let mut when = Vec::new();
    for c in w.when {
        cited(&format!("write {:?} when", w.name), &c.cite)?;
        when.push(When {
            backend: c.backend.as_deref().map(parse_backend).transpose()?,
            kernel_before: c.kernel_before.as_deref().map(parse_kernel).transpose()?,
            kvm_cpuid_none: features(&c.kvm_cpuid_none, "when.kvm_cpuid_none")?,
            guest_vendor: c.guest_vendor.as_deref().map(parse_vendor).transpose()?,
            path: c.path.as_deref().map(parse_path).transpose()?,
            emulated: c.emulated,
            outcome: parse_outcome(&c.outcome)?,
            cite: c.cite,
        });
    }
    Ok(WriteRule {
        name: w.name,
        value: w.value,
        before: w.before,
        path: w.path.as_deref().map(parse_path).transpose()?,
        outcome: parse_outcome(&w.outcome)?,
        cite: w.cite,
        when,
        cpuid_clear: features(&w.cpuid_clear, "write.cpuid_clear")?,
    })
}

/// `requires = { caps, kvm_params, cpuid_any, listed, params_listing_since?, cite }`: every name
/// one the code knows.
fn parse_requires(r: RequiresRaw) -> std::result::Result<Requirement, String> {
    cited("requires", &r.cite)?;
    for c in &r.caps {
        if !crate::kvm::facts::MSR_CAPS.iter().any(|(n, _)| n == c) {
            return Err(format!(
                "requires.caps names {c:?}, which kvm/facts.rs MSR_CAPS does not know"
            ));
        }
    }
    for p in &r.kvm_params {
        if !crate::kvm::facts::KVM_PARAMS.contains(&p.as_str()) {
            return Err(format!(
                "requires.kvm_params names {p:?}, which kvm/facts.rs KVM_PARAMS does not read"
            ));
        }
    }
    for f in &r.cpuid_any {
        if crate::kvm::cpuid::feature(f).is_none() {
            return Err(format!(
                "requires.cpuid_any names {f:?}, which kvm/cpuid.rs FEATURES does not know"
            ));
        }
    }
    if r.caps.is_empty() && r.kvm_params.is_empty() && r.cpuid_any.is_empty() && !r.listed {
        return Err("requires names nothing (caps, kvm_params, cpuid_any or listed = true)".into());
    }
    let params_listing_since = match r.params_listing_since {
        None => None,
        Some(since) => {
            cited("requires.params_listing_since", &since.cite)?;
            Some((parse_kernel(&since.kernel)?, since.cite))
        }
    };
    Ok(Requirement {
        caps: r.caps,
        kvm_params: r.kvm_params,
        cpuid_any: r.cpuid_any,
        listed: r.listed,
        cite: r.cite,
        params_listing_since,
    })
}

pub(super) fn parse_rules(m: &mut MsrRaw) -> std::result::Result<Rules, String> {
    let reset = m.reset.take().map(parse_reset).transpose()?;
    let mut writes: Vec<WriteRule> = Vec::new();
    for w in std::mem::take(&mut m.write) {
        let w = parse_write(w)?;
        if writes.iter().any(|x| x.name == w.name) {
            return Err(format!("write name {:?} used twice", w.name));
        }
        writes.push(w);
    }
    let reserved = match m.reserved.take() {
        None => None,
        Some(r) => {
            cited("reserved", &r.cite)?;
            if r.mask == 0 {
                return Err("reserved.mask is 0".into());
            }
            Some(ReservedRule {
                mask: r.mask,
                base: r.base,
                above_maxphyaddr: r.above_maxphyaddr,
                cite: r.cite,
            })
        }
    };
    let read_fails = match m.read_fails.take() {
        None => None,
        Some(r) => {
            cited("read_fails", &r.cite)?;
            Some(PathRule {
                path: r.path.as_deref().map(parse_path).transpose()?,
                cite: r.cite,
            })
        }
    };
    let backends = match m.backends.take() {
        None => None,
        Some(b) => {
            cited("backends", &b.cite)?;
            let list = b
                .only
                .iter()
                .map(|s| parse_backend(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Some((list, b.cite))
        }
    };
    let requires = m.requires.take().map(parse_requires).transpose()?;
    Ok((reset, writes, reserved, read_fails, backends, requires))
}

/// `volatile = { rule, vm_clock?, cite }`.
pub(super) fn parse_volatile(v: VolatileRaw) -> std::result::Result<VolatileRule, String> {
    let rule = match v.rule.as_str() {
        "monotonic" => Volatility::Monotonic,
        "changes" => Volatility::Changes,
        other => {
            return Err(format!(
                "volatile.rule {other:?}: expected \"monotonic\" or \"changes\""
            ))
        }
    };
    if v.cite.trim().is_empty() {
        return Err("volatile.cite is empty".into());
    }
    Ok(VolatileRule {
        rule,
        vm_clock: v.vm_clock,
        cite: v.cite,
    })
}

/// `gate = { cpuid | pv_feature | hyperv | mcg_cap_bit | host_only, host, host_until?, cite }`.
pub(super) fn parse_gate(g: GateRaw) -> std::result::Result<Gate, String> {
    let conds = usize::from(g.cpuid.is_some())
        + usize::from(g.mcg_cap_bit.is_some())
        + usize::from(g.host_only == Some(true))
        + usize::from(g.pv_feature.is_some())
        + usize::from(g.hyperv.is_some());
    if conds != 1 {
        return Err(
                "gate needs exactly one of `cpuid`, `pv_feature`, `hyperv`, `mcg_cap_bit`, `host_only = true`"
                    .into(),
            );
    }
    let condition = if let Some(hv) = g.hyperv {
        GateCondition::Hyperv(match hv.as_str() {
            "interface" => HvGate::Interface,
            "synic" => HvGate::Synic,
            "syndbg" => HvGate::Syndbg,
            other => {
                return Err(format!(
                    "gate.hyperv {other:?}: expected interface, synic or syndbg"
                ))
            }
        })
    } else if let Some(names) = g.pv_feature {
        let mut known = Vec::new();
        for n in &names {
            match crate::kvm::cpuid::feature(n) {
                    Some(f) if f.leaf == 0x4000_0001 => known.push(f.name),
                    _ => return Err(format!("gate.pv_feature names {n:?}, not a KVM_CPUID_FEATURES (0x40000001) bit in kvm/cpuid.rs")),
                }
        }
        GateCondition::PvFeature(known)
    } else if let Some(names) = g.cpuid {
        let mut known = Vec::new();
        for n in &names {
            match crate::kvm::cpuid::feature(n) {
                Some(f) => known.push(f.name),
                None => {
                    return Err(format!(
                        "gate.cpuid names unknown feature {n:?} (see kvm/cpuid.rs FEATURES)"
                    ))
                }
            }
        }
        GateCondition::AnyCpuid(known)
    } else if let Some(b) = g.mcg_cap_bit {
        if b > 63 {
            return Err(format!("gate.mcg_cap_bit {b} is not a bit of a 64-bit MSR"));
        }
        GateCondition::McgCapBit(b)
    } else {
        GateCondition::HostOnly
    };
    let host = parse_host_mode(&g.host)?;
    let host_until = match g.host_until {
        None => None,
        Some(u) => {
            if u.cite.trim().is_empty() {
                return Err("gate.host_until.cite is empty".into());
            }
            Some((parse_kernel(&u.kernel)?, parse_host_mode(&u.host)?, u.cite))
        }
    };
    if g.cite.trim().is_empty() {
        return Err("gate.cite is empty".into());
    }
    Ok(Gate {
        condition,
        host,
        cite: g.cite,
        host_until,
    })
}

/// `setup = [...]`: the steps a machine needs before the MSR behaves as catalogued.
pub(super) fn parse_setup(steps: &[String]) -> std::result::Result<Vec<Setup>, String> {
    steps
        .iter()
        .map(|st| match st.as_str() {
            "x2apic-mode" => Ok(Setup::X2apicMode),
            "hyperv-interface" => Ok(Setup::HypervInterface),
            "hyperv-synic" => Ok(Setup::HypervSynic),
            other => Err(format!(
                "setup {other:?}: expected x2apic-mode, hyperv-interface or hyperv-synic"
            )),
        })
        .collect()
}
