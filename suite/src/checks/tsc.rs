//! IA32_TSC and IA32_TSC_ADJUST side effects (x86.c kvm_set_msr_common MSR_IA32_TSC /
//! MSR_IA32_TSC_ADJUST, kvm_synchronize_tsc; SDM vol. 3B 18.17.3; selftests tsc_msrs_test).
//! Tolerances come from the vCPU's TSC frequency (KVM_GET_TSC_KHZ), never from magic numbers.

use super::{hex, Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};
use crate::machine::Machine;
use crate::msr_index::IA32_TSC;
use std::time::Instant;

use crate::msr_index::IA32_TSC_ADJUST as TSC_ADJUST;

/// Ticks per `ns` nanoseconds at `khz`.
fn ticks(ns: u128, khz: u64) -> u64 {
    (ns * u128::from(khz) / 1_000_000) as u64
}

struct Clock {
    khz: u64,
    start: Instant,
}

impl Clock {
    fn new(m: &Machine) -> Result<Clock, Outcome> {
        match m.vcpu.fd.get_tsc_khz() {
            Ok(k) if k > 0 => Ok(Clock {
                khz: u64::from(k),
                start: Instant::now(),
            }),
            _ => Err(Outcome::skip(
                "KVM_GET_TSC_KHZ unavailable: no tolerance can be derived",
            )),
        }
    }
    /// Ticks since the clock started, doubled, plus 10 ms of ticks for scheduling noise.
    fn bound(&self) -> u64 {
        2 * ticks(self.start.elapsed().as_nanos(), self.khz) + self.khz * 10
    }
    /// Ten seconds of ticks: far outside KVM's one-second synchronisation window.
    fn jump(&self) -> u64 {
        self.khz * 10_000
    }
}

fn machine(ctx: &Context) -> Result<(Machine, Clock), Outcome> {
    let m = ctx.machine().map_err(Outcome::harness)?;
    let c = Clock::new(&m)?;
    Ok((m, c))
}

fn host_write_tsc(ctx: &Context) -> Outcome {
    let (m, clock) = match machine(ctx) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let (Some(t0), Some(adj0)) = (m.vcpu.get_msr(IA32_TSC), m.vcpu.get_msr(TSC_ADJUST)) else {
        return Outcome::fail("TSC and TSC_ADJUST readable", "a read failed");
    };
    let v = t0 + clock.jump();
    if !m.vcpu.set_msr(IA32_TSC, v) {
        return Outcome::fail(
            format!("KVM_SET_MSRS of TSC = {} accepted", hex(v)),
            "refused",
        );
    }
    let (t1, adj1) = (
        m.vcpu.get_msr(IA32_TSC).unwrap_or(0),
        m.vcpu.get_msr(TSC_ADJUST),
    );
    let ok = t1 >= v && t1 <= v + clock.bound() && adj1 == Some(adj0);
    let actual = format!(
        "wrote {}, reads {} (+{}), TSC_ADJUST {} -> {adj1:x?}",
        hex(v),
        hex(t1),
        t1.wrapping_sub(v) as i64,
        hex(adj0)
    );
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "the TSC reads the written value plus elapsed ticks, TSC_ADJUST unchanged",
            actual,
        )
    }
}

fn guest_write_tsc(ctx: &Context) -> Outcome {
    let (mut m, clock) = match machine(ctx) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let Some(t0) = m.vcpu.get_msr(IA32_TSC) else {
        return Outcome::fail("TSC readable", "read failed");
    };
    let v = t0 + clock.jump();
    let run = m.run_ops(&[
        GuestOp::Wrmsr(IA32_TSC, v),
        GuestOp::Rdmsr(IA32_TSC),
        GuestOp::Rdmsr(TSC_ADJUST),
    ]);
    if let Some(d) = run.death {
        return Outcome::died(d);
    }
    let (OpOutcome::Read(t1), OpOutcome::Read(adj)) = (run.outcomes[1], run.outcomes[2]) else {
        return Outcome::fail(
            "the guest writes and reads back TSC and TSC_ADJUST",
            format!("{:?}", run.outcomes),
        );
    };
    // TSC_ADJUST absorbs the delta the write applied: v - (TSC at the write), within the bound.
    let delta_max = clock.jump() + clock.bound();
    let ok = run.outcomes[0] == OpOutcome::Wrote
        && t1 >= v
        && t1 <= v + clock.bound()
        && adj <= delta_max
        && adj + clock.bound() >= clock.jump();
    let actual = format!(
        "wrote {}, reads {}, TSC_ADJUST {}",
        hex(v),
        hex(t1),
        hex(adj)
    );
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(format!("the guest reads about {} and TSC_ADJUST grows by about the {} ticks the write added", hex(v), clock.jump()), actual)
    }
}

