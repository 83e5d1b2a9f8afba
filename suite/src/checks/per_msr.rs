//! Checks generated for every MSR in this host's KVM_GET_MSR_INDEX_LIST: host reads on fresh
//! vCPUs, guest RDMSR against host KVM_GET_MSRS, and repeated reads from both sides.

use super::{hex, Check, Context, Outcome};
use crate::catalogue::{AccessPath, Gate, GateState, HostWhenClosed, MsrInfo, Volatility};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};
use crate::machine::Access;

const ADVERTISED: &str = "api.rst 4.3 (the index list holds the MSRs to save and restore); x86.c kvm_do_msr_access: a host read of an advertised MSR that returns KVM_MSR_RET_UNSUPPORTED succeeds with 0";

fn with_machine(
    ctx: &Context,
    bare: bool,
    f: impl FnOnce(&mut crate::machine::Machine) -> Outcome,
) -> Outcome {
    let m = if bare {
        ctx.bare_machine()
    } else {
        ctx.machine()
    };
    match m {
        Ok(mut m) => f(&mut m),
        Err(e) => Outcome::harness(e),
    }
}

fn host_readable(ctx: &Context, index: u32, bare: bool) -> Outcome {
    let info = ctx.catalogue.get(index);
    with_machine(ctx, bare, |m| {
        let io = m.vcpu.get_msrs(&[index]);
        match (io.result, info.and_then(|i| i.host_read_may_fail.as_ref())) {
            (Ok(1), _) => Outcome::pass(format!("reads {}", hex(io.entries()[0].data))),
            (r, Some(why)) => Outcome::pass(format!("read failed ({r:?}), documented: {why}")),
            (r, None) => Outcome::fail(
                "Ok(1): an index-list MSR is readable by the host",
                format!("{r:?}"),
            ),
        }
    })
}

/// Compare two reads taken in order with no write in between.
fn reads_agree(info: Option<&MsrInfo>, first: u64, second: u64) -> Result<String, String> {
    match info.and_then(|i| i.volatile.as_ref()).map(|v| &v.rule) {
        None if first == second => Ok(format!("both {}", hex(first))),
        None => Err(format!("{} then {}", hex(first), hex(second))),
        Some(Volatility::Monotonic) if second >= first => {
            Ok(format!("{} then {} (monotonic)", hex(first), hex(second)))
        }
        Some(Volatility::Monotonic) => Err(format!(
            "{} then {} (went backwards)",
            hex(first),
            hex(second)
        )),
        Some(Volatility::Changes) => Ok(format!(
            "{} then {} (documented to change)",
            hex(first),
            hex(second)
        )),
    }
}

fn expectation_text(info: Option<&MsrInfo>) -> &'static str {
    match info.and_then(|i| i.volatile.as_ref()).map(|v| &v.rule) {
        None => "equal reads",
        Some(Volatility::Monotonic) => "a second read no smaller than the first",
        Some(Volatility::Changes) => "any values",
    }
}

/// Two reads from `path` with nothing in between agree, or move as the catalogue documents. The
/// host must read an index-list MSR at all (api.rst 4.3, as `host_readable`); the guest may
/// fault, the same way twice.
fn repeat(ctx: &Context, index: u32, path: AccessPath) -> Outcome {
    let info = ctx.catalogue.get(index);
    if let Some(v) = info
        .and_then(|i| i.volatile.as_ref())
        .filter(|v| v.rule == Volatility::Changes)
    {
        return Outcome::skip(format!(
            "the value is documented to change between reads: {}",
            v.cite
        ));
    }
    with_machine(ctx, false, |m| {
        let reads = match m.access(path, &[GuestOp::Rdmsr(index), GuestOp::Rdmsr(index)]) {
            Ok(x) => x,
            Err(d) => return Outcome::died(d),
        };
        match (reads[0], reads[1]) {
            (Access::Read(a), Access::Read(b)) => match reads_agree(info, a, b) {
                Ok(d) => Outcome::pass(d),
                Err(d) => Outcome::fail(expectation_text(info), d),
            },
            _ if path == AccessPath::Host => {
                Outcome::fail("two successful host reads", "a read failed")
            }
            (a, b) if a == b => Outcome::pass(format!("both reads: {a}")),
            (a, b) => Outcome::fail("the same outcome twice", format!("{a}, then {b}")),
        }
    })
}

/// With the MSR's gate closed the guest may not read it (or reads 0 under ignore_msrs), and the
/// host follows the documented mode for a closed gate on this kernel.
fn closed_gate_reads(ctx: &Context, g: &Gate, guest: OpOutcome, after: Option<u64>) -> Outcome {
    // The guest may not read it; the host follows the documented exemption.
    let host_mode = g.host_on(ctx.facts.kernel_version());
    let ignored = ctx.facts.ignore_msrs()
        && matches!(
            host_mode,
            HostWhenClosed::AdvertisedZero | HostWhenClosed::Unsupported
        );
    let guest_ok = if ignored {
        guest == OpOutcome::Read(0)
    } else {
        guest.is_gp()
    };
    let host_ok = match host_mode {
        HostWhenClosed::Exempt | HostWhenClosed::ZeroOnly | HostWhenClosed::WriteUnsupported => {
            after.is_some()
        }
        HostWhenClosed::AdvertisedZero => after == Some(0),
        HostWhenClosed::Unsupported if ignored => after == Some(0),
        HostWhenClosed::Unsupported => after.is_none(),
        HostWhenClosed::Fails => after.is_none(),
    };
    let expected = format!(
        "gate {} closed: guest {}, host read {:?} ({})",
        g.describe(),
        if ignored {
            "reads 0 (ignore_msrs=Y)"
        } else {
            "#GP"
        },
        host_mode,
        g.host_cite(ctx.facts.kernel_version())
    );
    let actual = format!("guest {guest}, host {after:x?}");
    if guest_ok && host_ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(expected, actual)
    }
}

