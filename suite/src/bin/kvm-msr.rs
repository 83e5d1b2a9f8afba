use kvm_msr_suite::guest::GuestOp;
use kvm_msr_suite::kvm::facts::HostFacts;
use kvm_msr_suite::kvm::KvmSystem;
use kvm_msr_suite::machine::{Machine, MachineConfig};

fn main() {
    let sys = KvmSystem::open().unwrap();
    let facts = HostFacts::gather(&sys).unwrap();
    println!("{}", facts.summary());
    let mut m = Machine::new(&sys, &MachineConfig::with_cpuid(facts.supported_cpuid.clone())).unwrap();
    println!("{}", m.runtime.listing());
    let ops: Vec<GuestOp> = facts.msr_index_list.iter().map(|&i| GuestOp::Rdmsr(i)).chain([GuestOp::Rdmsr(0xdeadbeef), GuestOp::Wrmsr(0x277, 0x0202020202020202), GuestOp::Rdmsr(0x277)]).collect();
    let t = std::time::Instant::now();
    let r = m.run_ops(&ops);
    println!("took {:?}", t.elapsed());
    for (op, o) in ops.iter().zip(&r.outcomes) {
        let host = m.vcpu.get_msr(op.index());
        println!("{op} -> {o}   host {host:x?}");
    }
    println!("{:?}", r.death);
}
