//! What the suite knows about an MSR index -- whether KVM lists it, whether it is a feature MSR,
//! whether the catalogue has it and documents it as changing on its own or failing host reads --
//! in one lookup. The fuzzers ask for every entry of every batch; linear scans of the two index
//! lists plus a walk of the catalogue's map per question took a tenth of the fuzzing thread's
//! time, most of it in comparison tracing.

use crate::catalogue::Catalogue;
use crate::kvm::facts::HostFacts;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrTraits {
    /// In KVM_GET_MSR_INDEX_LIST.
    pub listed: bool,
    /// In KVM_GET_MSR_FEATURE_INDEX_LIST.
    pub feature: bool,
    /// In the catalogue.
    pub catalogued: bool,
    /// The catalogue documents it as changing on its own (`volatile`).
    pub volatile: bool,
    /// The catalogue documents host reads of it failing (`read_fails`).
    pub read_fails: bool,
    /// The catalogue's reserved-bit mask (`reserved.mask`; 0 where it documents none).
    pub reserved_mask: u64,
    /// Its position among the listed and feature MSRs in index order -- the order of a pooled
    /// vCPU's snapshot, which looks values up by it (`fuzzing::pool`) -- if it is one of them.
    pub snapshot_slot: Option<u16>,
}

impl MsrTraits {
    /// Listed or a feature MSR: what a pooled vCPU's snapshot holds (where readable).
    pub fn in_lists(self) -> bool {
        self.listed || self.feature
    }
}

/// The traits of every index the host's lists or the catalogue name: an open-addressing hash
/// table (Fibonacci hashing, linear probing, at most a quarter full), so a lookup is a multiply and
/// usually one slot -- the fuzzers' indices are mostly named by nothing, and a binary search
/// or a B-tree walk pays a dozen traced comparisons for each of those.
pub struct MsrTraitsTable {
    slots: Vec<Slot>,
    /// 32 - log2(slots.len()).
    shift: u32,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    used: bool,
    index: u32,
    traits: MsrTraits,
}

impl Default for MsrTraitsTable {
    fn default() -> MsrTraitsTable {
        MsrTraitsTable::with(BTreeMap::new())
    }
}

impl MsrTraitsTable {
    pub fn new(facts: &HostFacts, catalogue: &Catalogue) -> MsrTraitsTable {
        Self::from_lists(
            &facts.msr_index_list,
            &facts.msr_feature_index_list,
            catalogue,
        )
    }

    /// From KVM_GET_MSR_INDEX_LIST's and KVM_GET_MSR_FEATURE_INDEX_LIST's indices.
    pub fn from_lists(listed: &[u32], features: &[u32], catalogue: &Catalogue) -> MsrTraitsTable {
        let mut all: BTreeMap<u32, MsrTraits> = BTreeMap::new();
        for &i in listed {
            all.entry(i).or_default().listed = true;
        }
        for &i in features {
            all.entry(i).or_default().feature = true;
        }
        for (&i, m) in &catalogue.msrs {
            let t = all.entry(i).or_default();
            t.catalogued = true;
            t.volatile = m.volatile.is_some();
            t.read_fails = m.read_fails.is_some();
            t.reserved_mask = m.reserved.as_ref().map_or(0, |r| r.mask);
        }
        MsrTraitsTable::with(all)
    }

    fn with(all: BTreeMap<u32, MsrTraits>) -> MsrTraitsTable {
        let bits = (4 * all.len()).next_power_of_two().max(64).trailing_zeros();
        let mut table = MsrTraitsTable {
            slots: vec![Slot::default(); 1 << bits],
            shift: 32 - bits,
        };
        let mut in_lists = 0usize;
        for (index, mut traits) in all {
            if traits.in_lists() {
                traits.snapshot_slot = u16::try_from(in_lists).ok();
                in_lists += 1;
            }
            let mut k = table.home(index);
            while table.slots[k].used {
                k = (k + 1) & (table.slots.len() - 1);
            }
            table.slots[k] = Slot {
                used: true,
                index,
                traits,
            };
        }
        table
    }