fn guest_matches_host(ctx: &Context, index: u32) -> Outcome {
    let info = ctx.catalogue.get(index);
    with_machine(ctx, false, |m| {
        let gate = info
            .and_then(|i| i.gate.as_ref())
            .map(|g| (g, m.gate_state(g)));
        let before = m.vcpu.get_msr(index);
        let run = m.run_ops(&[GuestOp::Rdmsr(index)]);
        let after = m.vcpu.get_msr(index);
        if let Some(d) = run.death {
            return Outcome::died(d);
        }
        let guest = run.outcomes[0];
        let unmet = info
            .and_then(|i| i.requires.as_ref())
            .map(|r| super::catalogued::unmet(ctx, r))
            .unwrap_or_default();
        if !unmet.is_empty() {
            // Listed although KVM does not support it here (kernels before 6.3 list the PMU
            // MSRs whatever kvm.enable_pmu says): the host gets the advertised-MSR exemption,
            // the guest's access is not handled.
            let guest_ok = guest.is_gp() || guest == OpOutcome::Read(0);
            let actual = format!("guest {guest}, host {after:x?}");
            return if guest_ok && after == Some(0) {
                Outcome::pass(format!(
                    "listed while unsupported ({}): {actual}",
                    unmet.join(", ")
                ))
            } else {
                Outcome::fail(
                    format!("listed while unsupported ({}): host reads 0 (x86.c kvm_get_msr_common default: host_initiated && kvm_is_msr_to_save -> 0, 2de154f541fc, 6.3, in 6.1.167; 6.12+ kvm_do_msr_access), the guest #GPs or reads 0", unmet.join(", ")),
                    actual,
                )
            };
        }
        if let Some((g, GateState::Closed)) = gate {
            return closed_gate_reads(ctx, g, guest, after);
        }
        let gate_note = gate
            .map(|(g, _)| format!(" (gate {} open)", g.describe()))
            .unwrap_or_default();
        match (guest, before, after) {
            (OpOutcome::Read(v), Some(b), Some(a)) => {
                let monotonic = info
                    .and_then(|i| i.volatile.as_ref())
                    .is_some_and(|v| v.rule == Volatility::Monotonic);
                let ok = if monotonic {
                    b <= v && v <= a
                } else {
                    b == v && v == a
                };
                let want = if monotonic {
                    format!("host before {} <= guest <= host after {}", hex(b), hex(a))
                } else {
                    format!("guest = host = {}", hex(a))
                };
                if ok {
                    Outcome::pass(format!("guest {}{gate_note}", hex(v)))
                } else {
                    Outcome::fail(
                        want,
                        format!("guest {}, host before {} after {}", hex(v), hex(b), hex(a)),
                    )
                }
            }
            (OpOutcome::Fault { vector: 13, .. }, None, None) => {
                Outcome::pass("both fail: guest #GP, host read not processed")
            }
            (g, b, a) => Outcome::fail(
                format!("guest RDMSR and host KVM_GET_MSRS agree{gate_note}"),
                format!("guest {g}, host before {b:x?} after {a:x?}"),
            ),
        }
    })
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for &index in &ctx.facts.msr_index_list {
        let id = ctx.catalogue.slug(index);
        let name = ctx.catalogue.name(index);
        let info = ctx.catalogue.get(index);
        let cite = info
            .map(|i| i.cite.clone())
            .unwrap_or_else(|| "not catalogued".into());
        let gate_cite = info
            .and_then(|i| i.gate.as_ref())
            .map_or(String::new(), |g| format!("; gate: {}", g.cite));
        let vol_cite = info
            .and_then(|i| i.volatile.as_ref())
            .map_or(String::new(), |v| format!("; changes: {}", v.cite));
        let repeat_check = |path: AccessPath| {
            let (reads, source) = match path {
                AccessPath::Host => ("host reads", "api.rst 4.18"),
                AccessPath::Guest => ("guest RDMSRs", "SDM vol. 2B RDMSR"),
            };
            Check::new(
                CheckId::msr(path.family(), &id, "repeat-read-stable"),
                Some(index),
                format!("{name}: two {reads} agree (or move as documented)"),
                format!("{source}; {cite}{vol_cite}"),
                move |c| repeat(c, index, path),
            )
        };
        for (kind, bare, vcpu) in [
            ("fresh", false, "with KVM's supported CPUID"),
            ("bare", true, "that never saw KVM_SET_CPUID2"),
        ] {
            v.push(Check::new(
                CheckId::msr(Family::Host, &id, format!("readable-{kind}")),
                Some(index),
                format!("{name}: KVM_GET_MSRS succeeds on a fresh vCPU {vcpu}"),
                format!("{ADVERTISED}; {cite}"),
                move |c| host_readable(c, index, bare),
            ));
        }
        v.push(repeat_check(AccessPath::Host));
        v.push(Check::new(
            CheckId::msr(Family::Guest, &id, "matches-host"),
            Some(index),
            format!("{name}: guest RDMSR returns what KVM_GET_MSRS returns, or both fail as documented"),
            format!("x86.c kvm_emulate_msr_read and do_get_msr share kvm_get_msr_ignored_check; {cite}{gate_cite}{vol_cite}"),
            move |c| guest_matches_host(c, index),
        ));
        v.push(repeat_check(AccessPath::Guest));
    }
    v
}
