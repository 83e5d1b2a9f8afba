//! MSR indices the harness itself uses (checks that need a specific MSR for a protocol test).
//! Their semantics live in the catalogue; these are only names for numbers.

pub const IA32_TSC: u32 = 0x10;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_MCG_CAP: u32 = 0x179;
pub const IA32_MCG_STATUS: u32 = 0x17a;
pub const IA32_MCG_CTL: u32 = 0x17b;
pub const IA32_PAT: u32 = 0x277;
pub const X2APIC_TPR: u32 = 0x808;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// An index no KVM handles: the KVM selftests use it as their unknown MSR
/// (userspace_msr_exit_test.c, MSR_NON_EXISTENT-style 0xdeadbeef).
pub const UNKNOWN: u32 = 0xdead_beef;
/// HV_X64_MSR_RESET (Hyper-V TLFS): a write of 1 asks for a reset of the partition
/// (hyperv.c kvm_hv_set_msr_pw: KVM_REQ_HV_RESET, reported as KVM_EXIT_SYSTEM_EVENT).
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
