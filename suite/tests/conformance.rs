//! Every conformance check as its own named test: `cargo test -- guest.tsc` filters by id.
//!
//! A skip is an ignored test with its reason; a recorded backend deviation is an ignored test
//! that says "known deviation"; neither counts as a pass. Without /dev/kvm the checks cannot be
//! enumerated: one test, `kvm.available`, says why, and fails instead when KVM_MSR_REQUIRE_KVM=1.

use kvm_msr_suite::checks::{self, Context};
use kvm_msr_suite::fuzzing;
use kvm_msr_suite::runner::{run_check, Verdict};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::sync::Arc;

fn require_kvm() -> bool {
    std::env::var("KVM_MSR_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

fn trials() -> Vec<Trial> {
    let ctx = match Context::load() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let msg = e.to_string();
            let unavailable = e.is_kvm_unavailable();
            return vec![Trial::ignorable_test("kvm.available", move || {
                if unavailable && !require_kvm() {
                    Ok(Completion::ignored_with(format!(
                        "KVM checks skipped: {msg}"
                    )))
                } else {
                    Err(Failed::from(msg))
                }
            })];
        }
    };
    let mut trials: Vec<Trial> = checks::all(&ctx)
        .into_iter()
        .map(|check| {
            let ctx = Arc::clone(&ctx);
            Trial::ignorable_test(check.id.to_string(), move || {
                let r = run_check(&check, &ctx);
                match r.verdict {
                    Verdict::Pass => Ok(Completion::Completed),
                    Verdict::Skip => Ok(Completion::ignored_with(format!("skip: {}", r.detail))),
                    Verdict::Deviation => Ok(Completion::ignored_with(format!(
                        "known {} deviation: {}",
                        r.deviation
                            .as_ref()
                            .map(|d| d.backend.as_str())
                            .unwrap_or(""),
                        r.detail
                    ))),
                    Verdict::Fail => Err(Failed::from(format!(
                        "{}\n  expected: {}\n  actual:   {}\n  {}\n  source:   {}",
                        r.summary,
                        r.expected.as_deref().unwrap_or("-"),
                        r.actual.as_deref().unwrap_or("-"),
                        r.detail,
                        r.cite
                    ))),
                }
            })
        })
        .collect();
    trials.extend(corpus_trials(&ctx));
    trials
}

/// A `host` seed file, decoded as libfuzzer-sys decodes it.
fn host_seed(path: &std::path::Path) -> Result<fuzzing::HostInput, Failed> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(
        fuzzing::decode_host(&bytes)
            .map_err(|e| format!("{}: undecodable: {e}", path.display()))?,
    )
}

