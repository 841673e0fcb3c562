//! The table for people: one row per program and setting, the ratios, and
//! the one `Result:` line a newcomer reads.

use crate::report::{on_off, BenchReport, Summary};

pub(super) fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

/// The table, one row per program and setting, then the ratios.
pub fn render_table(report: &BenchReport) -> String {
    let mut out = headline(report, &report.first_wal);
    out.push_str("\n\n");
    let with_barman_cpu = report
        .summaries
        .iter()
        .any(|s| s.barman_cpu_seconds.is_some());
    out.push_str(&format!(
        "{:<8} {:>3} {:>4} {:>6} {:>5} {:>4} {:>8} {:>8} {:>6} {:>7} {:>15} {:>16} {:>5} {:>5} {:>6} {:>7} {:>6}\n",
        "program",
        "-p",
        "keep",
        "direct",
        "async",
        "rtt",
        "wall s",
        "waited s",
        "seg/s",
        "MiB/s",
        "hit p50/95/max",
        "miss p50/95/max",
        "conns",
        "chans",
        "cpu s",
        "RSS MiB",
        "failed"
    ));
    if with_barman_cpu {
        out.insert_str(out.len() - 1, "  barman cpu ms/seg");
    }
    for s in &report.summaries {
        out.push_str(&format!(
            "{:<8} {:>3} {:>4} {:>6} {:>5} {:>4} {:>8.2} {:>8.2} {:>6.1} {:>7.1} {:>15} {:>16} {:>5} {:>5} {:>6.2} {:>7.1} {:>6}\n",
            s.program,
            s.setting.parallel,
            on_off(s.setting.keep_compression),
            on_off(s.setting.direct_read),
            on_off(s.setting.async_mode),
            s.setting.rtt_ms,
            s.wall_seconds,
            s.waited_seconds,
            s.segments_per_second,
            s.mib_per_second,
            s.hits.render(),
            s.misses.render(),
            opt(s.connections),
            opt(s.channels),
            s.cpu_seconds,
            s.peak_rss_mib,
            if s.mismatched > 0 {
                format!("{}+{}!", s.failed, s.mismatched)
            } else {
                s.failed.to_string()
            }
        ));
        if let Some(cpu) = s.barman_cpu_seconds {
            let delivered = (s.calls - s.failed).max(1) as f64;
            out.insert_str(
                out.len() - 1,
                &format!(" {:>18.0}", cpu * 1000.0 / delivered),
            );
        }
    }
    let ratios: String = ratios(report)
        .iter()
        .map(|line| format!("  {line}\n"))
        .collect();
    if !ratios.is_empty() {
        out.push_str("\nratios (same run, side by side):\n");
        out.push_str(&ratios);
    }
    let bad = report.bad_calls();
    if bad > 0 {
        out.push_str(&format!(
            "\n{bad} call(s) failed or delivered different bytes; see --json for details\n"
        ));
    }
    out.push('\n');
    out.push_str(&verdict(report));
    out.push('\n');
    out
}

/// "N sequential restore_command calls", and by how many clients at once.
/// The line above the rows: what was measured, from which WAL (as the
/// format wants it shown), against what.
pub(super) fn headline(report: &BenchReport, first_wal: &str) -> String {
    let mut out = format!(
        "{} from {first_wal} against {}",
        calls_measured(report),
        report.target
    );
    if report
        .summaries
        .first()
        .is_some_and(|s| s.setting.clients > 1)
    {
        out.push_str(" (seg/s and MiB/s: all clients)");
    }
    out
}

pub(super) fn calls_measured(report: &BenchReport) -> String {
    let clients = report.summaries.first().map_or(1, |s| s.setting.clients);
    let mut what = format!("{} sequential restore_command calls", report.count);
    if clients > 1 {
        what.push_str(&format!(" by each of {clients} clients at once"));
    }
    what
}

