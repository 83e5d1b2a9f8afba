//! Machine-check setup: KVM_X86_SETUP_MCE and what it does to the MCE MSRs (semantics §1.12;
//! api.rst 4.105/4.106; x86.c kvm_vcpu_ioctl_x86_setup_mce, set_msr_mce, get_msr_mce). The
//! catalogue's MCE rows check a vCPU as created (MCG_CAP 0x20: 32 banks, no capability bits);
//! these check the vCPU a VMM sets up, including the MCG_CTL_P side of MCG_CTL's gate.

use super::{hex, Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::{raw, Errno};
use crate::machine::Machine;
use crate::msr_index::{IA32_MCG_CAP as MCG_CAP, IA32_MCG_CTL as MCG_CTL};

/// MCG_CAP.MCG_CTL_P (SDM vol. 3B 16.3.1.1).
const MCG_CTL_P: u64 = 1 << 8;
const ALL_ONES: u64 = !0;

const SETUP: &str = "x86.c kvm_vcpu_ioctl_x86_setup_mce: bank count 1..KVM_MAX_MCE_BANKS and no bit outside supported_mce_cap | 0xff | 0xff0000, else -EINVAL; sets mcg_cap; MCG_CTL = ~0 with MCG_CTL_P; every MCi_CTL of the banks = ~0";

fn mci_ctl(bank: u32) -> u32 {
    0x400 + 4 * bank
}

/// KVM's MCE support: the bank limit (KVM_CAP_MCE) and the capability bits it accepts.
pub(super) fn support(ctx: &Context) -> Result<(u64, u64), Outcome> {
    let banks = ctx.facts.cap("KVM_CAP_MCE");
    if banks <= 0 {
        return Err(Outcome::skip("KVM_CAP_MCE is absent: no KVM_X86_SETUP_MCE"));
    }
    let caps = raw::mce_cap_supported(ctx.sys().kvm()).map_err(|e| {
        Outcome::fail(
            "KVM_X86_GET_MCE_CAP_SUPPORTED to succeed where KVM_CAP_MCE is reported",
            format!("errno {e}"),
        )
    })?;
    Ok((banks as u64, caps))
}

/// A fresh machine with KVM_X86_SETUP_MCE(mcg_cap) done.
pub(super) fn set_up(ctx: &Context, mcg_cap: u64) -> Result<Machine, Outcome> {
    let m = ctx.machine().map_err(Outcome::harness)?;
    raw::setup_mce(&m.vcpu, mcg_cap).map_err(|e| {
        Outcome::fail(
            format!("KVM_X86_SETUP_MCE({mcg_cap:#x}) to succeed"),
            format!("errno {e}"),
        )
    })?;
    Ok(m)
}

/// For one, four and the most banks: MCG_CAP reads what was set, the banks' MCi_CTL read all
/// ones, and the bank after the last does not exist.
fn banks(ctx: &Context) -> Outcome {
    let (max, _) = match support(ctx) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let mut bad = Vec::new();
    for n in [1, 4.min(max), max] {
        let m = match set_up(ctx, n) {
            Ok(m) => m,
            Err(o) => return o,
        };
        let cap = m.vcpu.get_msr(MCG_CAP);
        if cap != Some(n) {
            bad.push(format!("{n} banks: MCG_CAP reads {cap:x?}"));
        }
        for b in 0..n as u32 {
            let v = m.vcpu.get_msr(mci_ctl(b));
            if v != Some(ALL_ONES) {
                bad.push(format!("{n} banks: MC{b}_CTL reads {v:x?}"));
            }
        }
        if n < 32 {
            let beyond = m.vcpu.get_msr(mci_ctl(n as u32));
            if beyond.is_some() {
                bad.push(format!(
                    "{n} banks: MC{n}_CTL (beyond the last bank) reads {beyond:x?}"
                ));
            }
        }
    }
    Outcome::unless(
        bad,
        "MCG_CAP = the value set, MCi_CTL = all ones for each bank, no bank beyond",
        format!(
            "1, {}, {max} banks: MCG_CAP as set, every MCi_CTL all ones, the next bank absent",
            4.min(max)
        ),
    )
}

/// Setups KVM must refuse: no banks, one bank too many, a capability bit it does not support.
fn refused(ctx: &Context) -> Outcome {
    let (max, caps) = match support(ctx) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    // The lowest bit outside the bank count, the reserved-for-software bytes and what KVM supports.
    let unsupported = (8..64)
        .map(|b| 1u64 << b)
        .find(|bit| bit & (caps | 0xff_0000) == 0);
    let mut cases = vec![("no banks", 0), ("one bank too many", max + 1)];
    if let Some(bit) = unsupported {
        cases.push(("an unsupported capability bit", 1 | bit));
    }
    let before = m.vcpu.get_msr(MCG_CAP);
    let mut bad = Vec::new();
    for (what, cap) in &cases {
        let r = raw::setup_mce(&m.vcpu, *cap);
        if r != Err(Errno::EINVAL) {
            bad.push(format!("{what} ({cap:#x}): {r:?}"));
        }
    }
    let after = m.vcpu.get_msr(MCG_CAP);
    if after != before || after.is_none() {
        bad.push(format!("MCG_CAP {before:x?} before, {after:x?} after"));
    }
    let names: Vec<String> = cases.iter().map(|(w, c)| format!("{w} ({c:#x})")).collect();
    Outcome::unless(
        bad,
        "-EINVAL for each, and MCG_CAP left as it was",
        format!("-EINVAL for {}; MCG_CAP unchanged", names.join(", ")),
    )
}

/// With MCG_CTL_P: MCG_CTL reads all ones, and the guest may access it but write only 0 or all
/// ones (x86.c set_msr_mce MSR_IA32_MCG_CTL) -- the open side of the gate
/// guest.mcg-ctl.gate-closed checks closed.
fn mcg_ctl_with_ctl_p(ctx: &Context) -> Outcome {
    let (_, caps) = match support(ctx) {
        Ok(s) => s,
        Err(o) => return o,
    };
    if caps & MCG_CTL_P == 0 {
        return Outcome::skip("KVM_X86_GET_MCE_CAP_SUPPORTED lacks MCG_CTL_P");
    }
    let mut m = match set_up(ctx, 4 | MCG_CTL_P) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let host = m.vcpu.get_msr(MCG_CTL);
    let run = m.run_ops(&[
        GuestOp::Rdmsr(MCG_CTL),
        GuestOp::Wrmsr(MCG_CTL, 0x5),
        GuestOp::Wrmsr(MCG_CTL, 0),
        GuestOp::Rdmsr(MCG_CTL),
    ]);
    if let Some(d) = run.death {
        return Outcome::died(d);
    }
    let o = &run.outcomes;
    let ok = host == Some(ALL_ONES)
        && o[0] == OpOutcome::Read(ALL_ONES)
        && o[1].is_gp()
        && o[2] == OpOutcome::Wrote
        && o[3] == OpOutcome::Read(0);
    let actual = format!(
        "host read {}; guest RDMSR {}, WRMSR 0x5 {}, WRMSR 0 {}, RDMSR {}",
        host.map_or("failed".into(), hex),
        o[0],
        o[1],
        o[2],
        o[3]
    );
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "host and guest read all ones; the guest's WRMSR of 0x5 #GPs, of 0 succeeds and reads back",
            actual,
        )
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    vec![
        Check::new(
            CheckId::fixed(Family::Mce, "setup.banks"),
            Some(MCG_CAP),
            "KVM_X86_SETUP_MCE with 1, 4 and the most banks: MCG_CAP reads back, every MCi_CTL is all ones, the next bank does not exist",
            format!("{SETUP}; get_msr_mce: bank MSRs beyond the count fail"),
            banks,
        ),
        Check::new(
            CheckId::fixed(Family::Mce, "setup.refused"),
            Some(MCG_CAP),
            "KVM_X86_SETUP_MCE refuses 0 banks, more than KVM_CAP_MCE, and an unsupported capability bit, with -EINVAL, and MCG_CAP stays",
            format!("{SETUP}; api.rst 4.105, 4.106; KVM_CAP_MCE reports KVM_MAX_MCE_BANKS"),
            refused,
        ),
        Check::new(
            CheckId::fixed(Family::Mce, "mcg-ctl.with-ctl-p"),
            Some(MCG_CTL),
            "with MCG_CTL_P set up, MCG_CTL reads all ones and the guest may write 0 or all ones only",
            format!("{SETUP}; x86.c set_msr_mce MSR_IA32_MCG_CTL: data != 0 && data != ~(u64)0 -> 1; SDM vol. 3B 16.3.1.3"),
            mcg_ctl_with_ctl_p,
        ),
    ]
}
