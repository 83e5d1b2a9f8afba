//! KVM_GET_MSR_INDEX_LIST and KVM_GET_MSR_FEATURE_INDEX_LIST (api.rst 4.3).

use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::kvm::raw::ListKind;
use crate::kvm::Errno;
use std::collections::BTreeSet;

const API_4_3: &str = "api.rst 4.3 KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST: \"The user fills in the size of the indices array in nmsrs, and in return kvm adjusts nmsrs to reflect the actual number of msrs\"; E2BIG when the list does not fit";

fn slug(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Index => "index",
        ListKind::Feature => "feature",
    }
}

/// Feature-list checks need KVM_CAP_GET_MSR_FEATURES (api.rst 4.3).
fn unavailable(ctx: &Context, kind: ListKind) -> Option<Outcome> {
    (kind == ListKind::Feature && ctx.facts.cap("KVM_CAP_GET_MSR_FEATURES") <= 0)
        .then(|| Outcome::skip("KVM_CAP_GET_MSR_FEATURES is absent: no feature MSR list"))
}

fn e2big_protocol(ctx: &Context, kind: ListKind) -> Outcome {
    if let Some(o) = unavailable(ctx, kind) {
        return o;
    }
    let first = ctx.sys().list_call(kind, 0, 0);
    if first.errno != Some(Errno::E2BIG) {
        // Only an empty list may fit in zero slots.
        return if first.errno.is_none() && first.written_back == 0 {
            Outcome::pass("the list is empty; nmsrs=0 fits")
        } else {
            Outcome::fail(
                "E2BIG for nmsrs=0 with the needed count written back",
                format!(
                    "errno {} nmsrs {}",
                    Errno::number(first.errno),
                    first.written_back
                ),
            )
        };
    }
    let n = first.written_back;
    if n == 0 {
        return Outcome::fail("a non-zero count written back with E2BIG", "nmsrs 0");
    }
    let exact = ctx.sys().list_call(kind, n, n as usize);
    if exact.errno.is_some() || exact.written_back != n || exact.indices.len() != n as usize {
        return Outcome::fail(
            format!("success with nmsrs={n} (the count KVM wrote back)"),
            format!(
                "errno {} nmsrs {}",
                Errno::number(exact.errno),
                exact.written_back
            ),
        );
    }
    let bigger = ctx.sys().list_call(kind, n + 16, n as usize + 16);
    if bigger.errno.is_some() || bigger.written_back != n {
        return Outcome::fail(
            format!("a larger buffer accepted, nmsrs adjusted to {n}"),
            format!(
                "errno {} nmsrs {}",
                Errno::number(bigger.errno),
                bigger.written_back
            ),
        );
    }
    let small = ctx.sys().list_call(kind, n - 1, n as usize - 1);
    if small.errno != Some(Errno::E2BIG) || small.written_back != n {
        return Outcome::fail(
            format!("E2BIG with nmsrs={} and {n} written back", n - 1),
            format!(
                "errno {} nmsrs {}",
                Errno::number(small.errno),
                small.written_back
            ),
        );
    }
    Outcome::pass(format!(
        "nmsrs=0 -> E2BIG/{n}; {n} fits; {} fits and reads back {n}; {} -> E2BIG",
        n + 16,
        n - 1
    ))
}

fn no_duplicates(ctx: &Context, kind: ListKind) -> Outcome {
    if let Some(o) = unavailable(ctx, kind) {
        return o;
    }
    let list = match ctx.sys().msr_list(kind) {
        Ok(l) => l,
        Err(e) => return Outcome::harness(e),
    };
    let mut seen = BTreeSet::new();
    let dups: Vec<String> = list
        .iter()
        .filter(|i| !seen.insert(**i))
        .map(|i| format!("{i:#x}"))
        .collect();
    if dups.is_empty() {
        Outcome::pass(format!("{} distinct indices", list.len()))
    } else {
        Outcome::fail(
            "each index listed once",
            format!("duplicates: {}", dups.join(", ")),
        )
    }
}

fn stable(ctx: &Context, kind: ListKind) -> Outcome {
    if let Some(o) = unavailable(ctx, kind) {
        return o;
    }
    let lists: Result<Vec<Vec<u32>>, _> = (0..3).map(|_| ctx.sys().msr_list(kind)).collect();
    let lists = match lists {
        Ok(l) => l,
        Err(e) => return Outcome::harness(e),
    };
    // The facts were gathered earlier in the run; they must agree too.
    let earlier = match kind {
        ListKind::Index => &ctx.facts.msr_index_list,
        ListKind::Feature => &ctx.facts.msr_feature_index_list,
    };
    for (i, l) in lists.iter().enumerate() {
        if l != earlier {
            return Outcome::fail(
                format!("the same {} indices on every call", earlier.len()),
                format!(
                    "call {} returned {} indices (differs from the first read)",
                    i + 1,
                    l.len()
                ),
            );
        }
    }
    Outcome::pass(format!("{} indices, identical over 4 calls", earlier.len()))
}

/// api.rst 4.3: with KVM_CAP_MCE the MCE bank MSRs are not in the index list.
fn mce_banks_excluded(ctx: &Context) -> Outcome {
    if ctx.facts.cap("KVM_CAP_MCE") <= 0 {
        return Outcome::skip("KVM_CAP_MCE is absent");
    }
    let banks: Vec<String> = ctx
        .facts
        .msr_index_list
        .iter()
        .filter(|&&i| (0x400..0x480).contains(&i) || (0x280..0x2a0).contains(&i))
        .map(|i| format!("{i:#x}"))
        .collect();
    if banks.is_empty() {
        Outcome::pass("no MCi_CTL/STATUS/ADDR/MISC (0x400-0x47f) or MCi_CTL2 (0x280-0x29f) listed")
    } else {
        Outcome::fail(
            "no MCE bank MSRs in the list",
            format!("listed: {}", banks.join(", ")),
        )
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for kind in [ListKind::Index, ListKind::Feature] {
        let s = slug(kind);
        v.push(Check::new(
            CheckId::new(Family::Lists, s).then("e2big-protocol"),
            None,
            format!(
                "{}: nmsrs too small -> E2BIG with the needed count written back; that count fits",
                kind.ioctl_name()
            ),
            API_4_3,
            move |c| e2big_protocol(c, kind),
        ));
        v.push(Check::new(
            CheckId::new(Family::Lists, s).then("no-duplicates"),
            None,
            format!("{}: no index appears twice", kind.ioctl_name()),
            format!(
                "{API_4_3}; x86.c kvm_init_msr_lists builds each list once from distinct tables"
            ),
            move |c| no_duplicates(c, kind),
        ));
        v.push(Check::new(
            CheckId::new(Family::Lists, s).then("stable"),
            None,
            format!("{}: the same list on every call", kind.ioctl_name()),
            "api.rst 4.3: \"The list varies by kvm version and host processor, but does not change otherwise\"",
            move |c| stable(c, kind),
        ));
    }
    v.push(Check::new(
        CheckId::fixed(Family::Lists, "index.mce-banks-excluded"),
        None,
        "KVM_GET_MSR_INDEX_LIST omits the MCE bank MSRs when KVM_CAP_MCE is present",
        "api.rst 4.3: \"if kvm indicates supports MCE (KVM_CAP_MCE), then the MCE bank MSRs are not returned in the MSR list\"",
        mce_banks_excluded,
    ));
    v
}
