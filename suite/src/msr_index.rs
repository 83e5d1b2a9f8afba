//! MSR indices the harness itself uses (checks that need a specific MSR for a protocol test).
//! Their semantics live in the catalogue; these are only names for numbers, each defined once
//! here (names as in the kernel's msr-index.h, without MSR_ for the architectural IA32 ones).

/// Each `NAME = index;` line defines the constant and its row in [`NAMES`].
macro_rules! indices {
    ($($(#[$doc:meta])* $name:ident = $index:expr;)*) => {
        $($(#[$doc])* pub const $name: u32 = $index;)*
        /// Every index above with its name, for messages (see [`name`]).
        pub const NAMES: &[(u32, &str)] = &[$(($name, stringify!($name))),*];
    };
}

indices! {
    IA32_TSC = 0x10;
    /// MSR_KVM_SYSTEM_TIME (msr.rst: the old kvm-clock MSR).
    MSR_KVM_SYSTEM_TIME = 0x12;
    IA32_APIC_BASE = 0x1b;
    IA32_TSC_ADJUST = 0x3b;
    IA32_UCODE_REV = 0x8b;
    MSR_PLATFORM_INFO = 0xce;
    IA32_CORE_CAPS = 0xcf;
    MSR_MISC_FEATURES_ENABLES = 0x140;
    IA32_SYSENTER_CS = 0x174;
    IA32_MCG_CAP = 0x179;
    IA32_MCG_STATUS = 0x17a;
    IA32_MCG_CTL = 0x17b;
    IA32_MISC_ENABLE = 0x1a0;
    IA32_POWER_CTL = 0x1fc;
    IA32_PAT = 0x277;
    /// IA32_MC0_CTL2 (SDM vol. 4 table 2-2; bank i's CTL2 is 0x280 + i).
    IA32_MC0_CTL2 = 0x280;
    X2APIC_TPR = 0x808;
    /// IA32_TSC_DEADLINE (SDM vol. 3A 12.5.4.1).
    IA32_TSC_DEADLINE = 0x6e0;
    IA32_EFER = 0xc000_0080;
    MSR_SYSCALL_MASK = 0xc000_0084;
    MSR_KERNEL_GS_BASE = 0xc000_0102;
    /// KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst).
    MSR_KVM_WALL_CLOCK_NEW = 0x4b56_4d00;
    MSR_KVM_SYSTEM_TIME_NEW = 0x4b56_4d01;
    MSR_KVM_ASYNC_PF_EN = 0x4b56_4d02;
    MSR_KVM_STEAL_TIME = 0x4b56_4d03;
    MSR_KVM_PV_EOI_EN = 0x4b56_4d04;
    /// HV_X64_MSR_VP_INDEX (Hyper-V TLFS): the vCPU's virtual processor index.
    HV_X64_MSR_VP_INDEX = 0x4000_0002;
    /// An index no KVM handles: the KVM selftests use it as their unknown MSR
    /// (userspace_msr_exit_test.c, MSR_NON_EXISTENT-style 0xdeadbeef).
    UNKNOWN = 0xdead_beef;
    /// HV_X64_MSR_RESET (Hyper-V TLFS): a write of 1 asks for a reset of the partition
    /// (hyperv.c kvm_hv_set_msr_pw: KVM_REQ_HV_RESET, reported as KVM_EXIT_SYSTEM_EVENT).
    HV_X64_MSR_RESET = 0x4000_0003;
}

/// The name of `index` if it is one of the indices above.
pub fn name(index: u32) -> Option<&'static str> {
    NAMES.iter().find(|(i, _)| *i == index).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_constants() {
        assert_eq!(name(IA32_APIC_BASE), Some("IA32_APIC_BASE"));
        assert_eq!(name(HV_X64_MSR_VP_INDEX), Some("HV_X64_MSR_VP_INDEX"));
        assert_eq!(name(0x1234_5678), None);
        let mut seen: Vec<u32> = NAMES.iter().map(|(i, _)| *i).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), NAMES.len(), "an index defined twice");
    }
}
