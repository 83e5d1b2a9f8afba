//! MSR cost benchmarks (criterion). Each measures one thing and names it:
//! - `harness/raw-loop`: KVM_RUN on the vCPU fd and the exit-reason check, nothing else, with the
//!   guest re-running the interpreter's empty program; `harness/run_ops-empty`: the same guest
//!   work through Machine::run_ops. Their ratio is the harness's overhead (target <= 1.05).
//! - `guest_reference/pio-exit`: one KVM_RUN of the MSR loop with one empty iteration (the PIO
//!   exit round trip); `guest_reference/empty-loop`: one iteration of the loop without an MSR
//!   instruction, from a loop of N in one KVM_RUN.
//! - `guest_rdmsr/<msr>`, `guest_wrmsr/<msr>`: one guest access, from a loop of N in one KVM_RUN
//!   (wall time / N); guest TSC cycles around the loop beside it; exits, userspace exits and
//!   emulated instructions per access from the vCPU's statistics, net of the empty loop.
//! - `guest_user_exit/{rdmsr,wrmsr}`: an access a filter denies with KVM_MSR_EXIT_REASON_FILTER
//!   enabled: exit to userspace, completion, re-entry.
//! - `vcpu_get_msrs/<n>`, `vcpu_set_msrs/<n>`: KVM_GET/SET_MSRS by batch size (the migration path).
//! - `system_get_feature_msrs`: KVM_GET_MSRS on /dev/kvm of every feature MSR.
//! - `create/machine`: VM + vCPU + guest environment (what a fuzzer pays per fresh vCPU).
//! - `create/pooled-vcpu`, `pool/reset-after-write`: what the host fuzz target's pool pays instead.
//!
//! Compare ratios within one run; compare kernels with interleaved runs (README, Benchmarks).
//! KVM_MSR_BENCH_SMOKE=1 runs everything briefly (CI).

use criterion::{BenchmarkId, Criterion};
use kvm_msr_benches::{count, finish, smoke, Counts, Recorder, StatsSource};
use kvm_msr_suite::checks::Context;
use kvm_msr_suite::fuzzing::pool::{PoolMode, VcpuPool};
use kvm_msr_suite::guest::layout::PORT_DONE;
use kvm_msr_suite::guest::msr_loop::{LoopKind, MsrLoop};
use kvm_msr_suite::guest::GuestOp;
use kvm_msr_suite::kvm::filter::set_msr_filter;
use kvm_msr_suite::kvm::run::kvm_run;
use kvm_msr_suite::kvm::MsrEntry;
use kvm_msr_suite::machine::{Machine, MsrExit, MsrReply};
use kvm_msr_suite::model::filter::{Filter, Range};
use std::time::{Duration, Instant, SystemTime};

/// Iterations of the guest loop per KVM_RUN: amortises the entry and the final PIO exit
/// (16 in smoke mode).
static N: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| if smoke() { 16 } else { 256 });
/// Runs of the instrumented (statistics) pass.
static COUNT_RUNS: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| if smoke() { 4 } else { 20 });

/// MSRs with different handling (in-kernel common code, vendor code, PV, fault).
const GUEST_MSRS: &[(&str, u32)] = &[
    ("tsc-adjust", 0x3b),
    ("sysenter-cs", 0x174),
    ("kernel-gs-base", 0xc000_0102),
    ("pat", 0x277),
    ("kvm-poll-control", 0x4b56_4d05),
    ("unknown-faults", 0xdead_beef),
];

/// MSR_SYSCALL_MASK: denied by the filter in the userspace-exit benchmarks.
const FILTERED: u32 = 0xc000_0084;
const KVM_MSR_EXIT_REASON_FILTER: u64 = 4;

fn machine(ctx: &Context) -> Machine {
    ctx.machine().expect("a machine for the benchmarks")
}

/// One KVM_RUN of the loop; the guest's TSC cycles per iteration.
fn run_loop(m: &mut Machine, p: &MsrLoop) -> f64 {
    let r = m
        .run_msr_loop(p, None)
        .unwrap_or_else(|d| panic!("the MSR loop {p:?}: {d}"));
    r.result.tsc_cycles as f64 / p.count as f64
}

