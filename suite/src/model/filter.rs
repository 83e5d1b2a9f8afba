//! A model of KVM_X86_SET_MSR_FILTER (api.rst 4.97 KVM_X86_SET_MSR_FILTER; x86.c
//! kvm_vm_ioctl_set_msr_filter, kvm_add_msr_filter, kvm_msr_allowed).
//!
//! Validation: only KVM_MSR_FILTER_DEFAULT_DENY in `flags`; a range with nmsrs = 0 is skipped
//! whole; otherwise its flags must be non-zero and within READ|WRITE and its bitmap
//! (BITS_TO_LONGS(nmsrs) longs) at most 0x600 bytes; all ranges empty with default deny is EINVAL.
//! Decision: x2APIC MSRs 0x800-0x8ff are always allowed; otherwise the first range in array order
//! that covers the index (base <= index < base + nmsrs, computed in u32 as the kernel does) and has
//! the access type in its flags decides with its bitmap bit (1 = allow); else the default.
//! Host-initiated accesses are never filtered.

pub use crate::kvm::filter::{
    bitmap_bytes, Filter, Range, DEFAULT_DENY, FLAGS_VALID, MAX_BITMAP_BYTES, MAX_RANGES,
    RANGE_FLAGS_VALID, RANGE_READ, RANGE_WRITE,
};
use crate::kvm::Errno;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn flag(self) -> u32 {
        match self {
            Access::Read => RANGE_READ,
            Access::Write => RANGE_WRITE,
        }
    }
}

impl Range {
    fn bit(&self, off: u32) -> bool {
        self.bitmap
            .get((off / 8) as usize)
            .is_some_and(|b| b & (1 << (off % 8)) != 0)
    }
}

impl Filter {
    pub fn allow_all() -> Filter {
        Filter {
            flags: 0,
            ranges: Vec::new(),
        }
    }

    /// What KVM_X86_SET_MSR_FILTER returns: Ok, or the errno (EINVAL; E2BIG for more than 16
    /// ranges, which the fixed-size ABI cannot express and the harness refuses to build).
    pub fn validate(&self) -> Result<(), Errno> {
        if self.ranges.len() > MAX_RANGES {
            return Err(Errno::E2BIG);
        }
        if self.flags & !FLAGS_VALID != 0 {
            return Err(Errno::EINVAL);
        }
        let empty = self.ranges.iter().all(|r| r.nmsrs == 0);
        if empty && self.flags & DEFAULT_DENY != 0 {
            return Err(Errno::EINVAL);
        }
        for r in self.ranges.iter().filter(|r| r.nmsrs != 0) {
            if r.flags & !RANGE_FLAGS_VALID != 0 || r.flags == 0 {
                return Err(Errno::EINVAL);
            }
            if bitmap_bytes(r.nmsrs) > MAX_BITMAP_BYTES {
                return Err(Errno::EINVAL);
            }
        }
        Ok(())
    }

    /// Whether a guest access is handled in the kernel (true) or denied (false). Only meaningful
    /// for a filter that validates.
    pub fn allows(&self, index: u32, access: Access) -> bool {
        if (0x800..=0x8ff).contains(&index) {
            return true;
        }
        for r in self.ranges.iter().filter(|r| r.nmsrs != 0) {
            let end = r.base.wrapping_add(r.nmsrs);
            if index >= r.base && index < end && r.flags & access.flag() != 0 {
                return r.bit(index - r.base);
            }
        }
        self.flags & DEFAULT_DENY == 0
    }
}

