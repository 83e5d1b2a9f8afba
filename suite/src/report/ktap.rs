//! KTAP v1 (Documentation/dev-tools/ktap.rst): one flat level of results. Skips carry
//! `# SKIP reason`; recorded backend deviations are `ok ... # XFAIL reason` (kselftest's
//! ksft_test_result_xfail form), so they count as neither pass nor failure.

use super::Report;
use crate::runner::Verdict;

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('#', "")
}

pub fn render(r: &Report) -> String {
    let mut out = String::from("KTAP version 1\n");
    if let Some(h) = &r.host {
        out.push_str(&format!("# host: {}\n", one_line(&h.summary())));
    }
    if let Some(u) = &r.unavailable {
        out.push_str("1..0\n");
        out.push_str(&format!("# SKIP {}\n", one_line(u)));
        return out;
    }
    out.push_str(&format!("1..{}\n", r.results.len()));
    for (i, c) in r.results.iter().enumerate() {
        let n = i + 1;
        match c.verdict {
            Verdict::Pass => out.push_str(&format!("ok {n} {}\n", c.id)),
            Verdict::Skip => {
                out.push_str(&format!("ok {n} {} # SKIP {}\n", c.id, one_line(&c.detail)))
            }
            Verdict::Deviation => {
                out.push_str(&format!(
                    "ok {n} {} # XFAIL {}\n",
                    c.id,
                    one_line(&c.detail)
                ));
                if let Some(d) = &c.deviation {
                    out.push_str(&format!("# upstream: {}\n", one_line(&d.upstream)));
                }
            }
            Verdict::Fail => {
                out.push_str(&format!("not ok {n} {}\n", c.id));
                if let Some(e) = &c.expected {
                    out.push_str(&format!("# expected: {}\n", one_line(e)));
                }
                if let Some(a) = &c.actual {
                    out.push_str(&format!("# actual: {}\n", one_line(a)));
                }
                if !c.detail.is_empty() {
                    out.push_str(&format!("# {}\n", one_line(&c.detail)));
                }
                out.push_str(&format!("# source: {}\n", one_line(&c.cite)));
            }
        }
    }
    let k = r.counts();
    out.push_str(&format!(
        "# Totals: pass:{} fail:{} xfail:{} xpass:0 skip:{} error:0\n",
        k.pass, k.fail, k.deviation, k.skip
    ));
    out
}
