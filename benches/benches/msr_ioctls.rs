//! Host-side MSR ioctl cost: KVM_GET_MSRS with one entry and with the whole index list.
//! (The guest exit round trip and the full regression workflow are tracked in the benchmarks
//! issue; this is the first measurement.)

use criterion::{criterion_group, criterion_main, Criterion};
use kvm_msr_suite::checks::Context;

fn msr_ioctls(c: &mut Criterion) {
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping MSR ioctl benchmarks: {e}");
            return;
        }
    };
    let m = ctx.machine().expect("a machine");
    let list = ctx.facts.msr_index_list.clone();
    let mut g = c.benchmark_group("vcpu_get_msrs");
    g.bench_function("1", |b| b.iter(|| m.vcpu.get_msrs(&list[..1])));
    g.bench_function(format!("index_list_{}", list.len()), |b| {
        b.iter(|| m.vcpu.get_msrs(&list))
    });
    g.finish();
}

criterion_group!(benches, msr_ioctls);
criterion_main!(benches);
