//! MSR indices the harness itself uses (checks that need a specific MSR for a protocol test).
//! Their semantics live in the catalogue; these are only names for numbers, each defined once
//! here (names as in the kernel's msr-index.h, without MSR_ for the architectural IA32 ones).

pub const IA32_TSC: u32 = 0x10;
/// MSR_KVM_SYSTEM_TIME (msr.rst: the old kvm-clock MSR).
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_TSC_ADJUST: u32 = 0x3b;
pub const IA32_UCODE_REV: u32 = 0x8b;
pub const MSR_PLATFORM_INFO: u32 = 0xce;
pub const IA32_CORE_CAPS: u32 = 0xcf;
pub const MSR_MISC_FEATURES_ENABLES: u32 = 0x140;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_MCG_CAP: u32 = 0x179;
pub const IA32_MCG_STATUS: u32 = 0x17a;
pub const IA32_MCG_CTL: u32 = 0x17b;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_POWER_CTL: u32 = 0x1fc;
pub const IA32_PAT: u32 = 0x277;
/// IA32_MC0_CTL2 (SDM vol. 4 table 2-2; bank i's CTL2 is 0x280 + i).
pub const IA32_MC0_CTL2: u32 = 0x280;
pub const X2APIC_TPR: u32 = 0x808;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// HV_X64_MSR_VP_INDEX (Hyper-V TLFS): the vCPU's virtual processor index.
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
/// An index no KVM handles: the KVM selftests use it as their unknown MSR
/// (userspace_msr_exit_test.c, MSR_NON_EXISTENT-style 0xdeadbeef).
pub const UNKNOWN: u32 = 0xdead_beef;
/// HV_X64_MSR_RESET (Hyper-V TLFS): a write of 1 asks for a reset of the partition
/// (hyperv.c kvm_hv_set_msr_pw: KVM_REQ_HV_RESET, reported as KVM_EXIT_SYSTEM_EVENT).
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