fn harness(c: &mut Criterion, ctx: &Context, rec: &mut Recorder) {
    let mut m = machine(ctx);
    // The guest now loops: each KVM_RUN re-runs the interpreter's empty program.
    assert!(m.run_ops(&[]).completed());
    let mut g = c.benchmark_group("harness");
    g.bench_function("raw-loop", |b| {
        b.iter(|| {
            kvm_run(&m.vcpu.fd).expect("KVM_RUN");
            let run = m.vcpu.fd.get_kvm_run();
            assert_eq!(run.exit_reason, kvm_bindings::KVM_EXIT_IO);
            // SAFETY: the exit reason is KVM_EXIT_IO, so `io` is the union member KVM filled.
            assert_eq!(unsafe { run.__bindgen_anon_1.io.port }, PORT_DONE);
        })
    });
    g.bench_function("run_ops-empty", |b| {
        b.iter(|| assert!(m.run_ops(&[]).completed()))
    });
    g.finish();
    let mut stats = StatsSource::open(&m, ctx.facts.cap("KVM_CAP_BINARY_STATS_FD"));
    let counts = count(&mut m, &mut stats, *COUNT_RUNS, 1, |m| {
        assert!(m.run_ops(&[]).completed());
    });
    for id in ["harness/raw-loop", "harness/run_ops-empty"] {
        rec.extra(id, "round trip").counts = Some(counts);
    }
}

/// The guest loop benchmarks; false if the loop cannot run here (then the caller falls back).
fn guest_loop(c: &mut Criterion, ctx: &Context, rec: &mut Recorder) -> bool {
    let mut m = machine(ctx);
    let empty = |count| MsrLoop {
        kind: LoopKind::Empty,
        index: 0,
        value: 0,
        count,
    };
    // RDTSC may not run in every guest (an emulator without it, CR4.TSD): say so, never fake.
    match m.run_msr_loop(&empty(1), None) {
        Ok(r) if r.result.tsc_cycles == 0 => rec.note(
            "the guest TSC did not advance across the loop: guest-side cycle figures are meaningless here".into(),
        ),
        Ok(_) => {}
        Err(d) => {
            rec.note(format!(
                "guest-side TSC timing unavailable: the RDTSC loop stopped ({d}); guest MSR costs measured through the interpreter, wall clock only"
            ));
            return false;
        }
    }
    rec.tsc_khz = m.vcpu.fd.get_tsc_khz().ok();
    if rec.tsc_khz.is_none() {
        rec.note("KVM_GET_TSC_KHZ failed: guest cycles are not converted to ns".into());
    }
    let mut stats = StatsSource::open(&m, ctx.facts.cap("KVM_CAP_BINARY_STATS_FD"));
    rec.stats_state = match &stats {
        StatsSource::Open(_) => "available".into(),
        StatsSource::Absent(why) => {
            rec.note(format!("no exit/emulation counts: {why}"));
            format!("absent: {why}")
        }
    };

    let mut g = c.benchmark_group("guest_reference");
    let mut cycles = Vec::new();
    let pio = empty(1);
    g.bench_function("pio-exit", |b| {
        b.iter(|| cycles.push(run_loop(&mut m, &pio)))
    });
    rec.extra("guest_reference/pio-exit", "round trip")
        .guest_cycles = cycles;
    let pio_counts = count(&mut m, &mut stats, *COUNT_RUNS, 1, |m| {
        run_loop(m, &pio);
    });
    rec.extra("guest_reference/pio-exit", "round trip").counts = Some(pio_counts);
    let (cycles, reference) = loop_bench(&mut g, &mut m, &mut stats, "empty-loop", empty(*N));
    let x = rec.extra("guest_reference/empty-loop", "iteration");
    x.guest_cycles = cycles;
    x.counts = Some(reference);
    g.finish();

    for (kind, group) in [
        (LoopKind::Rdmsr, "guest_rdmsr"),
        (LoopKind::Wrmsr, "guest_wrmsr"),
    ] {
        let mut g = c.benchmark_group(group);
        for &(name, index) in GUEST_MSRS {
            // Write back what the MSR holds so every iteration does the same work.
            let value = m.vcpu.get_msr(index).unwrap_or(0);
            let p = MsrLoop {
                kind,
                index,
                value,
                count: *N,
            };
            let faulted = m.run_msr_loop(&p, None).map(|r| r.result.fault);
            match faulted {
                Err(d) => {
                    rec.note(format!("{group}/{name} skipped: {d}"));
                    continue;
                }
                Ok(Some((v, _))) if index != 0xdead_beef => rec.note(format!(
                    "{group}/{name}: every access faults here (vector {v})"
                )),
                Ok(None) if index == 0xdead_beef => rec.note(format!(
                    "{group}/{name}: the unknown MSR did not fault (kvm.ignore_msrs?)"
                )),
                Ok(_) => {}
            }
            let (cycles, counts) = loop_bench(&mut g, &mut m, &mut stats, name, p);
            let x = rec.extra(&format!("{group}/{name}"), "access");
            x.guest_cycles = cycles;
            x.counts = Some(counts.minus(reference));
            x.net_of = Some("guest_reference/empty-loop".into());
        }
        g.finish();
    }
    true
}

