//! Results as data first (a summary per program and setting), rendered
//! second: a table for people, JSON for machines.

use serde::Serialize;

use super::runner::{CallRecord, Run, Setting};

/// One program under one setting.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub program: String,
    #[serde(flatten)]
    pub setting: Setting,
    pub calls: usize,
    pub failed: usize,
    pub mismatched: usize,
    pub wall_seconds: f64,
    /// The time spent inside calls: what PostgreSQL waited for (the wall
    /// time minus emulated replay).
    pub waited_seconds: f64,
    pub segments_per_second: f64,
    pub mib_per_second: f64,
    pub hits: Latency,
    pub misses: Latency,
    /// Counted by our binary itself, or by the embedded server.
    pub connections: Option<u64>,
    pub channels: Option<u64>,
    /// Calls' CPU plus the `--async` worker's.
    pub cpu_seconds: f64,
    /// The largest of any call and the worker.
    pub peak_rss_mib: f64,
    /// `--barman-cgroup`: what the Barman side spent on this setting.
    pub barman_cpu_seconds: Option<f64>,
    pub records: Vec<CallRecord>,
    pub worker: Option<super::runner::WorkerRecord>,
}

/// Per-call latency in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut seconds: Vec<f64>) -> Latency {
        if seconds.is_empty() {
            return Latency::default();
        }
        seconds.sort_by(f64::total_cmp);
        let at = |q: f64| seconds[((seconds.len() - 1) as f64 * q).round() as usize] * 1000.0;
        Latency {
            count: seconds.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            max_ms: at(1.0),
        }
    }

    fn render(&self) -> String {
        if self.count == 0 {
            "-".to_string()
        } else {
            format!("{:.0}/{:.0}/{:.0}", self.p50_ms, self.p95_ms, self.max_ms)
        }
    }
}

impl Summary {
    pub fn new(
        program: &str,
        setting: Setting,
        run: Run,
        server_counts: Option<(u64, u64)>,
    ) -> Summary {
        let Run {
            wall_seconds,
            records,
            worker,
        } = run;
        let bytes: u64 = records.iter().map(|r| r.bytes).sum();
        let ok = records.iter().filter(|r| r.status == 0).count();
        let sum_opt = |f: fn(&CallRecord) -> Option<u64>| -> Option<u64> {
            records.iter().map(f).sum::<Option<u64>>()
        };
        let (connections, channels) = match server_counts {
            Some((c, ch)) => (Some(c), Some(ch)),
            None => {
                let (wc, wch) = worker
                    .as_ref()
                    .map_or((0, 0), |w| (w.connections, w.channels));
                (
                    sum_opt(|r| r.connections).map(|c| c + wc),
                    sum_opt(|r| r.channels).map(|c| c + wch),
                )
            }
        };
        let worker_rss = worker.as_ref().map_or(0, |w| w.max_rss_kib);
        Summary {
            program: program.to_string(),
            setting,
            calls: records.len(),
            failed: records.len() - ok,
            mismatched: records.iter().filter(|r| r.mismatch).count(),
            wall_seconds,
            waited_seconds: records.iter().map(|r| r.seconds).sum(),
            segments_per_second: ok as f64 / wall_seconds.max(1e-9),
            mib_per_second: bytes as f64 / (1 << 20) as f64 / wall_seconds.max(1e-9),
            hits: Latency::of(
                records
                    .iter()
                    .filter(|r| r.spool_hit)
                    .map(|r| r.seconds)
                    .collect(),
            ),
            misses: Latency::of(
                records
                    .iter()
                    .filter(|r| !r.spool_hit)
                    .map(|r| r.seconds)
                    .collect(),
            ),
            connections,
            channels,
            cpu_seconds: records.iter().map(|r| r.cpu_seconds).sum::<f64>()
                + worker.as_ref().map_or(0.0, |w| w.cpu_seconds),
            peak_rss_mib: records
                .iter()
                .map(|r| r.max_rss_kib)
                .chain(std::iter::once(worker_rss))
                .max()
                .unwrap_or(0) as f64
                / 1024.0,
            barman_cpu_seconds: None,
            records,
            worker,
        }
    }
}

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub target: String,
    pub first_wal: String,
    pub count: usize,
    pub summaries: Vec<Summary>,
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