/// Seed inputs of the fuzz targets, replayed through the same executors and oracles.
fn corpus_trials(ctx: &Arc<Context>) -> Vec<Trial> {
    let mut v = Vec::new();
    for target in fuzzing::Target::ALL {
        for path in target.corpus_files() {
            let ctx = Arc::clone(ctx);
            let name = format!(
                "corpus.{target}.{}",
                path.file_name().unwrap().to_string_lossy()
            );
            v.push(Trial::test(name, move || {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (described, result) = target
                    .replay(&ctx, &bytes)
                    .map_err(|e| format!("{}: undecodable: {e}", path.display()))?;
                result.map_err(|v| Failed::from(format!("{v}\ninput: {described}")))
            }));
        }
    }
    // The host target reuses vCPUs: all its seeds in a row on one pool, each also on a fresh VM,
    // must observe the same (results never depend on what an earlier input did).
    let seeds_ctx = Arc::clone(ctx);
    v.push(Trial::test(
        "corpus.host.all-seeds-on-one-pool",
        move || {
            let ctx = seeds_ctx;
            let mut runner =
                fuzzing::HostRunner::new(&ctx, fuzzing::pool::PoolMode::Reuse, 1, true)
                    .map_err(|e| Failed::from(e.to_string()))?;
            let files = fuzzing::Target::Host.corpus_files();
            if files.is_empty() {
                return Err(Failed::from("no seeds in fixtures/corpus/host"));
            }
            for path in files {
                let input = host_seed(&path)?;
                runner
                    .run(&ctx, &input, &mut fuzzing::Features::default())
                    .map_err(|v| Failed::from(format!("{}: {v}", path.display())))?;
            }
            Ok(())
        },
    ));
    // pool-equivalence compares traces: an input run to be compared keeps at least one entry per
    // operation, one that is not keeps none (and two empty traces would compare equal).
    let trace_ctx = Arc::clone(ctx);
    v.push(Trial::test(
        "fuzzing.host.trace-kept-only-when-compared",
        move || {
            let ctx = trace_ctx;
            let mut pool =
                fuzzing::pool::VcpuPool::new(&ctx, fuzzing::pool::PoolMode::Reuse, false)
                    .map_err(|e| Failed::from(e.to_string()))?;
            let lookups = fuzzing::Lookups::of(&ctx);
            let mut checked = 0;
            for path in fuzzing::Target::Host.corpus_files() {
                let input = host_seed(&path)?;
                let ops = input.ops.len().min(fuzzing::MAX_HOST_OPS);
                if ops == 0 {
                    continue;
                }
                let mut feats = fuzzing::Features::default();
                let kept = fuzzing::run_host(&ctx, &lookups, &mut pool, &input, &mut feats, true)
                    .map_err(|v| format!("{}: {v}", path.display()))?;
                let dropped =
                    fuzzing::run_host(&ctx, &lookups, &mut pool, &input, &mut feats, false)
                        .map_err(|v| format!("{}: {v}", path.display()))?;
                if kept.len() < ops || !dropped.is_empty() {
                    return Err(Failed::from(format!(
                        "{}: {ops} operations, trace kept {} entries, not kept {}",
                        path.display(),
                        kept.len(),
                        dropped.len()
                    )));
                }
                checked += 1;
                if checked == 8 {
                    return Ok(());
                }
            }
            Err(Failed::from("fewer than 8 host seeds with operations"))
        },
    ));
    // raw::set_cpuid2 (the pool's KVM_SET_CPUID2) against kvm-ioctls' set_cpuid2: the same
    // outcome and the same table read back, for the supported table, a shortened one and one
    // past KVM_MAX_CPUID_ENTRIES.
    let cpuid_ctx = Arc::clone(ctx);
    v.push(Trial::test("kvm.raw.set-cpuid2-as-kvm-ioctls", move || {
        set_cpuid2_as_kvm_ioctls(&cpuid_ctx).map_err(Failed::from)
    }));
    // A pool whose inputs keep their vCPUs (a save/restore holds two) must not wait for a
    // supplier that sleeps because enough new vCPUs were ready when it last looked.
    let ctx = Arc::clone(ctx);
    v.push(Trial::test(
        "fuzzing.pool.runs-dry-without-hanging",
        move || {
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let r = (|| {
                    let mut pool =
                        fuzzing::pool::VcpuPool::new(&ctx, fuzzing::pool::PoolMode::Reuse, true)
                            .map_err(|e| e.to_string())?;
                    // Let the supplier make its stock of new vCPUs and go to sleep.
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    let mut held = Vec::new();
                    for _ in 0..24 {
                        held.push(pool.take(false).map_err(|e| e.to_string())?);
                    }
                    for v in held {
                        pool.give_back(v);
                    }
                    Ok::<(), String>(())
                })();
                let _ = done.send(r);
            });
            match finished.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(r) => r.map_err(Failed::from),
                Err(_) => Err(Failed::from(
                    "24 takes without a give-back did not finish in 60 s: the pool waits for a \
                 supplier that sleeps",
                )),
            }
        },
    ));
    v
}

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

fn set_cpuid2_as_kvm_ioctls(ctx: &Context) -> Result<(), String> {
    use kvm_msr_suite::kvm::{raw, CpuidPolicy, CpuidTable, Errno, KvmSystem, Vm, VmConfig};
    let sys = KvmSystem::open().map_err(|e| e.to_string())?;
    let vm = Vm::new(&sys, &VmConfig::default()).map_err(|e| e.to_string())?;
    let vcpu = |id| {
        vm.create_vcpu(id, &CpuidPolicy::Bare)
            .map_err(|e| e.to_string())
    };
    let supported = &ctx.facts.supported_cpuid.entries;
    for (k, entries) in [supported.clone(), supported[..supported.len() / 2].to_vec()]
        .iter()
        .enumerate()
    {
        let (ours, theirs) = (vcpu(2 * k as u64)?, vcpu(2 * k as u64 + 1)?);
        let a = raw::set_cpuid2(&ours.fd, entries);
        let table = CpuidTable {
            entries: entries.clone(),
        };
        let b = theirs.fd.set_cpuid2(&table.to_kvm()).map_err(Errno::from);
        let (ra, rb) = (ours.read_cpuid(), theirs.read_cpuid());
        if a.is_err()
            || b.is_err()
            || ra.as_ref().map(|t| &t.entries) != rb.as_ref().map(|t| &t.entries)
        {
            return Err(format!(
                "table #{k} ({} entries): raw {a:?}, kvm-ioctls {b:?}, read back alike: {}",
                entries.len(),
                ra.as_ref().map(|t| &t.entries) == rb.as_ref().map(|t| &t.entries)
            ));
        }
    }
    // cpuid.c kvm_vcpu_ioctl_set_cpuid2: 'if (cpuid->nent > KVM_MAX_CPUID_ENTRIES) return -E2BIG'
    // (256; kvm-ioctls cannot even build such a table).
    let long: Vec<_> = supported.iter().cycle().take(257).copied().collect();
    let v = vcpu(4)?;
    let before = v.read_cpuid();
    let r = raw::set_cpuid2(&v.fd, &long);
    if r != Err(Errno(libc::E2BIG))
        || v.read_cpuid().map(|t| t.entries) != before.map(|t| t.entries)
    {
        return Err(format!(
            "257 entries: {r:?} (want E2BIG and the table unchanged)"
        ));
    }
    Ok(())
}
