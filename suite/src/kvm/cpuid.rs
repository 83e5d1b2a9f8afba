//! CPUID tables: KVM's supported CPUID, single-bit edits, and reading a vCPU's effective CPUID
//! back (KVM_GET_CPUID2), from which every CPUID-gated expectation is derived.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One CPUID feature bit: leaf, subleaf, register, bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

macro_rules! feature {
    ($name:literal, $leaf:literal, $sub:literal, $reg:ident, $bit:literal) => {
        Feature {
            name: $name,
            leaf: $leaf,
            subleaf: $sub,
            reg: Reg::$reg,
            bit: $bit,
        }
    };
}

/// CPUID bits that gate MSRs (SDM vol. 2A CPUID; APM vol. 3 appendix E; KVM's
/// arch/x86/include/asm/cpufeatures.h names).
pub const FEATURES: &[Feature] = &[
    feature!("SSE3", 0x1, 0, Ecx, 0),
    feature!("MWAIT", 0x1, 0, Ecx, 3),
    feature!("MSR", 0x1, 0, Edx, 5),
    feature!("APIC", 0x1, 0, Edx, 9),
    feature!("OSXSAVE", 0x1, 0, Ecx, 27),
    feature!("OSPKE", 0x7, 0, Ecx, 4),
    feature!("SEP", 0x1, 0, Edx, 11),
    feature!("MTRR", 0x1, 0, Edx, 12),
    feature!("MCE", 0x1, 0, Edx, 7),
    feature!("PAT", 0x1, 0, Edx, 16),
    feature!("DS", 0x1, 0, Edx, 21),
    feature!("VMX", 0x1, 0, Ecx, 5),
    feature!("PDCM", 0x1, 0, Ecx, 15),
    feature!("X2APIC", 0x1, 0, Ecx, 21),
    feature!("TSC_DEADLINE", 0x1, 0, Ecx, 24),
    feature!("XSAVE", 0x1, 0, Ecx, 26),
    feature!("HYPERVISOR", 0x1, 0, Ecx, 31),
    feature!("TSC_ADJUST", 0x7, 0, Ebx, 1),
    feature!("MPX", 0x7, 0, Ebx, 14),
    feature!("LA57", 0x7, 0, Ecx, 16),
    feature!("RDPID", 0x7, 0, Ecx, 22),
    feature!("SHSTK", 0x7, 0, Ecx, 7),
    feature!("WAITPKG", 0x7, 0, Ecx, 5),
    feature!("IBT", 0x7, 0, Edx, 20),
    feature!("SPEC_CTRL", 0x7, 0, Edx, 26),
    feature!("FLUSH_L1D", 0x7, 0, Edx, 28),
    feature!("ARCH_CAPABILITIES", 0x7, 0, Edx, 29),
    feature!("CORE_CAPABILITIES", 0x7, 0, Edx, 30),
    feature!("SSBD", 0x7, 0, Edx, 31),
    feature!("XSAVES", 0xd, 1, Eax, 3),
    feature!("SYSCALL", 0x8000_0001, 0, Edx, 11),
    feature!("NX", 0x8000_0001, 0, Edx, 20),
    feature!("RDTSCP", 0x8000_0001, 0, Edx, 27),
    feature!("LM", 0x8000_0001, 0, Edx, 29),
    feature!("SVM", 0x8000_0001, 0, Ecx, 2),
    feature!("OSVW", 0x8000_0001, 0, Ecx, 9),
    feature!("AMD_IBPB", 0x8000_0008, 0, Ebx, 12),
    feature!("AMD_IBRS", 0x8000_0008, 0, Ebx, 14),
    feature!("AMD_STIBP", 0x8000_0008, 0, Ebx, 15),
    feature!("AMD_SSBD", 0x8000_0008, 0, Ebx, 24),
    feature!("VIRT_SSBD", 0x8000_0008, 0, Ebx, 25),
    feature!("TSCRATEMSR", 0x8000_000a, 0, Edx, 4),
    feature!("SBPB", 0x8000_0021, 0, Eax, 27),
    feature!("KVM_CLOCKSOURCE", 0x4000_0001, 0, Eax, 0),
    feature!("KVM_ASYNC_PF", 0x4000_0001, 0, Eax, 4),
    feature!("KVM_STEAL_TIME", 0x4000_0001, 0, Eax, 5),
    feature!("KVM_PV_EOI", 0x4000_0001, 0, Eax, 6),
    feature!("KVM_CLOCKSOURCE2", 0x4000_0001, 0, Eax, 3),
    feature!("KVM_POLL_CONTROL", 0x4000_0001, 0, Eax, 12),
    feature!("KVM_ASYNC_PF_INT", 0x4000_0001, 0, Eax, 14),
    feature!("XFD", 0xd, 1, Eax, 4),
];

