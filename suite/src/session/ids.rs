//! Check ids that code outside the check needs: the host fuzz target asks the deviation records
//! about the check that measures the same behaviour, so both name it from here.

use crate::check_id::{CheckId, Family};

/// `checks::negotiation`: after KVM_RUN, KVM_SET_CPUID2 accepts the table set before.
pub const SAME_CPUID_AFTER_RUN: CheckId =
    CheckId::fixed(Family::Cpuid, "same-table-accepted-after-run");

/// MSRs that KVM_RUN of an empty guest program changes on some platforms, each with the check
/// whose deviation record says so (`guest-fep.sysenter-cs.write.high-dword`: QEMU TCG's VMLOAD/
/// VMSAVE keep 32 bits of SYSENTER_CS, so bits 63:32 a host wrote are gone after KVM_RUN). Where
/// that record applies to this host, the host fuzz target's repeated-reads oracle does not hold
/// the MSR to a value read before KVM_RUN; everywhere else it does.
pub const CHANGED_BY_RUN_WHERE_RECORDED: &[(u32, CheckId)] = &[(
    crate::msr_index::IA32_SYSENTER_CS,
    CheckId::fixed(Family::GuestFep, "sysenter-cs.write.high-dword"),
)];
