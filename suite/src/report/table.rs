//! The default, human-readable report.

use super::Report;
use crate::runner::Verdict;

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    if let Some(h) = &r.host {
        out.push_str(&format!("host: {}\n\n", h.summary()));
    }
    if let Some(u) = &r.unavailable {
        out.push_str(&format!("no checks ran: {u}\n"));
        return out;
    }
    let width = r
        .results
        .iter()
        .map(|c| c.id.to_string().len())
        .max()
        .unwrap_or(10)
        .min(60);
    for c in &r.results {
        let tail = match c.verdict {
            Verdict::Pass | Verdict::Skip => c.detail.clone(),
            Verdict::Deviation => format!(
                "known {} deviation: {}",
                c.deviation
                    .as_ref()
                    .map(|d| d.backend.as_str())
                    .unwrap_or(""),
                c.detail
            ),
            Verdict::Fail => {
                let mut s = String::new();
                if let Some(e) = &c.expected {
                    s.push_str(&format!("expected {e}; "));
                }
                if let Some(a) = &c.actual {
                    s.push_str(&format!("got {a}"));
                }
                if !c.detail.is_empty() {
                    s.push_str(&format!(" [{}]", c.detail));
                }
                s
            }
        };
        out.push_str(&format!(
            "{:<9} {:<width$}  {}\n",
            c.verdict.name(),
            c.id,
            tail
        ));
        if c.verdict == Verdict::Fail || c.verdict == Verdict::Deviation {
            out.push_str(&format!("{:<9} {:<width$}  source: {}\n", "", "", c.cite));
            if let Some(d) = &c.deviation {
                out.push_str(&format!(
                    "{:<9} {:<width$}  upstream: {}\n",
                    "", "", d.upstream
                ));
            }
        }
    }
    out.push_str(&format!("\n{}\n", r.summary_line()));
    out
}