/// The bits `same_but_runtime_bits` sets aside, found in `FEATURES` when compiling (not by name
/// at every comparison).
const RUNTIME_BITS: [Feature; 3] = [
    known_feature("APIC"),
    known_feature("OSXSAVE"),
    known_feature("OSPKE"),
];

/// The entry of `FEATURES` named exactly `name`, for constants: a missing name fails the build.
const fn known_feature(name: &str) -> Feature {
    let mut k = 0;
    while k < FEATURES.len() {
        let f = FEATURES[k];
        if f.name.len() == name.len() {
            let (a, b) = (f.name.as_bytes(), name.as_bytes());
            let mut i = 0;
            while i < a.len() && a[i] == b[i] {
                i += 1;
            }
            if i == a.len() {
                return f;
            }
        }
        k += 1;
    }
    panic!("not in FEATURES")
}

/// Look a feature up by name (case-insensitive).
pub fn feature(name: &str) -> Option<Feature> {
    FEATURES
        .iter()
        .copied()
        .find(|f| f.name.eq_ignore_ascii_case(name))
}

/// The CPU vendor a CPUID table claims (leaf 0 signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Intel,
    Amd,
    Hygon,
    Zhaoxin,
    Other,
}

impl Vendor {
    pub fn from_signature(ebx: u32, edx: u32, ecx: u32) -> Vendor {
        let mut s = Vec::with_capacity(12);
        for r in [ebx, edx, ecx] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        match &s[..] {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            b"CentaurHauls" | b"  Shanghai  " => Vendor::Zhaoxin,
            _ => Vendor::Other,
        }
    }

    /// KVM's `guest_cpuid_is_intel_compatible` (cpuid.h): Intel and Zhaoxin.
    pub fn is_intel_compatible(self) -> bool {
        matches!(self, Vendor::Intel | Vendor::Zhaoxin)
    }

    /// KVM's `guest_cpuid_is_amd_compatible` (cpuid.h): AMD and Hygon.
    pub fn is_amd_compatible(self) -> bool {
        matches!(self, Vendor::Amd | Vendor::Hygon)
    }
}

/// An owned CPUID table (the entries of a `kvm_cpuid2`).
#[derive(Clone, Debug, Default)]
pub struct CpuidTable {
    pub entries: Vec<kvm_cpuid_entry2>,
}

impl CpuidTable {
    /// The entries of a KVM_GET_CPUID2/KVM_GET_SUPPORTED_CPUID answer. All-zero entries are
    /// dropped: before ab322c43cce9 "KVM: x86: Update number of entries for KVM_GET_CPUID2 on
    /// success, not failure" (6.5) KVM_GET_CPUID2 left `nent` at the count userspace asked for,
    /// so the table came back padded with zeroed entries (no real leaf is all zero: leaf 0
    /// carries the vendor).
    pub fn from_kvm(c: &CpuId) -> Self {
        let zero = kvm_cpuid_entry2::default();
        CpuidTable {
            entries: c
                .as_slice()
                .iter()
                .filter(|e| **e != zero)
                .copied()
                .collect(),
        }
    }

    pub fn to_kvm(&self) -> CpuId {
        CpuId::from_entries(&self.entries).expect("CPUID table within KVM_MAX_CPUID_ENTRIES")
    }

    /// Where the entry of `leaf`/`subleaf` is: the first whose function matches and whose index
    /// matches too if it is significant.
    fn position(&self, leaf: u32, subleaf: u32) -> Option<usize> {
        self.entries.iter().position(|e| {
            e.function == leaf
                && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
        })
    }

    fn find(&self, leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
        self.position(leaf, subleaf).map(|k| &self.entries[k])
    }

    fn find_mut(&mut self, leaf: u32, subleaf: u32) -> Option<&mut kvm_cpuid_entry2> {
        self.position(leaf, subleaf).map(|k| &mut self.entries[k])
    }

    /// The value of one register, or None when the leaf is absent.
    pub fn reg(&self, leaf: u32, subleaf: u32, reg: Reg) -> Option<u32> {
        self.find(leaf, subleaf).map(|e| match reg {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        })
    }

    pub fn has(&self, f: Feature) -> bool {
        self.reg(f.leaf, f.subleaf, f.reg)
            .is_some_and(|v| v & (1 << f.bit) != 0)
    }

