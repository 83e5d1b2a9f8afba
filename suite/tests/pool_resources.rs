//! The `host` fuzz target's vCPU pool gives back what it takes: a pool whose inputs take vCPUs
//! faster than its supplier thread makes them still destroys the ones it was given back.
//! `fuzzing.pool.fresh-burials-keep-up`: a fresh-VM pool (the `pool-equivalence` reference) taken
//! from and given back to in a tight loop; the process's open fds may grow by no more than the
//! pool's bounded queues hold. (Its own test binary: the fd count is the whole process's, which
//! tests running beside it in one binary would change.)
//! Without /dev/kvm it is ignored with the reason; with KVM_MSR_REQUIRE_KVM=1 that fails instead.

use kvm_msr_suite::checks::Context;
use kvm_msr_suite::fuzzing::pool::{PoolMode, VcpuPool};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Inputs before the first count (the supplier fills its stock) and between the two counts.
const WARM_UP: usize = 20;
const ROUNDS: usize = 300;

/// Most fds the pool's queues may hold beyond the first count: new vCPUs kept ready (8), vCPUs
/// waiting for their burial (16), VMs waiting for the reaper (16) and the one being destroyed,
/// each a VM fd and a vCPU fd in fresh mode, with room to spare. A pool that stopped burying
/// would grow by two fds per round, 600 here.
const FD_GROWTH_MAX: usize = 100;

fn open_fds() -> Result<usize, Failed> {
    Ok(std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .count())
}

fn fresh_burials_keep_up() -> Result<Completion, Failed> {
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e)
            if e.is_kvm_unavailable()
                && std::env::var("KVM_MSR_REQUIRE_KVM").as_deref() != Ok("1") =>
        {
            return Ok(Completion::ignored_with(format!("needs /dev/kvm: {e}")));
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let mut pool = VcpuPool::new(&ctx, PoolMode::Fresh, true).map_err(|e| e.to_string())?;
    let mut round = |n: usize| -> Result<(), Failed> {
        for _ in 0..n {
            let v = pool.take(false).map_err(|e| e.to_string())?;
            pool.give_back(v);
        }
        Ok(())
    };
    round(WARM_UP)?;
    let before = open_fds()?;
    round(ROUNDS)?;
    let after = open_fds()?;
    if after > before + FD_GROWTH_MAX {
        return Err(format!(
            "open fds grew from {before} to {after} over {ROUNDS} take/give-back rounds of a \
             fresh-VM pool (at most {FD_GROWTH_MAX} allowed): the supplier does not destroy the \
             vCPUs it is given back"
        )
        .into());
    }
    Ok(Completion::Completed)
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "fuzzing.pool.fresh-burials-keep-up",
        fresh_burials_keep_up,
    )];
    libtest_mimic::run(&args, trials).exit();
}
