//! The three forms of a report: for people, JSON, and JUnit XML for CI.

use std::fmt::Write as _;

use crate::catalogue::CaseLevel;
use crate::outcome::{Failure, Outcome, TraceEntry};
use crate::runner::{Report, Standing};

/// Entries of a trace shown around the offending message.
const TRACE_CONTEXT: usize = 4;

/// The human report: one line per case, details under each failure.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "voxwire conformance: {} worker at {}, seed {}, {} input(s) per generated case\n",
        report.service.as_str(),
        report.target,
        report.seed,
        report.cases_per_property
    );
    let width = report
        .results
        .iter()
        .map(|r| r.id.len())
        .max()
        .unwrap_or(20);
    for result in &report.results {
        let _ = writeln!(
            out,
            "{:<5} {:<6} {:<width$}  {:<24} {:>9.1} ms",
            result.standing.label(),
            result.level.as_str(),
            result.id,
            result.rule,
            result.duration_ms,
        );
        match &result.outcome {
            Outcome::Fail(failure) => {
                write_failure(&mut out, failure);
                if let Some(replay) = &result.replay {
                    let _ = writeln!(out, "      replay:   {replay}");
                }
            }
            Outcome::Skip { reason } => {
                let _ = writeln!(out, "      {reason}");
            }
            Outcome::Pass { note: Some(note) } if result.standing == Standing::UnexpectedPass => {
                let _ = writeln!(out, "      listed as known failing, but passed ({note})");
            }
            Outcome::Pass { .. } if result.standing == Standing::UnexpectedPass => {
                let _ = writeln!(
                    out,
                    "      listed as known failing, but passed: remove it from the list"
                );
            }
            Outcome::Pass { note: Some(note) } if result.level == CaseLevel::Info => {
                let _ = writeln!(out, "      {note}");
            }
            Outcome::Pass { .. } => {}
        }
    }
    let must_failed = report.results.iter().filter(|r| r.fails_run()).count();
    let _ = writeln!(
        out,
        "\n{} passed, {} failed ({} failing the run), {} known failing, {} unexpectedly passing, {} skipped: {}",
        report.count(Standing::Pass),
        report.count(Standing::Fail),
        must_failed,
        report.count(Standing::KnownFail),
        report.count(Standing::UnexpectedPass),
        report.count(Standing::Skip),
        if report.passed() { "CONFORMS" } else { "DOES NOT CONFORM" }
    );
    let _ = writeln!(
        out,
        "{} case(s) in {:.1} s (--case-timeout {} s)",
        report.results.len(),
        report.duration_ms / 1000.0,
        report.case_timeout_s
    );
    out
}

fn write_failure(out: &mut String, failure: &Failure) {
    let _ = writeln!(out, "      expected: {}", failure.expected);
    let _ = writeln!(out, "      actual:   {}", failure.actual);
    if let Some(input) = &failure.input {
        let _ = writeln!(out, "      input:    {input}");
    }
    if failure.trace.is_empty() {
        return;
    }
    let _ = writeln!(out, "      trace ({} messages):", failure.trace.len());
    let _ = writeln!(
        out,
        "        {:>6}  {:<44} {:<5} {:>9}",
        "seq", "bytes / event", "final", "Δt ms"
    );
    let shown = shown_indices(failure.trace.len(), failure.focus);
    let mut last = None;
    for i in shown {
        if let Some(prev) = last {
            if i > prev + 1 {
                let _ = writeln!(out, "        {:>6}", "…");
            }
        }
        let entry: &TraceEntry = &failure.trace[i];
        let dt = if i == 0 {
            entry.at_ms
        } else {
            entry.at_ms - failure.trace[i - 1].at_ms
        };
        let mark = if Some(i) == failure.focus {
            "  <- here"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "        {:>6}  {:<44} {:<5} {:>+9.1}{mark}",
            entry.sequence_number,
            entry.detail,
            if entry.is_final { "yes" } else { "no" },
            dt
        );
        last = Some(i);
    }
}