/// The one line a newcomer reads: what was measured, and the ratio of the
/// fastest of our settings to the first one (and to the compared command,
/// when there is one). Failed calls void the ratios: a fast failure is no
/// result.
pub fn verdict(report: &BenchReport) -> String {
    let what = format!("{} from {}", calls_measured(report), report.target);
    let bad = report.bad_calls();
    if bad > 0 {
        return format!(
            "Result: {what}: {bad} call(s) failed or delivered wrong bytes, no ratio to report."
        );
    }
    let ours: Vec<&Summary> = report
        .summaries
        .iter()
        .filter(|s| s.program == "ours")
        .collect();
    let (Some(first), Some(best)) = (
        ours.first(),
        ours.iter()
            .min_by(|a, b| a.wall_seconds.total_cmp(&b.wall_seconds)),
    ) else {
        return format!("Result: {what}: nothing was measured.");
    };
    let mut line = format!(
        "Result: {what}: ours with {} took {:.2} s",
        best.flags(),
        best.wall_seconds
    );
    if !std::ptr::eq(*first, *best) {
        line.push_str(&format!(
            ", {:.2} times faster than with {} ({:.2} s)",
            first.wall_seconds / best.wall_seconds.max(1e-9),
            first.flags(),
            first.wall_seconds
        ));
    }
    let compared = report.summaries.iter().find(|s| {
        s.program != "ours"
            && s.setting.parallel == best.setting.parallel
            && s.setting.keep_compression == best.setting.keep_compression
            && s.setting.rtt_ms == best.setting.rtt_ms
    });
    if let Some(other) = compared {
        line.push_str(&format!(
            "; {:.2} times faster than {} at the same setting ({:.2} s)",
            other.wall_seconds / best.wall_seconds.max(1e-9),
            other.program,
            other.wall_seconds
        ));
    }
    line.push('.');
    line
}

/// Ours against the compared command at the same setting, then ours at
/// each setting against ours at the first: one line each.
pub(super) fn ratios(report: &BenchReport) -> Vec<String> {
    let ours: Vec<&Summary> = report
        .summaries
        .iter()
        .filter(|s| s.program == "ours")
        .collect();
    let mut ratios = Vec::new();
    for o in &ours {
        for other in report.summaries.iter().filter(|s| {
            s.program != "ours"
                && s.setting.parallel == o.setting.parallel
                && s.setting.keep_compression == o.setting.keep_compression
                && s.setting.rtt_ms == o.setting.rtt_ms
        }) {
            ratios.push(format!(
                "{}: ours is {:.2} times faster than {} ({:.2} s vs {:.2} s)",
                o.setting(),
                other.wall_seconds / o.wall_seconds.max(1e-9),
                other.program,
                o.wall_seconds,
                other.wall_seconds
            ));
        }
    }
    if let Some(base) = ours.first() {
        for o in ours.iter().skip(1) {
            ratios.push(format!(
                "ours {} is {:.2} times faster than ours {}",
                o.setting(),
                base.wall_seconds / o.wall_seconds.max(1e-9),
                base.setting()
            ));
        }
    }
    ratios
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::{measured, report, summary};

    /// Pinned when the table moved out of report.rs: its columns, widths
    /// and ratio lines are what users' scripts and eyes are used to.
    #[test]
    fn the_table_keeps_its_columns() {
        assert_eq!(
            render_table(&measured()),
            "\
4 sequential restore_command calls from 000000010000000000000001 against the embedded Barman

program   -p keep direct async  rtt   wall s waited s  seg/s   MiB/s  hit p50/95/max  miss p50/95/max conns chans  cpu s RSS MiB failed
ours       0   on    off   off    0     4.00     4.00    1.0    16.0               -   1000/1000/1000     4     8   0.50    12.2      0
ours       8   on    off   off    0     1.00     1.00    4.0    64.0           4/5/5      900/900/900     1     5   0.75    20.5      0
compare    8   on    off   off    0     2.00     2.00    2.0    32.0               -      500/500/500     -     -   1.50    30.0      0

ratios (same run, side by side):
  -p 8 keep on direct off async off: ours is 2.00 times faster than compare (1.00 s vs 2.00 s)
  ours -p 8 keep on direct off async off is 4.00 times faster than ours -p 0 keep on direct off async off

Result: 4 sequential restore_command calls from the embedded Barman: ours with -p 8 took 1.00 s, 4.00 \
times faster than with -p 0 (4.00 s); 2.00 times faster than compare at the same setting (2.00 s).
"
        );
    }

    #[test]
    fn the_table_ends_with_one_line_naming_what_was_measured_and_the_ratio() {
        let r = report(vec![
            summary("ours", 0, 9.0, 0),
            summary("ours", 8, 3.0, 0),
            summary("compare", 8, 12.0, 0),
        ]);
        let table = render_table(&r);
        assert_eq!(
            table.lines().last().unwrap(),
            "Result: 32 sequential restore_command calls from the embedded Barman: ours with -p 8 took \
             3.00 s, 3.00 times faster than with -p 0 (9.00 s); 4.00 times faster than compare \
             at the same setting (12.00 s)."
        );
    }

    #[test]
    fn failed_calls_void_the_ratio() {
        let r = report(vec![summary("ours", 0, 9.0, 0), summary("ours", 8, 0.1, 3)]);
        let line = verdict(&r);
        assert!(line.contains("3 call(s) failed"), "{line}");
        assert!(!line.contains("times faster"), "{line}");
    }
}
