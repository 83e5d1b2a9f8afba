//! MSR cost benchmarks (criterion). Each measures one thing and names it:
//! - `guest_rdmsr/<msr>`, `guest_wrmsr/<msr>`: one guest access, from a program of N accesses run in
//!   one KVM_RUN (wall time of the run / N). The interpreter's per-op loop is included; compare with
//!   `guest_reference/empty-program` measured in the same run.
//! - `guest_reference/empty-program`: one KVM_RUN of an empty program = the PIO exit round trip.
//! - `vcpu_get_msrs/<n>`, `vcpu_set_msrs/<n>`: KVM_GET/SET_MSRS by batch size (the migration path).
//! - `system_get_feature_msrs`: KVM_GET_MSRS on /dev/kvm of every feature MSR.
//! - `create/machine`: VM + vCPU + guest environment (what a fuzzer pays per fresh vCPU).
//!
//! Compare ratios within one run; absolute numbers on a nested host are noise.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kvm_msr_suite::checks::Context;
use kvm_msr_suite::guest::GuestOp;
use kvm_msr_suite::kvm::MsrEntry;
use std::time::{Duration, Instant};

/// Accesses per guest program: amortises the KVM_RUN entry and the final PIO exit.
const N: usize = 64;

/// MSRs with different handling (in-kernel common code, vendor code, PV, fault).
const GUEST_MSRS: &[(&str, u32)] = &[
    ("tsc-adjust", 0x3b),
    ("sysenter-cs", 0x174),
    ("kernel-gs-base", 0xc000_0102),
    ("pat", 0x277),
    ("kvm-poll-control", 0x4b56_4d05),
    ("unknown-faults", 0xdead_beef),
];

fn guest(c: &mut Criterion, ctx: &Context) {
    let mut m = ctx.machine().expect("a machine");
    let mut g = c.benchmark_group("guest_reference");
    g.bench_function("empty-program", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let r = m.run_ops(&[]);
                assert!(r.completed());
            }
            start.elapsed()
        })
    });
    g.finish();
    for (write, group) in [(false, "guest_rdmsr"), (true, "guest_wrmsr")] {
        let mut g = c.benchmark_group(group);
        for &(name, index) in GUEST_MSRS {
            // Write back what the MSR holds so every iteration does the same work.
            let value = m.vcpu.get_msr(index).unwrap_or(0);
            let ops: Vec<GuestOp> = (0..N)
                .map(|_| {
                    if write {
                        GuestOp::Wrmsr(index, value)
                    } else {
                        GuestOp::Rdmsr(index)
                    }
                })
                .collect();
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let r = m.run_ops(&ops);
                        total += start.elapsed();
                        assert!(r.completed(), "{:?}", r.death);
                    }
                    total / N as u32
                })
            });
        }
        g.finish();
    }
}

fn ioctls(c: &mut Criterion, ctx: &Context) {
    let m = ctx.machine().expect("a machine");
    let list = ctx.facts.msr_index_list.clone();
    let mut g = c.benchmark_group("vcpu_get_msrs");
    for n in [1usize, 8, 64, list.len()] {
        let idx: Vec<u32> = list.iter().cycle().take(n).copied().collect();
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| m.vcpu.get_msrs(&idx))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("vcpu_set_msrs");
    for n in [1usize, 8, 64, list.len()] {
        let idx: Vec<u32> = list.iter().cycle().take(n).copied().collect();
        let saved = m.vcpu.get_msrs(&idx);
        let entries: Vec<MsrEntry> = saved.entries.clone();
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| m.vcpu.set_msrs(&entries))
        });
    }
    g.finish();
    let feats = ctx.facts.msr_feature_index_list.clone();
    c.bench_function("system_get_feature_msrs", |b| {
        b.iter(|| ctx.sys.get_feature_msrs(&feats))
    });
    c.bench_function("create/machine", |b| {
        b.iter(|| ctx.machine().expect("a machine"))
    });
}

fn benches(c: &mut Criterion) {
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping the MSR benchmarks: {e}");
            return;
        }
    };
    guest(c, &ctx);
    ioctls(c, &ctx);
}

criterion_group!(msr, benches);
criterion_main!(msr);
