//! The CPUID gate with its bit cleared, and MSRs whose reads fail or are ignored.

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, GateCondition, GateState, HostWhenClosed, MsrInfo};
use crate::guest::GuestOp;
use crate::kvm::cpuid::{self};
use crate::machine::Access;

/// A read of a write-only MSR fails from `path`: the host's entry is not processed, the guest
/// takes #GP (`Access::rejected`), or under kvm.ignore_msrs it reads 0.
pub(super) fn read_fails(ctx: &Context, index: u32, path: AccessPath) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let mut mach = match machine_for(ctx, m, None) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    let reader = reader(path);
    match mach.read(path, index) {
        Err(d) => Outcome::died(d),
        Ok(a) if a.rejected() => Outcome::pass(match path {
            AccessPath::Host => "host read not processed",
            AccessPath::Guest => "guest RDMSR #GP",
        }),
        Ok(a) if write_only_read_ignored(ctx, m, a) => {
            Outcome::pass(format!("{reader} read 0 (kvm.ignore_msrs=Y)"))
        }
        Ok(a) => match a.ioctl_result() {
            Some(r) => Outcome::fail("Ok(0): the host read fails", format!("{r:?}")),
            None => Outcome::fail("guest RDMSR #GP", a.to_string()),
        },
    }
}

/// A read of a write-only MSR that read 0 under kvm.ignore_msrs: where KVM's read handler has
/// no case for it (kvm_get_msr_common's default, KVM_MSR_RET_UNSUPPORTED), kvm_do_msr_access
/// reports success with 0 (semantics §1.6 step 5); handlers that return 1 still fail. Which one
/// applies is per MSR, so under ignore_msrs either is accepted.
pub(super) fn write_only_read_ignored(ctx: &Context, m: &MsrInfo, read: Access) -> bool {
    ctx.facts.ignore_msrs() && m.read_fails.is_some() && read == Access::Read(0)
}

/// Clear the gate's CPUID bits (or use the default MCG_CAP) and check both paths.
/// A machine on which the MSR's gate is closed: the gating CPUID features cleared, the MSR's
/// setup applied with its gates left closed, PV feature enforcement on for a PV gate. A skip
/// where the gate cannot be closed.
fn closed_gate_machine(ctx: &Context, m: &MsrInfo) -> Result<Machine, Outcome> {
    let g = m.gate.as_ref().expect("gate rule");
    let mut t = ctx.facts.supported_cpuid.clone();
    if let GateCondition::AnyCpuid(names) | GateCondition::PvFeature(names) = &g.condition {
        for n in names {
            t.set(cpuid::feature(n).expect("validated name"), false);
        }
    }
    let mut mach = match ctx
        .machine_with_cpuid(t)
        .and_then(|mut x| apply_setup(&mut x, m, false).map(|()| x))
    {
        Ok(x) => x,
        Err(e) => return Err(Outcome::harness(e)),
    };
    if matches!(g.condition, GateCondition::PvFeature(_)) {
        if ctx.facts.cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID") <= 0 {
            return Err(Outcome::skip(
                "KVM_CAP_ENFORCE_PV_FEATURE_CPUID is absent: KVM never gates the PV MSRs",
            ));
        }
        if let Err(errno) = mach.vcpu.enforce_pv_cpuid() {
            return Err(Outcome::fail(
                "KVM_ENABLE_CAP(KVM_CAP_ENFORCE_PV_FEATURE_CPUID) on the vCPU",
                format!("errno {errno}"),
            ));
        }
    }
    if gate_state(m, &mach) == Some(GateState::Open) {
        return Err(Outcome::skip(format!(
            "could not close gate {}: it is still open in the effective CPUID/state",
            g.describe()
        )));
    }
    Ok(mach)
}

/// The host's read of an MSR whose gate is closed, in `mode` (`zero_ok`: an UNSUPPORTED access of
/// 0 succeeds here, because KVM lists the MSR or ignore_msrs is on).
fn host_read_ok(mode: HostWhenClosed, zero_ok: bool, host: Option<u64>) -> bool {
    match mode {
        HostWhenClosed::Exempt | HostWhenClosed::ZeroOnly | HostWhenClosed::WriteUnsupported => {
            host.is_some()
        }
        HostWhenClosed::AdvertisedZero | HostWhenClosed::Unsupported if zero_ok => host == Some(0),
        HostWhenClosed::AdvertisedZero | HostWhenClosed::Unsupported | HostWhenClosed::Fails => {
            host.is_none()
        }
    }
}

