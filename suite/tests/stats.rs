//! KVM binary statistics on the real KVM (kvm::stats): a vCPU's counters open, parse and move
//! when the guest exits. Without /dev/kvm the test is ignored with the reason; with
//! KVM_MSR_REQUIRE_KVM=1 that is a failure instead. Without KVM_CAP_BINARY_STATS_FD it is
//! ignored with that reason.

use kvm_msr_suite::checks::Context;
use kvm_msr_suite::kvm::stats::{StatsError, VcpuStats};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn require_kvm() -> bool {
    std::env::var("KVM_MSR_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

fn vcpu_counters_move_with_guest_exits() -> Result<Completion, Failed> {
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e) if e.is_kvm_unavailable() && !require_kvm() => {
            return Ok(Completion::ignored_with(format!("KVM unavailable: {e}")))
        }
        Err(e) => return Err(Failed::from(e.to_string())),
    };
    let mut m = ctx.machine().map_err(|e| e.to_string())?;
    let mut stats = match VcpuStats::open(&m.vcpu, ctx.facts.cap("KVM_CAP_BINARY_STATS_FD")) {
        Ok(s) => s,
        Err(StatsError::CapAbsent) => {
            return Ok(Completion::ignored_with(StatsError::CapAbsent.to_string()))
        }
        Err(e) => return Err(Failed::from(e.to_string())),
    };
    println!("{}: {}", stats.layout.id, stats.names().join(" "));
    let before = stats.snapshot().map_err(|e| e.to_string())?;
    const RUNS: u64 = 10;
    for _ in 0..RUNS {
        let r = m.run_ops(&[]);
        if let Some(d) = r.death {
            return Err(Failed::from(d.to_string()));
        }
    }
    let d = stats.snapshot().map_err(|e| e.to_string())?.since(&before);
    println!("after {RUNS} empty programs: {:?}", d.values);
    // Each run ends with an OUT to userspace, which is at least one exit (x86.c
    // kvm_vcpu_stats_desc has `exits`; `io_exits` is counted by the VMX/SVM I/O handlers only,
    // so it is not required).
    match d.get("exits") {
        Some(n) if n >= RUNS => Ok(Completion::Completed),
        Some(n) => Err(Failed::from(format!(
            "`exits` grew by {n} over {RUNS} PIO exits to userspace"
        ))),
        None => Err(Failed::from(format!(
            "no `exits` counter among {:?} (x86.c kvm_vcpu_stats_desc always has it)",
            stats.names()
        ))),
    }
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "stats.vcpu-counters-move-with-guest-exits",
        vcpu_counters_move_with_guest_exits,
    )];
    libtest_mimic::run(&args, trials).exit();
}
