//! The report rendered, one file per format: [`table`] (the default on
//! stdout), [`markdown`] (for an issue or a pull request), [`csv`] (one row
//! per setting, for a spreadsheet or pandas), [`svg`] (`--plot`: latency
//! per call and MiB/s per setting). JSON is the report itself, through
//! serde (`--json`).

pub mod csv;
pub mod markdown;
pub mod svg;
pub mod table;

use super::report::BenchReport;

/// What goes to stdout (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, the ratios and the `Result:` line
    #[default]
    Table,
    /// A GitHub table, the ratios and the `Result:` line
    Markdown,
    /// One row per program and setting under a header, no ratios
    Csv,
}

/// The report as `format` shows it.
pub fn render(report: &BenchReport, format: Format) -> Result<String, String> {
    Ok(match format {
        Format::Table => table::render_table(report),
        Format::Markdown => markdown::render_markdown(report),
        Format::Csv => csv::render_csv(report).map_err(|e| format!("writing CSV: {e}"))?,
    })
}