/// With the gate closed the guest faults (or, under ignore_msrs, reads 0 and its writes are
/// dropped), and the host follows the documented mode for a closed gate on this kernel.
pub(super) fn gate_closed(ctx: &Context, index: u32) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let g = m.gate.as_ref().expect("gate rule");
    let mut mach = match closed_gate_machine(ctx, m) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let value = m.writes.first().map(|w| w.value).unwrap_or(0);
    let host = mach.vcpu.get_msr(index);
    // Host writes of an UNSUPPORTED MSR (x86.c kvm_do_msr_access, semantics §1.6 step 3): a
    // write of 0 succeeds if KVM lists the MSR, any other value fails; under ignore_msrs both
    // succeed and are dropped. Before KVM_RUN: after it, do_set_msr refuses any change to an
    // immutable feature MSR (ARCH_CAPABILITIES, PERF_CAPABILITIES) before that rule applies.
    // A zero-only MSR: 0 accepted, any other value refused, ignore_msrs or not. Write-unsupported:
    // writes as UNSUPPORTED, reads as exempt (host) or #GP (guest), ignore_msrs or not.
    let nonzero = if value != 0 { value } else { 1 };
    let host_mode = g.host_on(ctx.facts.kernel_version());
    let zero_only = host_mode == HostWhenClosed::ZeroOnly;
    let reads_gated = host_mode != HostWhenClosed::WriteUnsupported;
    let exemption = matches!(
        host_mode,
        HostWhenClosed::AdvertisedZero | HostWhenClosed::WriteUnsupported
    );
    let unsupported = exemption || host_mode == HostWhenClosed::Unsupported;
    let writes = (unsupported || zero_only).then(|| {
        (
            mach.vcpu.set_msr(index, 0),
            mach.vcpu.set_msr(index, nonzero),
        )
    });
    let guest = [GuestOp::Rdmsr(index), GuestOp::Wrmsr(index, value)];
    let (rd, wr) = match mach.access(AccessPath::Guest, &guest) {
        Ok(x) => (x[0], x[1]),
        Err(d) => return Outcome::died(d),
    };
    let ignore = ctx.facts.ignore_msrs();
    let ignored = ignore && unsupported;
    // An UNSUPPORTED host access with value 0 succeeds: listed (the 0-exemption, where the
    // kernel has it for this MSR) or ignore_msrs.
    let zero_ok = (exemption && ctx.facts.is_advertised(index)) || ignore;
    let guest_ok = if ignored {
        (if reads_gated {
            rd == Access::Read(0)
        } else {
            rd.is_gp()
        }) && wr == Access::Wrote
    } else {
        (rd.is_gp() || write_only_read_ignored(ctx, m, rd)) && wr.is_gp()
    };
    let host_ok = m.read_fails.is_some() || host_read_ok(host_mode, zero_ok, host); // write-only: no read
    let writes_ok = writes.is_none_or(|(zero, other)| {
        if zero_only {
            zero && !other
        } else {
            zero == zero_ok && other == ignore
        }
    });
    let shown = |ok: bool| if ok { "accepted" } else { "rejected" };
    let actual = format!(
        "guest RDMSR {rd}, WRMSR {} {wr}; host read {host:x?}{}",
        hex(value),
        writes.map_or(String::new(), |(zero, other)| format!(
            ", host write 0 {}, {} {}",
            shown(zero),
            hex(nonzero),
            shown(other)
        ))
    );
    if guest_ok && host_ok && writes_ok {
        Outcome::pass(actual)
    } else {
        let host_rule = match (unsupported, zero_ok, ignore) {
            _ if zero_only => format!(" (a host write of 0 succeeds, of {} fails)", hex(nonzero)),
            (false, _, _) => String::new(),
            (true, _, true) => " (ignore_msrs: host reads 0, writes dropped)".into(),
            (true, true, false) => format!(
                " (advertised: host reads 0, a host write of 0 succeeds, of {} fails)",
                hex(nonzero)
            ),
            (true, false, false) => " (not advertised: host reads and writes fail)".into(),
        };
        let guest_rule = if ignored && !reads_gated {
            "RDMSR #GP, WRMSR dropped (ignore_msrs=Y: only the write handler returns UNSUPPORTED)"
        } else if ignored {
            "reads 0 and writes are dropped (ignore_msrs=Y)"
        } else {
            "RDMSR and WRMSR #GP"
        };
        Outcome::fail(
            format!(
                "guest {guest_rule} ; host {host_mode:?}{host_rule} ({})",
                g.host_cite(ctx.facts.kernel_version())
            ),
            actual,
        )
    }
}

/// `host|guest.<msr>.read-fails`.
pub(super) fn read_fails_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
    if let Some(r) = &m.read_fails {
        for path in [AccessPath::Host, AccessPath::Guest] {
            if r.path.is_some_and(|p| p != path) {
                continue;
            }
            v.push(Check::new(
                CheckId::msr(path.family(), &id, "read-fails"),
                Some(index),
                format!("{name}: reads fail (write-only)"),
                r.cite.clone(),
                move |c| read_fails(c, index, path),
            ));
        }
    }
}

/// `guest.<msr>.gate-closed`.
pub(super) fn gate_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
    if let Some(g) = &m.gate {
        v.push(Check::new(
            CheckId::msr(Family::Guest, &id, "gate-closed"),
            Some(index),
            format!("{name}: with {} absent the guest faults and the host follows the documented exemption", g.describe()),
            g.cite.clone(),
            move |c| gate_closed(c, index),
        ));
    }
}
