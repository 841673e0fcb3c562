//! One row per program and setting under a header, for a spreadsheet or
//! pandas: the table's columns split into one value each (latency
//! percentiles apart, an absent count empty), no ratios (compute them from
//! the rows).

use serde::Serialize;

use crate::report::{BenchReport, Summary};

/// One CSV row; the field names are the header.
#[derive(Serialize)]
struct Row<'a> {
    program: &'a str,
    parallel: usize,
    keep_compression: bool,
    direct_read: bool,
    async_mode: bool,
    rtt_ms: u64,
    clients: usize,
    calls: usize,
    wall_seconds: f64,
    waited_seconds: f64,
    segments_per_second: f64,
    mib_per_second: f64,
    hits: usize,
    hit_p50_ms: Option<f64>,
    hit_p95_ms: Option<f64>,
    hit_max_ms: Option<f64>,
    misses: usize,
    miss_p50_ms: Option<f64>,
    miss_p95_ms: Option<f64>,
    miss_max_ms: Option<f64>,
    connections: Option<u64>,
    channels: Option<u64>,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    barman_cpu_seconds: Option<f64>,
    failed: usize,
    mismatched: usize,
}

/// Rounded to what the clock and `wait4` can tell apart, so that a row
/// reads as measured rather than as float noise.
fn round(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

impl<'a> Row<'a> {
    fn of(s: &'a Summary) -> Row<'a> {
        let ms = |count: usize, v: f64| (count > 0).then(|| round(v, 3));
        Row {
            program: &s.program,
            parallel: s.setting.parallel,
            keep_compression: s.setting.keep_compression,
            direct_read: s.setting.direct_read,
            async_mode: s.setting.async_mode,
            rtt_ms: s.setting.rtt_ms,
            clients: s.setting.clients,
            calls: s.calls,
            wall_seconds: round(s.wall_seconds, 6),
            waited_seconds: round(s.waited_seconds, 6),
            segments_per_second: round(s.segments_per_second, 3),
            mib_per_second: round(s.mib_per_second, 3),
            hits: s.hits.count,
            hit_p50_ms: ms(s.hits.count, s.hits.p50_ms),
            hit_p95_ms: ms(s.hits.count, s.hits.p95_ms),
            hit_max_ms: ms(s.hits.count, s.hits.max_ms),
            misses: s.misses.count,
            miss_p50_ms: ms(s.misses.count, s.misses.p50_ms),
            miss_p95_ms: ms(s.misses.count, s.misses.p95_ms),
            miss_max_ms: ms(s.misses.count, s.misses.max_ms),
            connections: s.connections,
            channels: s.channels,
            cpu_seconds: round(s.cpu_seconds, 6),
            peak_rss_mib: round(s.peak_rss_mib, 3),
            barman_cpu_seconds: s.barman_cpu_seconds.map(|v| round(v, 6)),
            failed: s.failed,
            mismatched: s.mismatched,
        }
    }
}

pub fn render_csv(report: &BenchReport) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for s in &report.summaries {
        writer.serialize(Row::of(s))?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).expect("the CSV writer writes the UTF-8 it is given"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::measured;

    #[test]
    fn one_row_per_setting_under_a_header_absent_values_empty() {
        let mut report = measured();
        report.summaries[2].program = "python, \"original\"".to_string();
        assert_eq!(
            render_csv(&report).unwrap(),
            "\
program,parallel,keep_compression,direct_read,async_mode,rtt_ms,clients,calls,wall_seconds,waited_seconds,segments_per_second,mib_per_second,hits,hit_p50_ms,hit_p95_ms,hit_max_ms,misses,miss_p50_ms,miss_p95_ms,miss_max_ms,connections,channels,cpu_seconds,peak_rss_mib,barman_cpu_seconds,failed,mismatched
ours,0,true,false,false,0,1,4,4.0,4.0,1.0,16.0,0,,,,4,1000.0,1000.0,1000.0,4,8,0.5,12.25,,0,0
ours,8,true,false,false,0,1,4,1.0,1.0,4.0,64.0,3,4.0,5.0,5.0,1,900.0,900.0,900.0,1,5,0.75,20.5,,0,0
\"python, \"\"original\"\"\",8,true,false,false,0,1,4,2.0,2.0,2.0,32.0,0,,,,4,500.0,500.0,500.0,,,1.5,30.0,,0,0
"
        );
    }
}