/// The first messages, the ones around the focus (or the last ones).
fn shown_indices(len: usize, focus: Option<usize>) -> Vec<usize> {
    let center = focus.unwrap_or(len.saturating_sub(1));
    let mut shown: Vec<usize> = (0..len.min(2)).collect();
    let from = center.saturating_sub(TRACE_CONTEXT);
    let to = (center + TRACE_CONTEXT).min(len.saturating_sub(1));
    shown.extend(from..=to);
    shown.sort_unstable();
    shown.dedup();
    shown.retain(|&i| i < len);
    shown
}

pub fn json(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}

/// XML 1.0 text: the five entities escaped, and the control characters it
/// cannot carry at all replaced (generated inputs contain them).
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one testsuite per run, one testcase per case. MUST and SHOULD
/// failures are `<failure>` (type says which); known failures are skipped
/// with the reason, so CI shows them without going red.
pub fn junit(report: &Report) -> String {
    let failures = report.count(Standing::Fail) + report.count(Standing::UnexpectedPass);
    let skipped = report.count(Standing::Skip) + report.count(Standing::KnownFail);
    let total_s: f64 = report.results.iter().map(|r| r.duration_ms).sum::<f64>() / 1000.0;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"voxwire-conformance\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total_s:.3}\">",
        report.results.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total_s:.3}\">",
        xml_escape(&format!("{} {}", report.service.as_str(), report.target)),
        report.results.len()
    );
    let _ = writeln!(
        out,
        "    <properties><property name=\"seed\" value=\"{}\"/><property name=\"cases\" value=\"{}\"/></properties>",
        report.seed, report.cases_per_property
    );
    for result in &report.results {
        let classname = result
            .id
            .rsplit_once('/')
            .map_or(result.id, |(family, _)| family)
            .replace('/', ".");
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml_escape(&classname),
            xml_escape(result.id),
            result.duration_ms / 1000.0
        );
        match (&result.outcome, result.standing) {
            (Outcome::Fail(failure), Standing::Fail) => {
                let mut body = String::new();
                write_failure(&mut body, failure);
                if let Some(replay) = &result.replay {
                    let _ = writeln!(body, "      replay:   {replay}");
                }
                let _ = write!(
                    out,
                    "\n      <failure type=\"{} {}\" message=\"{}\">{}</failure>\n    ",
                    result.level.as_str(),
                    result.rule,
                    xml_escape(&failure.to_string()),
                    xml_escape(&body)
                );
            }
            (Outcome::Fail(failure), _) => {
                let _ = write!(
                    out,
                    "\n      <skipped message=\"{}\"/>\n    ",
                    xml_escape(&format!("known failing: {failure}"))
                );
            }
            (_, Standing::UnexpectedPass) => {
                let _ = write!(
                    out,
                    "\n      <failure type=\"XPASS\" message=\"listed as known failing, but passed\"/>\n    "
                );
            }
            (Outcome::Skip { reason }, _) => {
                let _ = write!(
                    out,
                    "\n      <skipped message=\"{}\"/>\n    ",
                    xml_escape(reason)
                );
            }
            (Outcome::Pass { .. }, _) => {}
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_control_characters() {
        assert_eq!(
            xml_escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(xml_escape("x\u{1}y"), "x\\u{1}y");
        assert_eq!(xml_escape("line\nnext"), "line\nnext");
    }

    #[test]
    fn trace_shows_the_start_and_the_focus() {
        assert_eq!(shown_indices(3, None), vec![0, 1, 2]);
        let shown = shown_indices(100, Some(50));
        assert_eq!(shown.first(), Some(&0));
        assert!(shown.contains(&50) && shown.contains(&54) && !shown.contains(&55));
        assert_eq!(shown_indices(100, None).last(), Some(&99));
        assert!(shown_indices(0, None).is_empty());
    }
}