fn guest_write_adjust(ctx: &Context) -> Outcome {
    let (mut m, clock) = match machine(ctx) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let d = clock.jump();
    let run = m.run_ops(&[
        GuestOp::Rdmsr(IA32_TSC),
        GuestOp::Wrmsr(TSC_ADJUST, d),
        GuestOp::Rdmsr(IA32_TSC),
        GuestOp::Rdmsr(TSC_ADJUST),
    ]);
    if let Some(death) = run.death {
        return Outcome::died(death);
    }
    let (OpOutcome::Read(t0), OpOutcome::Read(t1), OpOutcome::Read(adj)) =
        (run.outcomes[0], run.outcomes[2], run.outcomes[3])
    else {
        return Outcome::fail(
            "the guest reads TSC and TSC_ADJUST",
            format!("{:?}", run.outcomes),
        );
    };
    let ok = adj == d && t1 >= t0 + d && t1 <= t0 + d + clock.bound();
    let actual = format!(
        "TSC {} -> {} (+{}), TSC_ADJUST {}",
        hex(t0),
        hex(t1),
        t1.wrapping_sub(t0),
        hex(adj)
    );
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            format!(
                "TSC_ADJUST reads {} and the TSC moves forward by it (SDM vol. 3B 18.17.3)",
                hex(d)
            ),
            actual,
        )
    }
}

fn host_write_adjust(ctx: &Context) -> Outcome {
    let (m, clock) = match machine(ctx) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let Some(t0) = m.vcpu.get_msr(IA32_TSC) else {
        return Outcome::fail("TSC readable", "read failed");
    };
    let d = clock.jump();
    if !m.vcpu.set_msr(TSC_ADJUST, d) {
        return Outcome::fail("KVM_SET_MSRS of TSC_ADJUST accepted", "refused");
    }
    let (t1, adj) = (
        m.vcpu.get_msr(IA32_TSC).unwrap_or(0),
        m.vcpu.get_msr(TSC_ADJUST),
    );
    let ok = adj == Some(d) && t1 >= t0 && t1 <= t0 + clock.bound();
    let actual = format!("TSC {} -> {}, TSC_ADJUST {adj:x?}", hex(t0), hex(t1));
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            format!("TSC_ADJUST reads {} and the TSC does not jump", hex(d)),
            actual,
        )
    }
}

/// Host writes of the same TSC value to two vCPUs of a VM leave them synchronised.
fn two_vcpus_synchronised(ctx: &Context) -> Outcome {
    let (m, clock) = match machine(ctx) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let v1 = match m.vm.create_vcpu(
        1,
        &crate::kvm::CpuidPolicy::Table(ctx.facts.supported_cpuid.clone()),
    ) {
        Ok(v) => v,
        Err(e) => return Outcome::harness(e),
    };
    let Some(t0) = m.vcpu.get_msr(IA32_TSC) else {
        return Outcome::fail("TSC readable", "read failed");
    };
    let v = t0 + clock.jump();
    if !(m.vcpu.set_msr(IA32_TSC, v) && v1.set_msr(IA32_TSC, v)) {
        return Outcome::fail("both host writes accepted", "refused");
    }
    let a = m.vcpu.get_msr(IA32_TSC).unwrap_or(0);
    let b = v1.get_msr(IA32_TSC).unwrap_or(0);
    let ok = b >= a && b - a <= clock.bound();
    let actual = format!(
        "vCPU0 reads {}, then vCPU1 reads {} ({} ticks later)",
        hex(a),
        hex(b),
        b.wrapping_sub(a) as i64
    );
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "vCPU1's read is at most the elapsed ticks after vCPU0's",
            actual,
        )
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    vec![
        Check::new(CheckId::fixed(Family::Tsc, "host-write.sets-value-not-adjust"), Some(IA32_TSC), "a host write of IA32_TSC sets what the vCPU reads and leaves TSC_ADJUST alone", "x86.c kvm_set_msr_common MSR_IA32_TSC (host_initiated -> kvm_synchronize_tsc; no TSC_ADJUST change); selftests tsc_msrs_test", host_write_tsc),
        Check::new(CheckId::fixed(Family::Tsc, "guest-write.moves-adjust"), Some(IA32_TSC), "a guest WRMSR of IA32_TSC sets the TSC and adds the delta to TSC_ADJUST", "SDM vol. 3B 18.17.3 (a TSC write adjusts IA32_TSC_ADJUST by the same amount); x86.c kvm_set_msr_common MSR_IA32_TSC: ia32_tsc_adjust_msr += adj", guest_write_tsc),
        Check::new(CheckId::fixed(Family::Tsc, "guest-adjust.moves-tsc"), Some(TSC_ADJUST), "a guest WRMSR of IA32_TSC_ADJUST moves the TSC by the difference", "SDM vol. 3B 18.17.3; x86.c kvm_set_msr_common MSR_IA32_TSC_ADJUST: adjust_tsc_offset_guest(vcpu, data - old)", guest_write_adjust),
        Check::new(CheckId::fixed(Family::Tsc, "host-adjust.keeps-tsc"), Some(TSC_ADJUST), "a host write of IA32_TSC_ADJUST is stored without moving the TSC", "x86.c kvm_set_msr_common MSR_IA32_TSC_ADJUST: host_initiated writes only store the value; selftests tsc_msrs_test", host_write_adjust),
        Check::new(CheckId::fixed(Family::Tsc, "two-vcpus.synchronised"), Some(IA32_TSC), "two vCPUs given the same TSC by the host read synchronised values", "x86.c kvm_synchronize_tsc (one TSC generation per VM)", two_vcpus_synchronised),
    ]
}