/// The filter state of a VM: None until a filter is set; a failed set leaves it unchanged.
pub fn allowed(filter: Option<&Filter>, index: u32, access: Access) -> bool {
    filter.is_none_or(|f| f.allows(index, access))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rng::SplitMix64;
    use rstest::rstest;

    fn deny(base: u32, n: u32, flags: u32) -> Range {
        Range::with_allowed(flags, base, n, &[])
    }

    #[rstest]
    #[case::no_filter_allows(None, 0x10, Access::Read, true)]
    #[case::default_allow_empty(Some(Filter::allow_all()), 0x10, Access::Write, true)]
    #[case::default_deny_no_match(Some(Filter { flags: DEFAULT_DENY, ranges: vec![deny(0x1000, 8, 3)] }), 0x10, Access::Read, false)]
    #[case::bit_clear_denies(Some(Filter { flags: 0, ranges: vec![deny(0x10, 1, 3)] }), 0x10, Access::Read, false)]
    #[case::bit_set_allows(Some(Filter { flags: DEFAULT_DENY, ranges: vec![Range::with_allowed(3, 0x10, 1, &[0x10])] }), 0x10, Access::Read, true)]
    #[case::read_range_ignores_writes(Some(Filter { flags: 0, ranges: vec![deny(0x10, 1, RANGE_READ)] }), 0x10, Access::Write, true)]
    #[case::write_range_denies_writes(Some(Filter { flags: 0, ranges: vec![deny(0x10, 1, RANGE_WRITE)] }), 0x10, Access::Write, false)]
    #[case::first_range_wins(Some(Filter { flags: 0, ranges: vec![Range::with_allowed(3, 0x10, 1, &[0x10]), deny(0x10, 1, 3)] }), 0x10, Access::Read, true)]
    #[case::later_range_after_flag_mismatch(Some(Filter { flags: 0, ranges: vec![Range::with_allowed(RANGE_WRITE, 0x10, 1, &[0x10]), deny(0x10, 1, RANGE_READ)] }), 0x10, Access::Read, false)]
    #[case::x2apic_never_filtered(Some(Filter { flags: DEFAULT_DENY, ranges: vec![deny(0x800, 0x100, 3)] }), 0x808, Access::Read, true)]
    #[case::end_is_exclusive(Some(Filter { flags: 0, ranges: vec![deny(0x10, 4, 3)] }), 0x14, Access::Read, true)]
    #[case::u32_wraparound_range_matches_nothing(Some(Filter { flags: 0, ranges: vec![deny(0xffff_ff00, 0x200, 3)] }), 0xffff_ff10, Access::Read, true)]
    fn decisions(
        #[case] f: Option<Filter>,
        #[case] index: u32,
        #[case] access: Access,
        #[case] want: bool,
    ) {
        assert_eq!(allowed(f.as_ref(), index, access), want);
    }

    #[rstest]
    #[case::unknown_flag(Filter { flags: 2, ranges: vec![] }, Err(Errno::EINVAL))]
    #[case::deny_all_empty(Filter { flags: DEFAULT_DENY, ranges: vec![] }, Err(Errno::EINVAL))]
    #[case::deny_with_only_empty_ranges(Filter { flags: DEFAULT_DENY, ranges: vec![deny(0x10, 0, 3)] }, Err(Errno::EINVAL))]
    #[case::allow_all_empty_ok(Filter { flags: 0, ranges: vec![] }, Ok(()))]
    #[case::range_flags_zero(Filter { flags: 0, ranges: vec![deny(0x10, 1, 0)] }, Err(Errno::EINVAL))]
    #[case::range_flags_unknown(Filter { flags: 0, ranges: vec![deny(0x10, 1, 4)] }, Err(Errno::EINVAL))]
    #[case::empty_range_flags_ignored(Filter { flags: 0, ranges: vec![deny(0x10, 0, 0xff)] }, Ok(()))]
    #[case::max_bitmap_ok(Filter { flags: 0, ranges: vec![deny(0, 0x3000, 3)] }, Ok(()))]
    #[case::bitmap_one_long_too_many(Filter { flags: 0, ranges: vec![deny(0, 0x3001, 3)] }, Err(Errno::EINVAL))]
    #[case::sixteen_ranges_ok(Filter { flags: 0, ranges: (0..16).map(|i| deny(i * 16, 1, 3)).collect() }, Ok(()))]
    fn validation(#[case] f: Filter, #[case] want: Result<(), Errno>) {
        assert_eq!(f.validate(), want);
    }

    /// Randomized properties with a fixed seed: a default-deny filter with one all-allow range
    /// allows exactly that range; swapping two disjoint ranges changes nothing; an index in no
    /// range gets the default.
    #[test]
    fn randomized_properties_seed_0x5eed() {
        let mut rng = SplitMix64::new(0x5eed);
        for _ in 0..2000 {
            let base = rng.next_u64() as u32 & 0xffff_f000;
            let n = 1 + rng.below(256) as u32;
            let all: Vec<u32> = (0..n).map(|i| base + i).collect();
            let f = Filter {
                flags: DEFAULT_DENY,
                ranges: vec![Range::with_allowed(3, base, n, &all)],
            };
            assert_eq!(f.validate(), Ok(()));
            let probe = base.wrapping_add(rng.below(u64::from(n) * 2) as u32);
            let inside = probe.wrapping_sub(base) < n;
            let x2apic = (0x800..=0x8ff).contains(&probe);
            assert_eq!(
                f.allows(probe, Access::Read),
                inside || x2apic,
                "base {base:#x} n {n} probe {probe:#x}"
            );
            let r1 = deny(0x1000, 8, 3);
            let r2 = Range::with_allowed(3, 0x2000, 8, &[0x2003]);
            let a = Filter {
                flags: 0,
                ranges: vec![r1.clone(), r2.clone()],
            };
            let b = Filter {
                flags: 0,
                ranges: vec![r2, r1],
            };
            let i = 0x1000 + rng.below(0x1010) as u32;
            assert_eq!(a.allows(i, Access::Write), b.allows(i, Access::Write));
        }
    }
}
