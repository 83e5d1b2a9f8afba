//! MSRs through KVM_GET_ONE_REG / KVM_SET_ONE_REG (Linux 6.18, with the CET series; semantics
//! §1.7). x86.c kvm_get_set_one_reg: the id must be KVM_REG_X86 with zero reserved fields, type
//! MSR (or type KVM naming a KVM register) and size U64, else -EINVAL; then the access is
//! do_get_msr / do_set_msr, the same as KVM_GET_MSRS / KVM_SET_MSRS, except that any failure is
//! -EINVAL (kvm_get_one_msr, kvm_set_one_msr). So most checks here are differential: the one-reg
//! path against the MSR-ioctl path, with no expected values of their own.

use super::{hex, Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::kvm::cpuid;
use crate::kvm::raw::{self, one_reg_msr_id, MsrOp};
use crate::kvm::{Errno, Vcpu};
use crate::machine::Machine;
use crate::msr_index::{IA32_APIC_BASE, UNKNOWN};

const SRC: &str = "x86.c kvm_get_set_one_reg (6.18): an id that is not KVM_REG_X86, has a reserved field set, a type other than MSR (or KVM), or a size other than U64 is -EINVAL; kvm_get_one_msr / kvm_set_one_msr: do_get_msr / do_set_msr, any failure -EINVAL";
const API_ID: &str = "api.rst 4.68 KVM_SET_ONE_REG: \"x86 MSR registers have the following id bit patterns: 0x2030 0002 <msr number:32>\"";
const API_LIST: &str = "api.rst 4.84 KVM_GET_REG_LIST: \"for x86, all MSRs enumerated by KVM_GET_MSR_INDEX_LIST are supported as type KVM_X86_REG_TYPE_MSR, but are NOT enumerated via KVM_GET_REG_LIST\"; x86.c kvm_get_reg_list: one register, KVM_REG_GUEST_SSP, if the guest has SHSTK; E2BIG when n is smaller";

/// The id fields (uapi asm/kvm.h, x86.c struct kvm_x86_reg_id).
const ARCH_MASK: u64 = 0xff00_0000_0000_0000;
const SIZE_MASK: u64 = 0x00f0_0000_0000_0000;
const TYPE_SHIFT: u32 = 32;
const TYPE_KVM: u64 = 3;
const KVM_REG_GUEST_SSP: u64 = 0;
/// KVM_X86_REG_KVM(KVM_REG_GUEST_SSP).
const GUEST_SSP_ID: u64 = kvm_bindings::KVM_REG_X86
    | kvm_bindings::KVM_REG_SIZE_U64
    | (TYPE_KVM << TYPE_SHIFT)
    | KVM_REG_GUEST_SSP;

fn unavailable(ctx: &Context) -> Option<Outcome> {
    (ctx.facts.cap("KVM_CAP_ONE_REG") <= 0).then(|| {
        Outcome::skip(
            "KVM_CAP_ONE_REG is absent: x86 MSRs through KVM_{GET,SET}_ONE_REG need Linux 6.18",
        )
    })
}

fn machine(ctx: &Context) -> Result<Machine, Outcome> {
    if let Some(o) = unavailable(ctx) {
        return Err(o);
    }
    ctx.machine().map_err(Outcome::harness)
}

fn einval(r: Result<u64, Errno>) -> bool {
    r == Err(Errno::EINVAL)
}

/// Every listed MSR reads the same through both paths: a value where KVM_GET_MSRS reads one
/// (MSRs the catalogue documents as changing on their own: just a value), -EINVAL where it fails.
fn get_matches(ctx: &Context) -> Outcome {
    let m = match machine(ctx) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let mut bad = Vec::new();
    for &i in &ctx.facts.msr_index_list {
        let msrs = m.vcpu.get_msr(i);
        let one = raw::one_reg(&m.vcpu, MsrOp::Get, one_reg_msr_id(i), 0);
        let volatile = ctx.traits.get(i).volatile;
        let agree = match (msrs, one) {
            (Some(a), Ok(b)) => a == b || volatile,
            (None, r) => einval(r),
            (Some(_), Err(_)) => false,
        };
        if !agree {
            bad.push(format!(
                "{i:#x}: KVM_GET_MSRS {} vs KVM_GET_ONE_REG {}",
                msrs.map_or("failed".into(), hex),
                show(one)
            ));
        }
    }
    Outcome::unless(
        bad,
        "each listed MSR: the KVM_GET_MSRS value, or -EINVAL where KVM_GET_MSRS fails",
        format!(
            "{} listed MSRs read alike through both ioctls",
            ctx.facts.msr_index_list.len()
        ),
    )
}

/// Two identical vCPUs, every listed MSR written with its own value and with that value plus the
/// catalogue's lowest reserved bit: KVM_SET_ONE_REG on one accepts exactly what KVM_SET_MSRS on
/// the other accepts, and refuses with -EINVAL.
fn set_matches(ctx: &Context) -> Outcome {
    let (one, msrs) = match (machine(ctx), machine(ctx)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(o), _) | (_, Err(o)) => return o,
    };
    let mut bad = Vec::new();
    let mut tried = 0;
    for &i in &ctx.facts.msr_index_list {
        let (Some(cur_one), Some(cur_msrs)) = (one.vcpu.get_msr(i), msrs.vcpu.get_msr(i)) else {
            continue;
        };
        let reserved = ctx
            .catalogue
            .get(i)
            .and_then(|m| m.reserved.as_ref())
            .map_or(0, |r| r.mask & r.mask.wrapping_neg());
        let variants = [0].into_iter().chain((reserved != 0).then_some(reserved));
        for bit in variants {
            tried += 1;
            let r = write_one(&one.vcpu, i, cur_one | bit);
            let accepted = msrs.vcpu.set_msr(i, cur_msrs | bit);
            if r.is_ok() != accepted || r.is_err_and(|e| e != Errno::EINVAL) {
                bad.push(format!(
                    "{i:#x} = current {}: KVM_SET_MSRS {} vs KVM_SET_ONE_REG {}",
                    if bit == 0 {
                        String::new()
                    } else {
                        format!("| {}", hex(bit))
                    },
                    if accepted { "accepted" } else { "rejected" },
                    show(r)
                ));
            }
            // Both vCPUs go back to where they were, so later MSRs are compared alike.
            if bit != 0 {
                let _ = write_one(&one.vcpu, i, cur_one);
                msrs.vcpu.set_msr(i, cur_msrs);
            }
        }
    }
    Outcome::unless(
        bad,
        "KVM_SET_ONE_REG to accept what KVM_SET_MSRS accepts, and refuse the rest with -EINVAL",
        format!("{tried} writes to listed MSRs answered alike by both ioctls"),
    )
}

