//! The catalogue as a reference a developer reads: `kvm-msr list`.

use super::*;

fn outcome_text(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Same => "reads back",
        WriteOutcome::Low32 => "reads back the low 32 bits",
        WriteOutcome::Canonical => "reads back canonicalized",
        WriteOutcome::Canonical48 => "reads back canonicalized at 48 bits",
        WriteOutcome::Ignored => "accepted, value unchanged",
        WriteOutcome::ReadsZero => "accepted, reads 0",
        WriteOutcome::Rejected => "rejected (#GP / KVM_SET_MSRS stops)",
        WriteOutcome::Unsupported => {
            "rejected as unsupported (with kvm.ignore_msrs: accepted, value unchanged)"
        }
    }
}

fn path_text(p: Option<AccessPath>) -> &'static str {
    match p {
        None => "host+guest",
        Some(AccessPath::Host) => "host",
        Some(AccessPath::Guest) => "guest",
    }
}

/// Entries whose index (hex), name or id contains `filter` (case-insensitive); all if empty.
pub fn select<'a>(c: &'a Catalogue, filters: &[String]) -> Vec<&'a MsrInfo> {
    c.msrs
        .values()
        .filter(|m| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    let f = f.to_ascii_lowercase();
                    format!("{:#x}", m.index).contains(&f)
                        || m.name.to_ascii_lowercase().contains(&f)
                        || m.id.contains(&f)
                })
        })
        .collect()
}

/// One block per MSR, every rule with its source.
pub fn text(entries: &[&MsrInfo], with_sources: bool) -> String {
    let mut out = String::new();
    for m in entries {
        let src = |c: &str| {
            if with_sources {
                format!("   — {c}")
            } else {
                String::new()
            }
        };
        out.push_str(&format!("{:#010x}  {}  [{}]\n", m.index, m.name, m.id));
        if with_sources {
            out.push_str(&format!("    defined: {}\n", m.cite));
        }
        availability_lines(&mut out, m, &src);
        if let Some(r) = &m.reset {
            let mut s = format!("{:#x}", r.value);
            for (b, v, _) in &r.by_backend {
                s.push_str(&format!(" ({}: {v:#x})", b.name()));
            }
            for (q, v, _) in &r.quirk_off {
                s.push_str(&format!(" ({} disabled: {v:#x})", q.name()));
            }
            out.push_str(&format!("    reset: {s}{}\n", src(&r.cite)));
        }
        for w in &m.writes {
            write_lines(&mut out, w, &src);
        }
        if let Some(r) = &m.reserved {
            out.push_str(&format!(
                "    reserved bits: {:#x} (each rejected alone){}\n",
                r.mask,
                src(&r.cite)
            ));
        }
        if let Some(r) = &m.read_fails {
            out.push_str(&format!(
                "    reads fail ({}): write-only{}\n",
                path_text(r.path),
                src(&r.cite)
            ));
        }
        if let Some(v) = &m.volatile {
            out.push_str(&format!(
                "    changes on its own: {:?}{}\n",
                v.rule,
                src(&v.cite)
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!("{} MSRs\n", entries.len()));
    out
}

/// Where the MSR exists at all: backends, listing requirements, its CPUID gate.
fn availability_lines(out: &mut String, m: &MsrInfo, src: &dyn Fn(&str) -> String) {
    if let Some((b, c)) = &m.backends {
        let names: Vec<&str> = b.iter().map(|x| x.name()).collect();
        out.push_str(&format!(
            "    backends: only {}{}\n",
            names.join(", "),
            src(c)
        ));
    }
    if let Some(r) = &m.requires {
        let mut need: Vec<String> = r.caps.clone();
        need.extend(r.kvm_params.iter().map(|p| format!("kvm.{p}=Y")));
        if !r.cpuid_any.is_empty() {
            need.push(format!("supported CPUID {}", r.cpuid_any.join(" or ")));
        }
        if r.listed {
            need.push("listed by this host's KVM".into());
        }
        out.push_str(&format!(
            "    requires: {}{}\n",
            need.join(", "),
            src(&r.cite)
        ));
    }
    if let Some(g) = &m.gate {
        out.push_str(&format!(
            "    gate: {}; host while closed: {:?}{}\n",
            g.describe(),
            g.host,
            src(&g.cite)
        ));
        if let Some((v, h, c)) = &g.host_until {
            out.push_str(&format!(
                "        kernels before {v}: host while closed: {h:?}{}\n",
                src(c)
            ));
        }
    }
}

/// One write rule and its conditional outcomes.
fn write_lines(out: &mut String, w: &WriteRule, src: &dyn Fn(&str) -> String) {
    let cleared = if w.cpuid_clear.is_empty() {
        String::new()
    } else {
        format!(
            ", with {} cleared from the vCPU's CPUID",
            w.cpuid_clear.join(", ")
        )
    };
    out.push_str(&format!(
        "    write {} {:#x} ({}{cleared}): {}{}\n",
        w.name,
        w.value,
        path_text(w.path),
        outcome_text(w.outcome),
        src(&w.cite)
    ));
    for c in &w.when {
        let mut cond = Vec::new();
        if let Some(b) = c.backend {
            cond.push(format!("backend {}", b.name()));
        }
        if let Some(v) = c.guest_vendor {
            cond.push(format!("{v:?}-compatible guest"));
        }
        if let Some(p) = c.path {
            cond.push(format!("{p:?} path"));
        }
        if let Some(e) = c.emulated {
            cond.push(
                if e {
                    "through KVM's emulator"
                } else {
                    "not through KVM's emulator"
                }
                .into(),
            );
        }
        if let Some(v) = c.kernel_before {
            cond.push(format!("kernel before {v}"));
        }
        if !c.kvm_cpuid_none.is_empty() {
            cond.push(format!(
                "KVM's CPUID has none of {}",
                c.kvm_cpuid_none.join(", ")
            ));
        }
        out.push_str(&format!(
            "        when {}: {}{}\n",
            cond.join(", "),
            outcome_text(c.outcome),
            src(&c.cite)
        ));
    }
}
