//! Check ids that code outside the check needs: the host fuzz target asks the deviation records
//! about the check that measures the same behaviour, so both name it from here.

/// `checks::negotiation`: after KVM_RUN, KVM_SET_CPUID2 accepts the table set before.
pub const SAME_CPUID_AFTER_RUN: &str = "cpuid.same-table-accepted-after-run";