/// The table, one row per program and setting, then the ratios.
fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl Summary {
    fn setting(&self) -> String {
        format!(
            "-p {} keep {} direct {} async {}{}",
            self.setting.parallel,
            on_off(self.setting.keep_compression),
            on_off(self.setting.direct_read),
            on_off(self.setting.async_mode),
            self.at_rtt()
        )
    }

    fn at_rtt(&self) -> String {
        match self.setting.rtt_ms {
            0 => String::new(),
            ms => format!(" at {ms} ms RTT"),
        }
    }

    /// The setting as the flags a user would type (`--keep-compression`
    /// is our default, so only its absence is spelled out).
    fn flags(&self) -> String {
        let s = &self.setting;
        let mut flags = format!("-p {}", s.parallel);
        for (on, flag) in [
            (!s.keep_compression, " --no-keep-compression"),
            (s.direct_read, " --direct-read"),
            (s.async_mode, " --async"),
        ] {
            if on {
                flags.push_str(flag);
            }
        }
        flags + &self.at_rtt()
    }
}

/// The table, one row per program and setting, then the ratios.
pub fn render_table(report: &BenchReport) -> String {
    let mut out = format!(
        "{} from {} against {}\n\n",
        calls_measured(report),
        report.first_wal,
        report.target
    );
    if report
        .summaries
        .first()
        .is_some_and(|s| s.setting.clients > 1)
    {
        out.insert_str(out.len() - 2, " (seg/s and MiB/s: all clients)");
    }
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
    let ours: Vec<&Summary> = report
        .summaries
        .iter()
        .filter(|s| s.program == "ours")
        .collect();
    let mut ratios = String::new();
    for o in &ours {
        for other in report.summaries.iter().filter(|s| {
            s.program != "ours"
                && s.setting.parallel == o.setting.parallel
                && s.setting.keep_compression == o.setting.keep_compression
                && s.setting.rtt_ms == o.setting.rtt_ms
        }) {
            ratios.push_str(&format!(
                "  {}: ours is {:.2} times faster than {} ({:.2} s vs {:.2} s)\n",
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
            ratios.push_str(&format!(
                "  ours {} is {:.2} times faster than ours {}\n",
                o.setting(),
                base.wall_seconds / o.wall_seconds.max(1e-9),
                base.setting()
            ));
        }
    }
    if !ratios.is_empty() {
        out.push_str("\nratios (same run, side by side):\n");
        out.push_str(&ratios);
    }
    let bad: usize = report
        .summaries
        .iter()
        .map(|s| s.failed + s.mismatched)
        .sum();
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
fn calls_measured(report: &BenchReport) -> String {
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
    let bad: usize = report
        .summaries
        .iter()
        .map(|s| s.failed + s.mismatched)
        .sum();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_taken_from_sorted_samples() {
        let l = Latency::of(vec![0.005, 0.001, 0.003, 0.002, 0.004]);
        assert_eq!((l.count, l.p50_ms, l.max_ms), (5, 3.0, 5.0));
        assert_eq!(Latency::of(vec![]).render(), "-");
    }

    fn summary(program: &str, parallel: usize, wall_seconds: f64, failed: usize) -> Summary {
        Summary {
            program: program.to_string(),
            setting: Setting {
                parallel,
                keep_compression: true,
                direct_read: false,
                async_mode: false,
                rtt_ms: 0,
                clients: 1,
            },
            calls: 32,
            failed,
            mismatched: 0,
            wall_seconds,
            waited_seconds: wall_seconds,
            segments_per_second: 0.0,
            mib_per_second: 0.0,
            hits: Latency::default(),
            misses: Latency::default(),
            connections: None,
            channels: None,
            cpu_seconds: 0.0,
            peak_rss_mib: 0.0,
            barman_cpu_seconds: None,
            records: Vec::new(),
            worker: None,
        }
    }

    fn report(summaries: Vec<Summary>) -> BenchReport {
        BenchReport {
            target: "the embedded Barman".to_string(),
            first_wal: "000000010000000000000001".to_string(),
            count: 32,
            summaries,
        }
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
