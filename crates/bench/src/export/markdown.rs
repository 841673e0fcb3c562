//! A GitHub table of the report, the ratios as a list, and the `Result:`
//! line: what is pasted into an issue or a pull request.

use super::table::{headline, opt, ratios, verdict};
use crate::report::{on_off, BenchReport};

pub fn render_markdown(report: &BenchReport) -> String {
    let mut out = headline(report, &format!("`{}`", report.first_wal));
    out.push_str("\n\n");
    let with_barman_cpu = report
        .summaries
        .iter()
        .any(|s| s.barman_cpu_seconds.is_some());
    // Text columns left, numbers right, as the table aligns them.
    let mut header = vec![
        ("program", ":--"),
        ("-p", "--:"),
        ("keep", ":--"),
        ("direct", ":--"),
        ("async", ":--"),
        ("rtt ms", "--:"),
        ("wall s", "--:"),
        ("waited s", "--:"),
        ("seg/s", "--:"),
        ("MiB/s", "--:"),
        ("hit p50/95/max ms", "--:"),
        ("miss p50/95/max ms", "--:"),
        ("conns", "--:"),
        ("chans", "--:"),
        ("cpu s", "--:"),
        ("RSS MiB", "--:"),
        ("failed", "--:"),
    ];
    if with_barman_cpu {
        header.push(("barman cpu ms/seg", "--:"));
    }
    let row = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    out.push_str(&row(header.iter().map(|(h, _)| h.to_string()).collect()));
    out.push_str(&row(header.iter().map(|(_, a)| a.to_string()).collect()));
    for s in &report.summaries {
        let mut cells = vec![
            s.program.clone(),
            s.setting.parallel.to_string(),
            on_off(s.setting.keep_compression).to_string(),
            on_off(s.setting.direct_read).to_string(),
            on_off(s.setting.async_mode).to_string(),
            s.setting.rtt_ms.to_string(),
            format!("{:.2}", s.wall_seconds),
            format!("{:.2}", s.waited_seconds),
            format!("{:.1}", s.segments_per_second),
            format!("{:.1}", s.mib_per_second),
            s.hits.render(),
            s.misses.render(),
            opt(s.connections),
            opt(s.channels),
            format!("{:.2}", s.cpu_seconds),
            format!("{:.1}", s.peak_rss_mib),
            if s.mismatched > 0 {
                format!("{}+{} mismatched", s.failed, s.mismatched)
            } else {
                s.failed.to_string()
            },
        ];
        if with_barman_cpu {
            cells.push(match s.barman_cpu_seconds {
                Some(cpu) => {
                    let delivered = (s.calls - s.failed).max(1) as f64;
                    format!("{:.0}", cpu * 1000.0 / delivered)
                }
                None => "-".to_string(),
            });
        }
        out.push_str(&row(cells));
    }
    let ratios = ratios(report);
    if !ratios.is_empty() {
        out.push_str("\nRatios (same run, side by side):\n\n");
        for line in ratios {
            out.push_str(&format!("- {line}\n"));
        }
    }
    out.push('\n');
    out.push_str(&verdict(report));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::measured;

    #[test]
    fn a_github_table_then_the_ratios_then_the_result_line() {
        assert_eq!(
            render_markdown(&measured()),
            "\
4 sequential restore_command calls from `000000010000000000000001` against the embedded Barman

| program | -p | keep | direct | async | rtt ms | wall s | waited s | seg/s | MiB/s | hit p50/95/max ms | miss p50/95/max ms | conns | chans | cpu s | RSS MiB | failed |
| :-- | --: | :-- | :-- | :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |
| ours | 0 | on | off | off | 0 | 4.00 | 4.00 | 1.0 | 16.0 | - | 1000/1000/1000 | 4 | 8 | 0.50 | 12.2 | 0 |
| ours | 8 | on | off | off | 0 | 1.00 | 1.00 | 4.0 | 64.0 | 4/5/5 | 900/900/900 | 1 | 5 | 0.75 | 20.5 | 0 |
| compare | 8 | on | off | off | 0 | 2.00 | 2.00 | 2.0 | 32.0 | - | 500/500/500 | - | - | 1.50 | 30.0 | 0 |

Ratios (same run, side by side):

- -p 8 keep on direct off async off: ours is 2.00 times faster than compare (1.00 s vs 2.00 s)
- ours -p 8 keep on direct off async off is 4.00 times faster than ours -p 0 keep on direct off async off

Result: 4 sequential restore_command calls from the embedded Barman: ours with -p 8 took 1.00 s, 4.00 \
times faster than with -p 0 (4.00 s); 2.00 times faster than compare at the same setting (2.00 s).
"
        );
    }
}