    /// Set or clear one feature bit. Returns false when the leaf is absent from the table (the bit
    /// then stays clear, which the caller must treat as "not set").
    pub fn set(&mut self, f: Feature, on: bool) -> bool {
        let Some(e) = self.find_mut(f.leaf, f.subleaf) else {
            return false;
        };
        let r = reg_mut(e, f.reg);
        if on {
            *r |= 1 << f.bit;
        } else {
            *r &= !(1 << f.bit);
        }
        true
    }

    pub fn vendor(&self) -> Vendor {
        match self.find(0, 0) {
            Some(e) => Vendor::from_signature(e.ebx, e.edx, e.ecx),
            None => Vendor::Other,
        }
    }

    /// Present the Hyper-V interface instead of KVM's own hypervisor leaves: leaves
    /// 0x40000000..=0x400000ff are replaced by 0x40000000 ("Microsoft Hv", max leaf 0x40000001)
    /// and 0x40000001 (EAX "Hv#1"), which is what KVM checks (cpuid.c kvm_cpuid_has_hyperv:
    /// 0x40000001.EAX == HYPERV_CPUID_SIGNATURE_EAX), plus the synthetic-debugger capability.
    /// No Hyper-V feature leaf (0x40000003) is given, which matters only once
    /// KVM_CAP_HYPERV_ENFORCE_CPUID is enabled (never, here).
    pub fn set_hyperv_interface(&mut self) {
        self.entries
            .retain(|e| !(0x4000_0000..=0x4000_00ff).contains(&e.function));
        let word = |s: &[u8; 4]| u32::from_le_bytes(*s);
        let leaf = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        self.entries.push(leaf(
            0x4000_0000,
            0x4000_0001,
            word(b"Micr"),
            word(b"osof"),
            word(b"t Hv"),
        ));
        self.entries.push(leaf(0x4000_0001, word(b"Hv#1"), 0, 0, 0));
        // The synthetic debugger range: 0x40000080 (max leaf 0x40000082) and 0x40000082.EAX
        // bit 1, HV_X64_SYNDBG_CAP_ALLOW_KERNEL_DEBUGGING, which kvm_hv_set_cpuid caches for
        // kvm_hv_is_syndbg_enabled (the SYNDBG MSRs' guest gate).
        self.entries.push(leaf(
            0x4000_0080,
            0x4000_0082,
            word(b"Micr"),
            word(b"osof"),
            word(b"t VS"),
        ));
        self.entries.push(leaf(0x4000_0082, 1 << 1, 0, 0, 0));
    }

    /// Equal once the bits KVM owns at run time are set aside: cpuid.c kvm_update_cpuid_runtime
    /// sets APIC from APIC_BASE, OSXSAVE and OSPKE from CR4, and kvm_cpuid_check_equal applies it
    /// to a table userspace sets after KVM_RUN before comparing (MWAIT too, but only with
    /// KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT disabled, which this does not cover).
    pub fn same_but_runtime_bits(&self, other: &CpuidTable) -> bool {
        if self.entries.len() != other.entries.len() {
            return false;
        }
        if self.same_entries(other) {
            return true;
        }
        // Entries that differ are compared again with the runtime bits cleared (in the entry
        // `set` would clear them in: the first that matches the leaf). No copy of either table:
        // the host fuzz target asks this for every KVM_SET_CPUID2 it makes.
        let strip = |t: &CpuidTable, k: usize| {
            let mut e = t.entries[k];
            for f in RUNTIME_BITS {
                if t.position(f.leaf, f.subleaf) == Some(k) {
                    *reg_mut(&mut e, f.reg) &= !(1 << f.bit);
                }
            }
            e
        };
        (0..self.entries.len())
            .all(|k| self.entries[k] == other.entries[k] || strip(self, k) == strip(other, k))
    }

    /// The same entries in the same order: one comparison of the tables' words (the derived
    /// comparison goes field by field, ~2,000 instructions for a 75-entry table; the host fuzz
    /// target compares tables at every KVM_SET_CPUID2 and save/restore).
    pub fn same_entries(&self, other: &CpuidTable) -> bool {
        entry_words(&self.entries) == entry_words(&other.entries)
    }

    /// Replace the leaf-0 vendor signature (e.g. to run an Intel-compatible guest on AMD).
    pub fn set_vendor(&mut self, vendor: Vendor) {
        let sig: &[u8; 12] = match vendor {
            Vendor::Intel => b"GenuineIntel",
            Vendor::Amd => b"AuthenticAMD",
            Vendor::Hygon => b"HygonGenuine",
            Vendor::Zhaoxin => b"CentaurHauls",
            Vendor::Other => b"kvm-msr-test",
        };
        let w = |i: usize| u32::from_le_bytes(sig[i..i + 4].try_into().unwrap());
        if let Some(e) = self.find_mut(0, 0) {
            e.ebx = w(0);
            e.edx = w(4);
            e.ecx = w(8);
        }
    }