fn write_one(vcpu: &Vcpu, index: u32, value: u64) -> Result<(), Errno> {
    raw::one_reg(vcpu, MsrOp::Set, one_reg_msr_id(index), value).map(|_| ())
}

fn show<T>(r: Result<T, Errno>) -> String {
    match r {
        Ok(_) => "succeeded".into(),
        Err(e) => format!("errno {e}"),
    }
}

/// A malformed id for IA32_APIC_BASE: GET and SET both -EINVAL, and the SET changes nothing.
fn malformed(ctx: &Context, make: fn(u64) -> u64) -> Outcome {
    let m = match machine(ctx) {
        Ok(m) => m,
        Err(o) => return o,
    };
    // Any vCPU has an APIC base (x86.c kvm_get_msr_common MSR_IA32_APICBASE), listed or not.
    let Some(before) = m.vcpu.get_msr(IA32_APIC_BASE) else {
        return Outcome::fail(
            "IA32_APIC_BASE readable (x86.c kvm_get_msr_common MSR_IA32_APICBASE)",
            "KVM_GET_MSRS failed",
        );
    };
    let id = make(one_reg_msr_id(IA32_APIC_BASE));
    let get = raw::one_reg(&m.vcpu, MsrOp::Get, id, 0);
    // A write that would disable the APIC if it got through.
    let set = raw::one_reg(&m.vcpu, MsrOp::Set, id, before & !(1 << 11));
    let after = m.vcpu.get_msr(IA32_APIC_BASE);
    if einval(get) && einval(set) && after == Some(before) {
        Outcome::pass(format!(
            "id {id:#018x}: GET and SET -EINVAL, APIC_BASE unchanged"
        ))
    } else {
        Outcome::fail(
            format!(
                "id {id:#018x}: GET and SET -EINVAL, APIC_BASE still {}",
                hex(before)
            ),
            format!(
                "GET {}, SET {}, APIC_BASE {}",
                show(get),
                show(set),
                after.map_or("unreadable".into(), hex)
            ),
        )
    }
}

