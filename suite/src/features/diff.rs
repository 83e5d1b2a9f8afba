//! `kvm-msr diff A.json B.json`: what changed between two probes and whether a guest started on
//! host A can be migrated to host B without losing an MSR-based feature it could see.

use super::decode::{DecodeTables, FieldKind, Register};
use super::probe::Probe;
use std::collections::{BTreeMap, BTreeSet};

/// One difference, and whether it blocks migration from A to B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub what: String,
    pub blocks_migration: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Diff {
    pub differences: Vec<Difference>,
}

impl Diff {
    pub fn compatible(&self) -> bool {
        !self.differences.iter().any(|d| d.blocks_migration)
    }

    pub fn to_text(&self, a: &str, b: &str) -> String {
        let mut s = String::new();
        for d in &self.differences {
            s.push_str(&format!(
                "{} {}\n",
                if d.blocks_migration {
                    "BLOCKS"
                } else {
                    "note  "
                },
                d.what
            ));
        }
        if self.differences.is_empty() {
            s.push_str("no differences in the MSR surface\n");
        }
        let blockers = self
            .differences
            .iter()
            .filter(|d| d.blocks_migration)
            .count();
        s.push_str(&if blockers == 0 {
            format!("verdict: compatible: a guest started on {a} keeps every MSR feature it could see when moved to {b}\n")
        } else {
            format!("verdict: NOT compatible: {blockers} difference(s) would take away from a guest on {a} something it could see, when moved to {b}\n")
        });
        s
    }
}

fn push(v: &mut Vec<Difference>, blocks: bool, what: String) {
    v.push(Difference {
        what,
        blocks_migration: blocks,
    });
}

/// Compare A (migration source) with B (target).
pub fn diff(a: &Probe, b: &Probe, tables: &DecodeTables) -> Diff {
    let mut d = Vec::new();
    host_and_lists(&mut d, a, b);
    feature_values(&mut d, a, b, tables);
    cpuid_bits(&mut d, a, b);
    Diff { differences: d }
}

/// The kernel, the backend, and the save/restore list: state KVM on A saves that KVM on B cannot
/// restore blocks the migration.
fn host_and_lists(d: &mut Vec<Difference>, a: &Probe, b: &Probe) {
    let (ha, hb) = (&a.host, &b.host);
    if ha.kernel_release != hb.kernel_release {
        push(
            d,
            false,
            format!("kernel: {} -> {}", ha.kernel_release, hb.kernel_release),
        );
    }
    if ha.backend != hb.backend {
        push(
            d,
            false,
            format!("backend: {} -> {}", ha.backend.name(), hb.backend.name()),
        );
    }
    let names: BTreeMap<u32, &str> = a
        .index_list
        .iter()
        .chain(&b.index_list)
        .map(|m| (m.index, m.name.as_str()))
        .collect();
    let name = |i: u32| names.get(&i).copied().unwrap_or("?").to_string();
    // The save/restore list: state KVM on A saves that KVM on B cannot restore.
    let la: BTreeSet<u32> = ha.msr_index_list.iter().copied().collect();
    let lb: BTreeSet<u32> = hb.msr_index_list.iter().copied().collect();
    for i in la.difference(&lb) {
        push(d, true, format!("index list: {i:#x} {} is saved on A but B's KVM does not list it (its state cannot be restored)", name(*i)));
    }
    for i in lb.difference(&la) {
        push(
            d,
            false,
            format!("index list: {i:#x} {} appears on B", name(*i)),
        );
    }
}

/// Feature MSRs, field by field.
fn feature_values(d: &mut Vec<Difference>, a: &Probe, b: &Probe, tables: &DecodeTables) {
    let fa: BTreeMap<u32, Option<u64>> = a.features.iter().map(|f| (f.index, f.value)).collect();
    let fb: BTreeMap<u32, Option<u64>> = b.features.iter().map(|f| (f.index, f.value)).collect();
    for (&i, &va) in &fa {
        let reg = tables.registers.get(&i);
        let rname = reg
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("MSR {i:#x}"));
        let Some(&vb) = fb.get(&i) else {
            let blocks = va.is_some_and(|v| v != 0)
                && !reg.is_some_and(|r| r.field.iter().all(|f| f.kind == FieldKind::Info));
            push(
                d,
                blocks,
                format!("feature list: {rname} is a feature MSR on A ({va:x?}) but not on B"),
            );
            continue;
        };
        let (Some(va), Some(vb)) = (va, vb) else {
            if va != vb {
                push(
                    d,
                    va.is_some(),
                    format!(
                        "feature {rname}: readable {} on A, {} on B",
                        va.is_some(),
                        vb.is_some()
                    ),
                );
            }
            continue;
        };
        if va == vb {
            continue;
        }
        field_diffs(d, reg, &rname, va, vb);
    }
    for i in fb.keys().filter(|i| !fa.contains_key(i)) {
        push(
            d,
            false,
            format!("feature list: {i:#x} is a feature MSR on B only"),
        );
    }
}

