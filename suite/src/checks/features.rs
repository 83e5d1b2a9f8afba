//! Feature MSRs through the /dev/kvm fd (api.rst 4.3, 4.18; x86.c kvm_get_feature_msrs).

use super::{hex, Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::msr_index::UNKNOWN;

const API: &str = "api.rst 4.3: KVM_GET_MSR_FEATURE_INDEX_LIST \"returns the list of MSRs that can be passed to the KVM_GET_MSRS system ioctl\"; api.rst 4.18 (system ioctl form)";

fn need_cap(ctx: &Context) -> Option<Outcome> {
    (ctx.facts.cap("KVM_CAP_GET_MSR_FEATURES") <= 0)
        .then(|| Outcome::skip("KVM_CAP_GET_MSR_FEATURES is absent"))
}

fn readable(ctx: &Context, index: u32) -> Outcome {
    let io = ctx.sys().get_feature_msrs(&[index]);
    match io.result {
        Ok(1) => Outcome::pass(format!("value {}", hex(io.entries()[0].data))),
        r => Outcome::fail("Ok(1)", format!("{r:?}")),
    }
}

fn batch_matches_single(ctx: &Context) -> Outcome {
    if let Some(o) = need_cap(ctx) {
        return o;
    }
    let list = &ctx.facts.msr_feature_index_list;
    let batch = ctx.sys().get_feature_msrs(list);
    if batch.result != Ok(list.len()) {
        return Outcome::fail(format!("Ok({})", list.len()), format!("{:?}", batch.result));
    }
    let mut diffs = Vec::new();
    for e in batch.entries() {
        let single = ctx.sys().get_feature_msrs(&[e.index]);
        if single.result != Ok(1) || single.entries()[0].data != e.data {
            diffs.push(format!(
                "{:#x}: batch {} single {:?}/{}",
                e.index,
                hex(e.data),
                single.result,
                hex(single.entries()[0].data)
            ));
        }
    }
    if diffs.is_empty() {
        Outcome::pass(format!("{} feature MSRs agree", list.len()))
    } else {
        Outcome::fail("one batch read equals single reads", diffs.join("; "))
    }
}

fn unlisted_rejected(ctx: &Context) -> Outcome {
    if let Some(o) = need_cap(ctx) {
        return o;
    }
    let io = ctx.sys().get_feature_msrs(&[UNKNOWN]);
    if ctx.facts.ignore_msrs() {
        // kvm_do_msr_access: with ignore_msrs an unsupported access "succeeds" and reads 0.
        match (io.result, io.entries()[0].data) {
            (Ok(1), 0) => Outcome::pass("ignore_msrs=Y: the unknown index reads 0"),
            (r, d) => Outcome::fail(
                "Ok(1) with data 0 (ignore_msrs=Y)",
                format!("{r:?} data {d:#x}"),
            ),
        }
    } else {
        match io.result {
            Ok(0) => Outcome::pass("not processed (count 0)"),
            r => Outcome::fail(
                "Ok(0): an index in neither list is not a feature MSR",
                format!("{r:?}"),
            ),
        }
    }
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for &index in &ctx.facts.msr_feature_index_list {
        let id = ctx.catalogue.slug(index);
        v.push(Check::new(
            CheckId::msr(Family::Feature, &id, "system-readable"),
            Some(index),
            format!(
                "{} is readable through KVM_GET_MSRS on /dev/kvm",
                ctx.catalogue.name(index)
            ),
            format!("{API}; x86.c kvm_get_feature_msr"),
            move |c| readable(c, index),
        ));
    }
    v.push(Check::new(
        CheckId::fixed(Family::Feature, "batch-matches-single"),
        None,
        "one system KVM_GET_MSRS of every feature MSR equals reading each alone",
        format!("{API}; x86.c kvm_get_feature_msrs -> msr_io (entries processed one by one)"),
        batch_matches_single,
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Feature, "unlisted.system-read-rejected"),
        Some(UNKNOWN),
        "an index in neither list is not readable through /dev/kvm (reads 0 with ignore_msrs=Y)",
        format!("{API}; x86.c kvm_get_feature_msr returns KVM_MSR_RET_UNSUPPORTED for unknown indices, kvm_do_msr_access applies ignore_msrs"),
        unlisted_rejected,
    ));
    v
}