    /// The slot `index` hashes to (Knuth's multiplicative hashing: the top bits of index * 2^32/phi).
    fn home(&self, index: u32) -> usize {
        (index.wrapping_mul(0x9e37_79b9) >> self.shift) as usize
    }

    /// The traits of `index` (all false for an index nothing names).
    pub fn get(&self, index: u32) -> MsrTraits {
        let mut k = self.home(index);
        loop {
            let s = self.slots[k];
            if !s.used {
                return MsrTraits::default();
            }
            if s.index == index {
                return s.traits;
            }
            k = (k + 1) & (self.slots.len() - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lookup_answers_what_the_lists_and_the_catalogue_say() {
        let cat = Catalogue::load_default().unwrap();
        let t = MsrTraitsTable::from_lists(&[0x10, 0x1b, 0x4b56_4d00], &[0x10a], &cat);
        // IA32_TSC: listed, catalogued, documented as counting on its own.
        let tsc = t.get(0x10);
        assert!(tsc.listed && tsc.catalogued && tsc.volatile && !tsc.feature && tsc.in_lists());
        // IA32_APIC_BASE: listed and catalogued, stable.
        let apic_base = t.get(0x1b);
        assert!(apic_base.listed && apic_base.catalogued && !apic_base.volatile);
        // IA32_ARCH_CAPABILITIES: a feature MSR.
        assert!(t.get(0x10a).feature && t.get(0x10a).in_lists());
        // IA32_PRED_CMD: catalogued, write-only, in neither list here.
        let pred_cmd = t.get(0x49);
        assert!(pred_cmd.catalogued && pred_cmd.read_fails && !pred_cmd.in_lists());
        // Named by nothing.
        assert_eq!(t.get(0xdead_beef), MsrTraits::default());
        assert_eq!(MsrTraitsTable::default().get(0x10), MsrTraits::default());
    }

    #[test]
    fn reserved_masks_are_the_catalogues() {
        let cat = Catalogue::load_default().unwrap();
        let t = MsrTraitsTable::from_lists(&[], &[], &cat);
        let mut documented = 0;
        for (&i, m) in &cat.msrs {
            let want = m.reserved.as_ref().map_or(0, |r| r.mask);
            assert_eq!(t.get(i).reserved_mask, want, "{i:#x}");
            documented += usize::from(want != 0);
        }
        assert!(
            documented > 10,
            "only {documented} catalogued reserved masks"
        );
    }

    #[test]
    fn snapshot_slots_number_the_listed_and_feature_msrs_in_index_order() {
        let cat = Catalogue::load_default().unwrap();
        let t = MsrTraitsTable::from_lists(&[0x1b, 0x10, 0xc000_0080], &[0x10a, 0x10], &cat);
        let slots: Vec<_> = [0x10, 0x1b, 0x10a, 0xc000_0080]
            .iter()
            .map(|&i| t.get(i).snapshot_slot)
            .collect();
        assert_eq!(slots, [Some(0), Some(1), Some(2), Some(3)]);
        // Catalogued only (IA32_PRED_CMD), or named by nothing: no slot.
        assert_eq!(t.get(0x49).snapshot_slot, None);
        assert_eq!(t.get(0x1234_5678).snapshot_slot, None);
    }

    #[test]
    fn every_named_index_is_found_and_nothing_else() {
        let cat = Catalogue::load_default().unwrap();
        // Indices that collide in a small table, and the extremes.
        let listed: Vec<u32> = (0..300).map(|k| k * 0x1000).chain([u32::MAX]).collect();
        let t = MsrTraitsTable::from_lists(&listed, &[0], &cat);
        for &i in &listed {
            assert!(t.get(i).listed, "{i:#x}");
        }
        assert!(t.get(0).feature);
        for &i in cat.msrs.keys() {
            assert!(t.get(i).catalogued, "{i:#x}");
        }
        for i in [1, 0x0fff, 0x1001, u32::MAX - 1, 0xdead_beef] {
            if !cat.msrs.contains_key(&i) {
                assert_eq!(t.get(i), MsrTraits::default(), "{i:#x}");
            }
        }
    }
}