    /// Names of the known features this table has.
    pub fn feature_names(&self) -> Vec<&'static str> {
        FEATURES
            .iter()
            .filter(|f| self.has(**f))
            .map(|f| f.name)
            .collect()
    }
}

/// One register of an entry.
fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// The ten u32 fields of each of `entries`, in order: what KVM_SET_CPUID2 reads
/// (`kvm::raw::set_cpuid2` copies them in one go) and what tables are compared by.
pub(crate) fn entry_words(entries: &[kvm_cpuid_entry2]) -> &[u32] {
    const _: () = assert!(std::mem::size_of::<kvm_cpuid_entry2>() == 40);
    const _: () = assert!(std::mem::align_of::<kvm_cpuid_entry2>() == 4);
    // SAFETY: kvm_cpuid_entry2 is #[repr(C)] of ten u32 (function, index, flags, eax, ebx, ecx,
    // edx, padding[3]): 40 bytes and u32-aligned, asserted above, without padding bytes, so the
    // memory is 10 * len initialized, aligned u32s; the result borrows `entries`, which it covers
    // exactly.
    unsafe { std::slice::from_raw_parts(entries.as_ptr().cast::<u32>(), 10 * entries.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn same_entries_sees_every_field() {
        let base = CpuidTable {
            entries: vec![entry(7, 0, 1, 5, 6), entry(1, 0, 0, 0xffff, 2)],
        };
        assert!(base.same_entries(&base.clone()));
        let fields: [fn(&mut kvm_cpuid_entry2); 10] = [
            |e| e.function ^= 1,
            |e| e.index ^= 1,
            |e| e.flags ^= 1,
            |e| e.eax ^= 1,
            |e| e.ebx ^= 1 << 31,
            |e| e.ecx ^= 1,
            |e| e.edx ^= 1,
            |e| e.padding[0] ^= 1,
            |e| e.padding[1] ^= 1,
            |e| e.padding[2] ^= 1,
        ];
        for (k, change) in fields.iter().enumerate() {
            let mut other = base.clone();
            change(&mut other.entries[1]);
            assert!(!base.same_entries(&other), "field #{k}");
            assert_eq!(base.entries == other.entries, base.same_entries(&other));
        }
        let shorter = CpuidTable {
            entries: base.entries[..1].to_vec(),
        };
        assert!(!base.same_entries(&shorter));
    }

    #[test]
    fn to_kvm_and_back_keep_every_entry_in_order() {
        let t = CpuidTable {
            entries: vec![
                entry(7, 0, 1, 5, 6),
                entry(1, 0, 0, 0xffff, 2),
                entry(7, 1, 1, 8, 9),
            ],
        };
        let kvm = t.to_kvm();
        assert_eq!(kvm.as_fam_struct_ref().nent, 3);
        assert_eq!(kvm.as_slice(), t.entries.as_slice());
        assert_eq!(CpuidTable::from_kvm(&kvm).entries, t.entries);
    }

    #[test]
    fn runtime_bits_are_the_only_difference_set_aside() {
        let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let table = |leaf1_ecx: u32, leaf1_edx: u32, leaf7_ecx: u32| CpuidTable {
            entries: vec![
                entry(0, 0, 0, 0, 0),
                entry(1, 0, 0, leaf1_ecx, leaf1_edx),
                entry(7, 0, sig, leaf7_ecx, 0),
                entry(7, 1, sig, 0, 0),
            ],
        };
        let base = table(0x1, 0x2, 0x8);
        assert!(base.same_but_runtime_bits(&base));
        // APIC (1.EDX[9]), OSXSAVE (1.ECX[27]), OSPKE (7.0.ECX[4]) set aside.
        let runtime = table(0x1 | 1 << 27, 0x2 | 1 << 9, 0x8 | 1 << 4);
        assert!(base.same_but_runtime_bits(&runtime));
        assert!(runtime.same_but_runtime_bits(&base));
        // Any other bit is a difference, as is OSPKE's bit in subleaf 1.
        assert!(!base.same_but_runtime_bits(&table(0x1, 0x2 | 1 << 8, 0x8)));
        let mut sub1 = base.clone();
        sub1.entries[3].ecx = 1 << 4;
        assert!(!base.same_but_runtime_bits(&sub1));
        let mut shorter = base.clone();
        shorter.entries.pop();
        assert!(!base.same_but_runtime_bits(&shorter));
    }
}