/// The fields of one feature MSR whose values differ between A (`va`) and B (`vb`), and its
/// unnamed bits.
fn field_diffs(d: &mut Vec<Difference>, reg: Option<&Register>, rname: &str, va: u64, vb: u64) {
    let mut covered = 0u64;
    for f in reg.map(|r| r.field.as_slice()).unwrap_or_default() {
        covered |= f.mask();
        let (x, y) = (f.extract(va), f.extract(vb));
        if x == y {
            continue;
        }
        let blocks = match f.kind {
            FieldKind::Capability => x != 0 && y == 0,
            FieldKind::Hazard => x == 0 && y != 0,
            FieldKind::Value => true,
            FieldKind::Info => false,
        };
        let kind = match f.kind {
            FieldKind::Capability if blocks => "lost on B",
            FieldKind::Capability => "gained on B",
            FieldKind::Hazard if blocks => "a hazard B has and A does not",
            FieldKind::Hazard => "a hazard A has and B does not",
            FieldKind::Value => "differs",
            FieldKind::Info => "informational",
        };
        push(
            d,
            blocks,
            format!("feature {rname}.{}: {x:#x} -> {y:#x} ({kind})", f.name),
        );
    }
    let (ua, ub) = (va & !covered, vb & !covered);
    if ua != ub {
        // Unnamed bits: losing one is treated as losing a capability.
        push(
            d,
            ua & !ub != 0,
            format!("feature {rname}: unnamed bits {ua:#x} -> {ub:#x}"),
        );
    }
}

/// CPUID bits that let a guest see those MSRs.
fn cpuid_bits(d: &mut Vec<Difference>, a: &Probe, b: &Probe) {
    for ca in &a.cpuid {
        if let Some(cb) = b.cpuid.iter().find(|c| c.feature == ca.feature) {
            if ca.supported != cb.supported {
                push(
                    d,
                    ca.supported && !cb.supported,
                    format!(
                        "KVM_GET_SUPPORTED_CPUID {}: {} -> {}",
                        ca.feature, ca.supported, cb.supported
                    ),
                );
            }
            if ca.effective != cb.effective {
                push(
                    d,
                    ca.effective && !cb.effective,
                    format!(
                        "vCPU-effective CPUID {}: {} -> {}",
                        ca.feature, ca.effective, cb.effective
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::{Field, Register};
    use super::super::probe::{DecodedFeature, NamedMsr, Probe};
    use super::*;

    fn probe(json: &str) -> Probe {
        serde_json::from_str(json).unwrap()
    }

    fn tables() -> DecodeTables {
        let mut t = DecodeTables::default();
        t.registers.insert(
            0x10a,
            Register {
                index: 0x10a,
                name: "ARCH_CAP".into(),
                cite: "c".into(),
                field: vec![
                    Field {
                        name: "RDCL_NO".into(),
                        lsb: 0,
                        width: 1,
                        kind: FieldKind::Capability,
                    },
                    Field {
                        name: "RSBA".into(),
                        lsb: 2,
                        width: 1,
                        kind: FieldKind::Hazard,
                    },
                ],
            },
        );
        t
    }

    fn base() -> Probe {
        probe(include_str!("../../tests/data/probe-minimal.json"))
    }

    fn with_feature(mut p: Probe, v: u64) -> Probe {
        p.features = vec![DecodedFeature {
            index: 0x10a,
            name: "ARCH_CAP".into(),
            value: Some(v),
            fields: vec![],
            unnamed_bits: 0,
        }];
        p
    }

    #[test]
    fn identical_probes_are_compatible() {
        let d = diff(&base(), &base(), &tables());
        assert!(d.compatible() && d.differences.is_empty());
    }

    #[test]
    fn a_lost_capability_blocks_and_a_gained_one_does_not() {
        let (a, b) = (with_feature(base(), 0b1), with_feature(base(), 0b0));
        assert!(!diff(&a, &b, &tables()).compatible());
        assert!(diff(&b, &a, &tables()).compatible());
    }

    #[test]
    fn a_hazard_appearing_on_the_target_blocks() {
        let (a, b) = (with_feature(base(), 0b000), with_feature(base(), 0b100));
        assert!(!diff(&a, &b, &tables()).compatible());
        assert!(diff(&b, &a, &tables()).compatible());
    }

    #[test]
    fn an_msr_missing_from_the_targets_index_list_blocks() {
        let a = base();
        let mut b = base();
        b.host.msr_index_list.retain(|&i| i != 0x10);
        b.index_list.retain(|m| m.index != 0x10);
        let d = diff(&a, &b, &tables());
        assert!(!d.compatible(), "{:?}", d);
        assert!(diff(&b, &a, &tables()).compatible());
        let _ = NamedMsr {
            index: 0,
            name: String::new(),
        };
    }
}