/// A malformed id: what is wrong with it, and how to make it from a good MSR id.
struct Malformed {
    slug: &'static str,
    what: &'static str,
    make: fn(u64) -> u64,
}

const MALFORMED: &[Malformed] = &[
    Malformed {
        slug: "arch-not-x86",
        what: "the architecture field of arm64 (KVM_REG_ARM64)",
        make: |id| (id & !ARCH_MASK) | 0x6000_0000_0000_0000,
    },
    Malformed {
        slug: "reserved-byte-set",
        what: "bit 40 (kvm_x86_reg_id.rsvd1) set",
        make: |id| id | 1 << 40,
    },
    Malformed {
        slug: "reserved-nibble-set",
        what: "bit 48 (kvm_x86_reg_id.rsvd2) set",
        make: |id| id | 1 << 48,
    },
    Malformed {
        slug: "size-u32",
        what: "size U32",
        make: |id| (id & !SIZE_MASK) | kvm_bindings::KVM_REG_SIZE_U32,
    },
    Malformed {
        slug: "size-u128",
        what: "size U128",
        make: |id| (id & !SIZE_MASK) | kvm_bindings::KVM_REG_SIZE_U128,
    },
    Malformed {
        slug: "type-0",
        what: "type 0 (neither MSR nor KVM)",
        make: |id| id & !(0xff << TYPE_SHIFT),
    },
    Malformed {
        slug: "type-4",
        what: "type 4 (neither MSR nor KVM)",
        make: |id| (id & !(0xff << TYPE_SHIFT)) | 4 << TYPE_SHIFT,
    },
    Malformed {
        slug: "kvm-type-unknown-register",
        what: "type KVM, register 1 (KVM defines only 0, GUEST_SSP)",
        make: |_| (GUEST_SSP_ID & !0xffff_ffff) | 1,
    },
];

/// An index KVM does not handle: -EINVAL both ways (not a count of 0 as KVM_GET_MSRS returns).
fn unknown_msr(ctx: &Context) -> Outcome {
    if ctx.facts.ignore_msrs() {
        return Outcome::skip(
            "kvm.ignore_msrs=Y: KVM accepts unknown MSRs (reads 0, drops writes) on both paths",
        );
    }
    let m = match machine(ctx) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let id = one_reg_msr_id(UNKNOWN);
    let get = raw::one_reg(&m.vcpu, MsrOp::Get, id, 0);
    let set = raw::one_reg(&m.vcpu, MsrOp::Set, id, 0);
    if einval(get) && einval(set) {
        Outcome::pass("GET and SET of MSR 0xdeadbeef: -EINVAL")
    } else {
        Outcome::fail(
            "GET and SET -EINVAL",
            format!("GET {}, SET {}", show(get), show(set)),
        )
    }
}

/// Whether the vCPU's effective CPUID (KVM_GET_CPUID2) has SHSTK.
fn has_shstk(vcpu: &Vcpu) -> bool {
    let shstk = cpuid::feature("SHSTK").expect("SHSTK is in cpuid::FEATURES");
    vcpu.read_cpuid().is_some_and(|t| t.has(shstk))
}

/// A vCPU without SHSTK (its CPUID never set): no GUEST_SSP register, an empty register list.
fn without_shstk(ctx: &Context) -> Outcome {
    if let Some(o) = unavailable(ctx) {
        return o;
    }
    let m = match ctx.bare_machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let get = raw::one_reg(&m.vcpu, MsrOp::Get, GUEST_SSP_ID, 0);
    let list = raw::reg_list(&m.vcpu, 0);
    if einval(get) && list.errno.is_none() && list.written_back == 0 {
        Outcome::pass("GUEST_SSP: -EINVAL; KVM_GET_REG_LIST: no registers")
    } else {
        Outcome::fail(
            "KVM_GET_ONE_REG(GUEST_SSP) -EINVAL and KVM_GET_REG_LIST of n=0 succeeding with n=0",
            format!(
                "GET {}; list errno {} n {}",
                show(get),
                Errno::number(list.errno),
                list.written_back
            ),
        )
    }
}

