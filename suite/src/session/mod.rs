//! A session with KVM: the system fd, the host facts, the catalogue and the deviations -- what
//! every check, oracle, prober and fuzz executor sees. It sits below all of them (kvm, guest,
//! machine and the fixtures' loaders are all it needs), so none of them depends on another to
//! get it.

pub mod ids;
pub mod msr_traits;

use crate::catalogue::Catalogue;
use crate::deviations::Deviations;
use crate::kvm::facts::HostFacts;
use crate::kvm::{CpuidPolicy, KvmSystem};
use crate::machine::{Machine, MachineConfig};
use msr_traits::MsrTraitsTable;

pub struct Context {
    /// None for a context built without KVM (`Context::without_kvm`), which lists checks but
    /// runs none.
    sys: Option<KvmSystem>,
    pub facts: HostFacts,
    pub catalogue: Catalogue,
    pub deviations: Deviations,
    /// The lists' and the catalogue's answers per index, for code that asks per entry.
    pub traits: MsrTraitsTable,
}

impl Context {
    /// Open KVM, gather facts, load fixtures.
    pub fn load() -> crate::Result<Context> {
        let sys = KvmSystem::open()?;
        let facts = HostFacts::gather(&sys)?;
        let catalogue = Catalogue::load_default()?;
        Ok(Context {
            traits: MsrTraitsTable::new(&facts, &catalogue),
            sys: Some(sys),
            facts,
            catalogue,
            deviations: Deviations::load_default()?,
        })
    }

    /// A context for a host without a usable /dev/kvm: the fixtures and what can be known
    /// without KVM (`HostFacts::without_kvm`). `checks::all` on it gives the checks that exist
    /// on every host (those generated from this host's MSR lists are missing); running one
    /// panics, which the runner turns into that check's failure.
    pub fn without_kvm() -> crate::Result<Context> {
        let facts = HostFacts::without_kvm();
        let catalogue = Catalogue::load_default()?;
        Ok(Context {
            traits: MsrTraitsTable::new(&facts, &catalogue),
            sys: None,
            facts,
            catalogue,
            deviations: Deviations::load_default()?,
        })
    }

    /// The KVM system fd.
    pub fn sys(&self) -> &KvmSystem {
        self.sys
            .as_ref()
            .expect("a context built without KVM lists checks; it cannot run them")
    }

    /// A machine with KVM's supported CPUID (as a VMM with `-cpu host` would set it).
    pub fn machine(&self) -> crate::Result<Machine> {
        Machine::new(
            self.sys(),
            &MachineConfig::with_cpuid(self.facts.supported_cpuid.clone()),
        )
    }

    /// A machine whose vCPU gets `cpuid` (read back afterwards: see `Vcpu::effective_cpuid`).
    pub fn machine_with_cpuid(&self, cpuid: crate::kvm::CpuidTable) -> crate::Result<Machine> {
        self.machine_with(cpuid, 0)
    }

    /// ... and with the KVM quirks in `quirks_off` disabled (KVM_CAP_DISABLE_QUIRKS2).
    pub fn machine_with(
        &self,
        cpuid: crate::kvm::CpuidTable,
        quirks_off: u64,
    ) -> crate::Result<Machine> {
        let mut c = MachineConfig::with_cpuid(cpuid);
        c.vm.quirks_disabled = quirks_off;
        Machine::new(self.sys(), &c)
    }

    /// A machine whose vCPU never saw KVM_SET_CPUID2.
    pub fn bare_machine(&self) -> crate::Result<Machine> {
        let mut c = MachineConfig::with_cpuid(self.facts.supported_cpuid.clone());
        c.cpuid = CpuidPolicy::Bare;
        Machine::new(self.sys(), &c)
    }
}
