//! `kvm-msr probe`: this host's MSR surface, with every feature MSR decoded.

use super::decode::{DecodeTables, FieldKind};
use crate::kvm::cpuid::{self, CpuidTable};
use crate::kvm::facts::HostFacts;
use crate::session::Context;
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "kvm-msr-probe/1";

/// CPUID bits that enumerate MSR-based features (SDM vol. 2A CPUID), with what KVM reports and
/// what a vCPU given that table ends up with.
pub const ENUMERATING_BITS: &[(&str, &str)] = &[
    (
        "ARCH_CAPABILITIES",
        "CPUID.7.0:EDX[29] enumerates IA32_ARCH_CAPABILITIES",
    ),
    (
        "CORE_CAPABILITIES",
        "CPUID.7.0:EDX[30] enumerates IA32_CORE_CAPABILITIES (0xcf)",
    ),
    ("PDCM", "CPUID.1:ECX[15] enumerates IA32_PERF_CAPABILITIES"),
    ("VMX", "CPUID.1:ECX[5] enumerates the VMX capability MSRs"),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamedMsr {
    pub index: u32,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FieldValue {
    pub name: String,
    pub value: u64,
    pub kind: FieldKind,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecodedFeature {
    pub index: u32,
    pub name: String,
    /// None: the system-level KVM_GET_MSRS did not process it.
    pub value: Option<u64>,
    pub fields: Vec<FieldValue>,
    /// Set bits no field table names.
    pub unnamed_bits: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpuidBit {
    pub feature: String,
    pub meaning: String,
    /// In KVM_GET_SUPPORTED_CPUID.
    pub supported: bool,
    /// In KVM_GET_CPUID2 of a vCPU given KVM's supported CPUID (what a guest would see).
    pub effective: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    pub schema: String,
    pub host: HostFacts,
    pub index_list: Vec<NamedMsr>,
    pub features: Vec<DecodedFeature>,
    pub cpuid: Vec<CpuidBit>,
}

/// Decode one value with the tables (no fields when the register is unknown).
pub fn decode(tables: &DecodeTables, index: u32, value: u64) -> (Vec<FieldValue>, u64) {
    match tables.registers.get(&index) {
        None => (Vec::new(), value),
        Some(r) => (
            r.field
                .iter()
                .filter(|f| f.extract(value) != 0 || f.kind == FieldKind::Value)
                .map(|f| FieldValue {
                    name: f.name.clone(),
                    value: f.extract(value),
                    kind: f.kind,
                })
                .collect(),
            r.unnamed_bits(value),
        ),
    }
}

impl Probe {
    pub fn gather(ctx: &Context, tables: &DecodeTables) -> crate::Result<Probe> {
        let name = |i: u32| {
            ctx.catalogue
                .get(i)
                .map(|m| m.name.clone())
                .or_else(|| tables.registers.get(&i).map(|r| r.name.clone()))
                .unwrap_or_else(|| format!("MSR {i:#x}"))
        };
        let index_list = ctx
            .facts
            .msr_index_list
            .iter()
            .map(|&index| NamedMsr {
                index,
                name: name(index),
            })
            .collect();
        let features = ctx
            .facts
            .feature_values
            .iter()
            .map(|f| {
                let (fields, unnamed_bits) = f
                    .value
                    .map(|v| decode(tables, f.index, v))
                    .unwrap_or_default();
                DecodedFeature {
                    index: f.index,
                    name: name(f.index),
                    value: f.value,
                    fields,
                    unnamed_bits,
                }
            })
            .collect();
        let m = ctx.machine()?;
        let effective: CpuidTable = m.vcpu.effective_cpuid.clone().unwrap_or_default();
        let cpuid = ENUMERATING_BITS
            .iter()
            .map(|(n, meaning)| {
                let f = cpuid::feature(n).expect("known feature");
                CpuidBit {
                    feature: n.to_string(),
                    meaning: meaning.to_string(),
                    supported: ctx.facts.supported_cpuid.has(f),
                    effective: effective.has(f),
                }
            })
            .collect();
        Ok(Probe {
            schema: SCHEMA.into(),
            host: ctx.facts.clone(),
            index_list,
            features,
            cpuid,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("probe serializes") + "\n"
    }

    pub fn to_text(&self) -> String {
        let h = &self.host;
        let mut s = format!("host: {}\n", h.summary());
        s.push_str(&format!(
            "capabilities: {}\n",
            h.caps
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| if *v == 1 {
                    k.clone()
                } else {
                    format!("{k}={v:#x}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        ));
        s.push_str(&format!(
            "backend parameters: {}\n\n",
            h.backend_params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        s.push_str(&format!(
            "KVM_GET_MSR_INDEX_LIST ({} MSRs):\n",
            self.index_list.len()
        ));
        for m in &self.index_list {
            s.push_str(&format!("  {:#010x}  {}\n", m.index, m.name));
        }
        s.push_str(&format!(
            "\nKVM_GET_MSR_FEATURE_INDEX_LIST ({} MSRs), values from KVM_GET_MSRS on /dev/kvm:\n",
            self.features.len()
        ));
        for f in &self.features {
            match f.value {
                None => s.push_str(&format!(
                    "  {:#010x}  {}  (not readable)\n",
                    f.index, f.name
                )),
                Some(v) => {
                    s.push_str(&format!("  {:#010x}  {} = {v:#x}\n", f.index, f.name));
                    for fv in &f.fields {
                        if fv.value == 1
                            && fv.kind != FieldKind::Value
                            && fv.kind != FieldKind::Info
                        {
                            s.push_str(&format!("      {}\n", fv.name));
                        } else {
                            s.push_str(&format!("      {} = {:#x}\n", fv.name, fv.value));
                        }
                    }
                    if f.unnamed_bits != 0 {
                        s.push_str(&format!(
                            "      (bits without a name: {:#x})\n",
                            f.unnamed_bits
                        ));
                    }
                }
            }
        }
        s.push_str("\nCPUID bits that enumerate MSR features (supported by KVM / seen by a vCPU given that CPUID):\n");
        for c in &self.cpuid {
            let yn = |b: bool| if b { "yes" } else { "no" };
            s.push_str(&format!(
                "  {:<18} {:>3} / {:<3}  {}\n",
                c.feature,
                yn(c.supported),
                yn(c.effective),
                c.meaning
            ));
        }
        s
    }
}