/// A vCPU with SHSTK: GUEST_SSP readable, and the only register KVM_GET_REG_LIST names.
fn with_shstk(ctx: &Context) -> Outcome {
    let m = match machine(ctx) {
        Ok(m) => m,
        Err(o) => return o,
    };
    if !has_shstk(&m.vcpu) {
        return Outcome::skip(
            "the vCPU's CPUID has no SHSTK (KVM_GET_SUPPORTED_CPUID lacks it here)",
        );
    }
    let get = raw::one_reg(&m.vcpu, MsrOp::Get, GUEST_SSP_ID, 0);
    let small = raw::reg_list(&m.vcpu, 0);
    let fits = raw::reg_list(&m.vcpu, 1);
    if get.is_ok()
        && small.errno == Some(Errno::E2BIG)
        && small.written_back == 1
        && fits.errno.is_none()
        && fits.ids == [GUEST_SSP_ID]
    {
        Outcome::pass("GUEST_SSP readable; KVM_GET_REG_LIST: E2BIG with n=1, then GUEST_SSP alone")
    } else {
        Outcome::fail(
            format!(
                "GUEST_SSP readable; KVM_GET_REG_LIST E2BIG/1 for n=0, then [{GUEST_SSP_ID:#x}]"
            ),
            format!(
                "GET {}; n=0: errno {} n {}; n=1: errno {} ids {:x?}",
                show(get),
                Errno::number(small.errno),
                small.written_back,
                Errno::number(fits.errno),
                fits.ids
            ),
        )
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    let mut v = vec![
        Check::new(
            CheckId::fixed(Family::OneReg, "index-list.get-matches-get-msrs"),
            None,
            "KVM_GET_ONE_REG of every listed MSR agrees with KVM_GET_MSRS",
            format!("{SRC}; {API_LIST}; {API_ID}"),
            get_matches,
        ),
        Check::new(
            CheckId::fixed(Family::OneReg, "index-list.set-matches-set-msrs"),
            None,
            "KVM_SET_ONE_REG accepts what KVM_SET_MSRS accepts (current values, a reserved bit set) and refuses the rest with -EINVAL",
            format!("{SRC}; {API_ID}; reserved bits from the catalogue"),
            set_matches,
        ),
        Check::new(
            CheckId::fixed(Family::OneReg, "unknown-msr.einval"),
            Some(UNKNOWN),
            "KVM_GET/SET_ONE_REG of an index KVM does not handle fail with -EINVAL",
            SRC,
            unknown_msr,
        ),
        Check::new(
            CheckId::fixed(Family::OneReg, "guest-ssp.without-shstk"),
            None,
            "without SHSTK, KVM_REG_GUEST_SSP is -EINVAL and KVM_GET_REG_LIST is empty",
            format!("x86.c kvm_translate_kvm_reg: GUEST_SSP needs guest SHSTK; {API_LIST}"),
            without_shstk,
        ),
        Check::new(
            CheckId::fixed(Family::OneReg, "guest-ssp.with-shstk"),
            None,
            "with SHSTK, KVM_REG_GUEST_SSP reads and is the one register KVM_GET_REG_LIST names",
            format!("x86.c kvm_translate_kvm_reg; {API_LIST}"),
            with_shstk,
        ),
    ];
    for m in MALFORMED {
        let make = m.make;
        v.push(Check::new(
            CheckId::new(Family::OneReg, "id")
                .then(m.slug)
                .then("einval"),
            Some(IA32_APIC_BASE),
            format!("an MSR id with {}: KVM_GET/SET_ONE_REG -EINVAL", m.what),
            format!("{SRC}; {API_ID}"),
            move |ctx: &Context| malformed(ctx, make),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_documented_bit_patterns() {
        // api.rst 4.68: 0x2030 0002 <msr number:32>.
        assert_eq!(one_reg_msr_id(0xc000_0080), 0x2030_0002_c000_0080);
        // uapi asm/kvm.h KVM_X86_REG_KVM(KVM_REG_GUEST_SSP).
        assert_eq!(GUEST_SSP_ID, 0x2030_0003_0000_0000);
        let good = one_reg_msr_id(0x1b);
        for m in MALFORMED {
            assert_ne!((m.make)(good), good, "{}", m.slug);
        }
    }
}
