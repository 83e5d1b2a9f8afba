//! The harness's own guarantees, checked on the real KVM: a guest that hangs, takes an
//! exception nothing expects, or triple-faults becomes a verdict with the exit details.

use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::Exit;
use std::time::Duration;

fn hang(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    m.timeout = Duration::from_millis(200);
    let run = m.run_from("hang", &[GuestOp::Rdmsr(0x10)]);
    match run.death {
        Some(d) if matches!(d.exit, Exit::Timeout { .. }) => Outcome::pass(d.to_string()),
        other => Outcome::fail("a Timeout death after 200 ms", format!("{other:?}")),
    }
}

fn unexpected_exception(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let ud = m.runtime.label("raise_ud");
    let run = m.run_from("raise_ud", &[]);
    match run.death {
        Some(d) if d.detail.contains("#UD") && d.detail.contains(&format!("{ud:#x}")) => {
            Outcome::pass(d.to_string())
        }
        // An emulator that cannot deliver the exception stops with an internal error instead.
        Some(d) if matches!(d.exit, Exit::InternalError { .. }) => Outcome::pass(d.to_string()),
        other => Outcome::fail(
            format!("an unexpected #UD at RIP {ud:#x} reported through the mailbox"),
            format!("{other:?}"),
        ),
    }
}

fn triple_fault(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    // An IDT limit of 0: #UD cannot be delivered (#GP), nor can #GP (#DF), nor #DF: shutdown.
    let mut s = match m.vcpu.fd.get_sregs() {
        Ok(s) => s,
        Err(e) => return Outcome::harness(crate::Error::ioctl("KVM_GET_SREGS", e)),
    };
    s.idt.limit = 0;
    if let Err(e) = m.vcpu.fd.set_sregs(&s) {
        return Outcome::harness(crate::Error::ioctl("KVM_SET_SREGS", e));
    }
    let run = m.run_from("raise_ud", &[]);
    match run.death {
        Some(d) if matches!(d.exit, Exit::Shutdown | Exit::InternalError { .. }) => {
            Outcome::pass(d.to_string())
        }
        other => Outcome::fail(
            "KVM_EXIT_SHUTDOWN (or an emulator internal error) as a verdict",
            format!("{other:?}"),
        ),
    }
}

/// With the prefix ignored, `ud2` of KVM_FEP raises #UD at the prefix: the interpreter must record
/// it for each op and carry on, which proves the prefixed program's fixups.
fn fep_prefix_without_emulation(ctx: &Context) -> Outcome {
    if ctx.facts.force_emulation_prefix() {
        return Outcome::skip("kvm.force_emulation_prefix is enabled: the prefix is emulated, not a #UD (the guest-fep.* checks cover it)");
    }
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let ops = [
        GuestOp::Rdmsr(0x277),
        GuestOp::Wrmsr(0x277, 0x0007_0406_0007_0406),
        GuestOp::Rdmsr(0x277),
    ];
    let run = crate::machine::with_forced_emulation(|| m.run_ops(&ops));
    if let Some(d) = run.death {
        return Outcome::fail("three #UD outcomes, the program completing", d.to_string());
    }
    let ud = |o: &OpOutcome| matches!(o, OpOutcome::Fault { vector: 6, .. });
    if run.outcomes.iter().all(ud) {
        Outcome::pass("each prefixed RDMSR/WRMSR raised #UD at the prefix and the program went on")
    } else {
        let got: Vec<String> = run.outcomes.iter().map(|o| o.to_string()).collect();
        Outcome::fail("#UD for each of the 3 prefixed ops", got.join(", "))
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    vec![
        Check::new(
            CheckId::fixed(Family::Harness, "guest-hang.reported"),
            None,
            "a guest spinning forever ends as a Timeout verdict",
            "api.rst 4.10 KVM_RUN: a pending signal makes KVM_RUN return -EINTR",
            hang,
        ),
        Check::new(
            CheckId::fixed(Family::Harness, "guest-unexpected-exception.reported"),
            None,
            "an exception outside a guarded RDMSR/WRMSR is reported with its vector and RIP",
            "SDM vol. 3A 6.12 (exception delivery through the IDT); guest/code.rs common handler",
            unexpected_exception,
        ),
        Check::new(
            CheckId::fixed(Family::Harness, "guest-triple-fault.reported"),
            None,
            "a triple fault ends as KVM_EXIT_SHUTDOWN, reported, not a crash",
            "SDM vol. 3A 6.15 (#DF, shutdown); api.rst 5 KVM_EXIT_SHUTDOWN",
                        triple_fault,
        ),
        Check::new(
            CheckId::fixed(Family::Harness, "fep-prefix-faults-when-not-emulated"),
            None,
            "with kvm.force_emulation_prefix=0 the prefixed interpreter records #UD per op and continues",
            "x86.c handle_ud (the prefix is honoured only with force_emulation_prefix); SDM vol. 2B UD2",
            fep_prefix_without_emulation,
        ),
    ]
}
