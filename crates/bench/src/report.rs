//! Results as data: a summary per program and setting, with the labels
//! every format shows. The formats themselves are in [`super::export`].

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
    pub(crate) fn of(mut seconds: Vec<f64>) -> Latency {
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

    pub(crate) fn render(&self) -> String {
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

impl BenchReport {
    /// Calls that failed or delivered bytes other than the first run's.
    pub fn bad_calls(&self) -> usize {
        self.summaries.iter().map(|s| s.failed + s.mismatched).sum()
    }
}

/// A flag as the table shows it.
pub(crate) fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl Summary {
    /// The setting in words, for ratios and plot titles.
    pub(crate) fn setting(&self) -> String {
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
    pub(crate) fn flags(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_taken_from_sorted_samples() {
        let l = Latency::of(vec![0.005, 0.001, 0.003, 0.002, 0.004]);
        assert_eq!((l.count, l.p50_ms, l.max_ms), (5, 3.0, 5.0));
        assert_eq!(Latency::of(vec![]).render(), "-");
    }
}

/// Small fixed reports for the exporters' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn summary(program: &str, parallel: usize, wall_seconds: f64, failed: usize) -> Summary {
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

    pub fn report(summaries: Vec<Summary>) -> BenchReport {
        BenchReport {
            target: "the embedded Barman".to_string(),
            first_wal: "000000010000000000000001".to_string(),
            count: 32,
            summaries,
        }
    }

    /// Two measured rows with every column filled: ours at -p 0 and -p 8
    /// (hits and misses, counts from the server), and the compared
    /// command at -p 8.
    pub fn measured() -> BenchReport {
        let mut p0 = summary("ours", 0, 4.0, 0);
        p0.calls = 4;
        p0.segments_per_second = 1.0;
        p0.mib_per_second = 16.0;
        p0.misses = Latency::of(vec![1.0, 1.0, 1.0, 1.0]);
        (p0.connections, p0.channels) = (Some(4), Some(8));
        (p0.cpu_seconds, p0.peak_rss_mib) = (0.5, 12.25);
        let mut p8 = summary("ours", 8, 1.0, 0);
        p8.calls = 4;
        p8.segments_per_second = 4.0;
        p8.mib_per_second = 64.0;
        p8.hits = Latency::of(vec![0.003, 0.004, 0.005]);
        p8.misses = Latency::of(vec![0.9]);
        (p8.connections, p8.channels) = (Some(1), Some(5));
        (p8.cpu_seconds, p8.peak_rss_mib) = (0.75, 20.5);
        let mut compare = summary("compare", 8, 2.0, 0);
        compare.calls = 4;
        compare.segments_per_second = 2.0;
        compare.mib_per_second = 32.0;
        compare.misses = Latency::of(vec![0.5, 0.5, 0.5, 0.5]);
        compare.cpu_seconds = 1.5;
        compare.peak_rss_mib = 30.0;
        let mut r = report(vec![p0, p8, compare]);
        r.count = 4;
        r
    }
}