/// One loop benchmark: criterion's wall time per iteration, the guest's cycles per iteration
/// for every run, and the counts per iteration from an instrumented pass.
fn loop_bench(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    m: &mut Machine,
    stats: &mut StatsSource,
    name: &str,
    p: MsrLoop,
) -> (Vec<f64>, Counts) {
    let mut cycles = Vec::new();
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let r = m.run_msr_loop(&p, None);
                total += start.elapsed();
                let r = r.unwrap_or_else(|d| panic!("{name}: {d}"));
                cycles.push(r.result.tsc_cycles as f64 / p.count as f64);
            }
            total / p.count as u32
        })
    });
    let counts = count(m, stats, *COUNT_RUNS, p.count, |m| {
        run_loop(m, &p);
    });
    (cycles, counts)
}

/// Without a working RDTSC loop: the same MSRs through the interpreter (64 ops per KVM_RUN).
fn guest_interpreter(c: &mut Criterion, ctx: &Context) {
    let mut m = machine(ctx);
    for (write, group) in [(false, "guest_rdmsr"), (true, "guest_wrmsr")] {
        let mut g = c.benchmark_group(group);
        for &(name, index) in GUEST_MSRS {
            let value = m.vcpu.get_msr(index).unwrap_or(0);
            let op = if write {
                GuestOp::Wrmsr(index, value)
            } else {
                GuestOp::Rdmsr(index)
            };
            let ops = vec![op; 64];
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        assert!(m.run_ops(&ops).completed());
                    }
                    start.elapsed() / 64
                })
            });
        }
        g.finish();
    }
}

