//! What the KVM paravirtual clock MSRs do to guest memory (Documentation/virt/kvm/x86/msr.rst:
//! MSR_KVM_WALL_CLOCK(_NEW) -> struct pvclock_wall_clock, MSR_KVM_SYSTEM_TIME(_NEW) -> struct
//! pvclock_vcpu_time_info; x86.c kvm_write_wall_clock, kvm_guest_time_update).

use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};

/// Free guest pages (guest/layout.rs leaves 0x9000-0xffff unused).
const CLOCK_GPA: u64 = 0x9000;
const WALL_GPA: u64 = 0x9100;

/// 2000-01-01 and 2100-01-01 in seconds since the epoch: the bounds of a plausible boot time.
const YEAR_2000: u64 = 946_684_800;
const YEAR_2100: u64 = 4_102_444_800;

fn pvclock(ctx: &Context, msr: u32) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    m.vm.mem.fill(CLOCK_GPA, 32, 0);
    // Enable (bit 0) with the structure at CLOCK_GPA; a second run lets KVM service the clock
    // update it requested (KVM_REQ_CLOCK_UPDATE is handled on the next entry).
    let run = m.run_ops(&[GuestOp::Wrmsr(msr, CLOCK_GPA | 1)]);
    match (run.death, run.outcomes[0]) {
        (None, OpOutcome::Wrote) => {}
        (None, o) => return Outcome::fail("the guest enables kvm-clock", o.to_string()),
        (Some(d), _) => return Outcome::died(d),
    }
    let again = m.run_ops(&[GuestOp::Rdmsr(msr)]);
    if let Some(d) = again.death {
        return Outcome::died(d);
    }
    let mut b = [0u8; 32];
    m.vm.mem.read(CLOCK_GPA, &mut b);
    // struct pvclock_vcpu_time_info { u32 version; u32 pad0; u64 tsc_timestamp; u64 system_time;
    //   u32 tsc_to_system_mul; s8 tsc_shift; u8 flags; u8 pad[2]; }
    let version = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let tsc_timestamp = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let system_time = u64::from_le_bytes(b[16..24].try_into().unwrap());
    let mul = u32::from_le_bytes(b[24..28].try_into().unwrap());
    let shift = b[28] as i8;
    let host_tsc = m.vcpu.get_msr(crate::msr_index::IA32_TSC).unwrap_or(0);
    let actual = format!("version {version}, tsc_timestamp {tsc_timestamp:#x}, system_time {system_time}, mul {mul:#x}, shift {shift}, vCPU TSC now {host_tsc:#x}");
    let ok = version != 0
        && version % 2 == 0
        && mul != 0
        && (-32..=32).contains(&shift)
        && tsc_timestamp <= host_tsc
        && tsc_timestamp != 0;
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail("an even, non-zero version; a non-zero multiplier; a TSC timestamp from the past (msr.rst: version odd = update in progress)", actual)
    }
}

fn wall_clock(ctx: &Context, msr: u32) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    m.vm.mem.fill(WALL_GPA, 12, 0);
    let run = m.run_ops(&[GuestOp::Wrmsr(msr, WALL_GPA)]);
    match (run.death, run.outcomes[0]) {
        (None, OpOutcome::Wrote) => {}
        (None, o) => return Outcome::fail("the guest writes the wall-clock MSR", o.to_string()),
        (Some(d), _) => return Outcome::died(d),
    }
    let mut b = [0u8; 12];
    m.vm.mem.read(WALL_GPA, &mut b);
    match wall_clock_plausible(&b) {
        Ok(actual) => Outcome::pass(actual),
        Err(actual) => Outcome::fail(WALL_CLOCK_EXPECTED, actual),
    }
}

/// What a plausible pvclock_wall_clock looks like.
pub(super) const WALL_CLOCK_EXPECTED: &str =
    "an even, non-zero version; nsec below 10^9; a boot time between 2000 and now";

/// Decode a struct pvclock_wall_clock { u32 version; u32 sec; u32 nsec; }: the time at which the
/// guest's kvm-clock read 0, i.e. the VM's boot time in wall-clock terms. Ok(description) when
/// plausible, Err(description) otherwise.
pub(super) fn wall_clock_plausible(b: &[u8; 12]) -> Result<String, String> {
    let version = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let sec = u64::from(u32::from_le_bytes(b[4..8].try_into().unwrap()));
    let nsec = u32::from_le_bytes(b[8..12].try_into().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let actual = format!("version {version}, sec {sec}, nsec {nsec} (now {now})");
    let ok = version != 0
        && version % 2 == 0
        && nsec < 1_000_000_000
        && (YEAR_2000..=now.min(YEAR_2100)).contains(&sec);
    if ok {
        Ok(actual)
    } else {
        Err(actual)
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for (msr, id) in [
        (0x4b56_4d01u32, "kvm-system-time-new"),
        (0x12, "kvm-system-time"),
    ] {
        v.push(Check::new(CheckId::msr(Family::Pv, id, "writes-pvclock"), Some(msr), "after the guest enables kvm-clock, KVM has written a consistent pvclock_vcpu_time_info", "msr.rst MSR_KVM_SYSTEM_TIME(_NEW) (struct pvclock_vcpu_time_info, version protocol); x86.c kvm_write_system_time, kvm_guest_time_update", move |c| pvclock(c, msr)));
    }
    for (msr, id) in [
        (0x4b56_4d00u32, "kvm-wall-clock-new"),
        (0x11, "kvm-wall-clock"),
    ] {
        v.push(Check::new(CheckId::msr(Family::Pv, id, "writes-wall-clock"), Some(msr), "after the guest writes the wall-clock MSR, KVM has written a plausible pvclock_wall_clock", "msr.rst MSR_KVM_WALL_CLOCK(_NEW) (struct pvclock_wall_clock); x86.c kvm_write_wall_clock", move |c| wall_clock(c, msr)));
    }
    v
}