fn user_exits(c: &mut Criterion, ctx: &Context, rec: &mut Recorder) {
    for cap in ["KVM_CAP_X86_USER_SPACE_MSR", "KVM_CAP_X86_MSR_FILTER"] {
        if ctx.facts.cap(cap) <= 0 {
            rec.note(format!("guest_user_exit skipped: {cap} is absent"));
            return;
        }
    }
    let mut m = machine(ctx);
    if let Err(e) = m.vm.enable_cap(
        kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        [KVM_MSR_EXIT_REASON_FILTER, 0, 0, 0],
    ) {
        rec.note(format!(
            "guest_user_exit skipped: KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) errno {e}"
        ));
        return;
    }
    // Deny reads and writes of one MSR (flags 3: KVM_MSR_FILTER_READ | _WRITE, empty bitmap).
    let deny = Filter {
        flags: 0,
        ranges: vec![Range::with_allowed(3, FILTERED, 1, &[])],
    };
    if let Err(e) = set_msr_filter(&m.vm.fd, &deny) {
        rec.note(format!(
            "guest_user_exit skipped: KVM_X86_SET_MSR_FILTER errno {e}"
        ));
        return;
    }
    let mut stats = StatsSource::open(&m, ctx.facts.cap("KVM_CAP_BINARY_STATS_FD"));
    let mut g = c.benchmark_group("guest_user_exit");
    for (kind, name) in [(LoopKind::Rdmsr, "rdmsr"), (LoopKind::Wrmsr, "wrmsr")] {
        let p = MsrLoop {
            kind,
            index: FILTERED,
            value: 0,
            count: *N,
        };
        let mut reply = |_: &MsrExit| MsrReply {
            error: false,
            data: 0,
        };
        match m.run_msr_loop(&p, Some(&mut reply)) {
            Ok(r) if r.msr_exits == *N => {}
            Ok(r) => {
                rec.note(format!(
                    "guest_user_exit/{name} skipped: {} userspace exits for {} denied accesses",
                    r.msr_exits, *N
                ));
                continue;
            }
            Err(d) => {
                rec.note(format!("guest_user_exit/{name} skipped: {d}"));
                continue;
            }
        }
        let mut cycles = Vec::new();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let r = m.run_msr_loop(&p, Some(&mut reply));
                    total += start.elapsed();
                    let r = r.expect("the userspace-exit loop");
                    cycles.push(r.result.tsc_cycles as f64 / *N as f64);
                }
                total / *N as u32
            })
        });
        let counts = count(&mut m, &mut stats, *COUNT_RUNS, *N, |m| {
            m.run_msr_loop(&p, Some(&mut reply))
                .expect("the userspace-exit loop");
        });
        let x = rec.extra(&format!("guest_user_exit/{name}"), "access");
        x.guest_cycles = cycles;
        x.counts = Some(counts);
    }
    g.finish();
}

fn ioctls(c: &mut Criterion, ctx: &Context) {
    let m = machine(ctx);
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
        let entries: Vec<MsrEntry> = saved.entries().to_vec();
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| m.vcpu.set_msrs(&entries))
        });
    }
    g.finish();
    let feats = ctx.facts.msr_feature_index_list.clone();
    c.bench_function("system_get_feature_msrs", |b| {
        b.iter(|| ctx.sys().get_feature_msrs(&feats))
    });
    c.bench_function("create/machine", |b| b.iter(|| machine(ctx)));
    // What the host fuzz target's pool pays: a fresh vCPU in a shared VM (a new VM every 64,
    // amortised; no supplier thread here), and the reset of a used vCPU after one accepted write
    // (KVM_SET_MSRS of the snapshot, read back).
    let mut pool = VcpuPool::new(ctx, PoolMode::Reuse, false).expect("a vCPU pool");
    c.bench_function("create/pooled-vcpu", |b| {
        b.iter(|| drop(pool.take(false).expect("a pooled vCPU")))
    });
    let sysenter_cs = MsrEntry {
        index: 0x174,
        data: 0x10,
    };
    c.bench_function("pool/reset-after-write", |b| {
        b.iter(|| {
            let mut v = pool.take(false).expect("a pooled vCPU");
            v.set_msrs(ctx, std::slice::from_ref(&sysenter_cs), None);
            pool.give_back(v);
        })
    });
}

fn criterion() -> Criterion {
    let c = Criterion::default();
    let c = if smoke() {
        c.warm_up_time(Duration::from_millis(20))
            .measurement_time(Duration::from_millis(60))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
    };
    c.configure_from_args()
}

fn main() {
    let started = SystemTime::now();
    let mut c = criterion();
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(e) => {
            // Benchmarks are not tests: without KVM there is nothing to measure, said visibly.
            eprintln!("kvm-msr-bench: skipping every benchmark: {e}");
            return;
        }
    };
    let mut rec = Recorder {
        stats_state: "not opened".into(),
        ..Default::default()
    };
    harness(&mut c, &ctx, &mut rec);
    if !guest_loop(&mut c, &ctx, &mut rec) {
        guest_interpreter(&mut c, &ctx);
    }
    user_exits(&mut c, &ctx, &mut rec);
    ioctls(&mut c, &ctx);
    c.final_summary();
    finish(&rec, &ctx.facts, started);
}
