//! Usage traces for the simulator: the CSV format and its strict parser. Parsing is pure
//! ([`parse_trace`] takes the text); [`load`] only reads the file. Every error names the line
//! and, where there is one, the column.
//!
//! # Format
//!
//! ```text
//! # comment lines start with `#`; blank lines are skipped
//! time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes,cpu_limit_millicores,memory_limit_bytes,concurrency
//! 0,shop/cart-7d9f,12.5,83886080,67108864,2000,1073741824,2
//! 0,shop/web-55c2,300,157286400,,,,
//! 30,shop/cart-7d9f,950,90177536,70254592,,,
//! ```
//!
//! - The first non-comment line is the header. `time`, `proxy`, `cpu_millicores` and
//!   `memory_bytes` are required; `unreclaimable_bytes`, `cpu_limit_millicores`,
//!   `memory_limit_bytes` and `concurrency` are optional. Columns may come in any order; an
//!   unknown or repeated column is an error.
//! - `time`: seconds from the start of the trace (decimal, `>= 0`), non-decreasing per proxy.
//!   Rows of many proxies may be interleaved in any order.
//! - `proxy`: any non-empty name. `namespace/pod` puts the proxy in `namespace` for the
//!   policy's `overrides`. Plain CSV: no quoting, so no commas or quotes in names.
//! - `cpu_millicores`: the CPU the proxy wants (millicores, decimal, `>= 0`) — its demand, not
//!   what a limit lets it use.
//! - `memory_bytes`: the memory the proxy would hold with no limit (bytes, integer): its
//!   anonymous memory plus the page cache it uses.
//! - `unreclaimable_bytes` (optional, `<= memory_bytes`): the part reclaim cannot free without
//!   swap (anon + kernel + sock + shmem). Empty or absent: [`DEFAULT_UNRECLAIMABLE_SHARE`] of
//!   `memory_bytes`.
//! - `cpu_limit_millicores`, `memory_limit_bytes` (optional, `> 0`): the proxy's static
//!   original limits (`cpu.max`, `memory.max`). A proxy's value may be given on any of its rows
//!   (empty elsewhere) but must not change. Absent: the command line's `--cpu-limit` and
//!   `--memory-limit`.
//! - `concurrency` (optional, `> 0`): Envoy's `--concurrency N`, constant per proxy like the
//!   limits; the CPU bounds follow it as in the agent (floor N x `cpu.perWorkerMin`, ceiling
//!   N+1 cores).
//!
//! Demand is piecewise constant: a row holds from its time until the proxy's next row, and the
//! last row of each proxy until the end of the trace, which is the largest `time` in the file.
//! A proxy exists from its first row on. Per-second samples are just rows one second apart.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Share of `memory_bytes` taken as unreclaimable when a row gives no `unreclaimable_bytes`:
/// a proxy's memory is mostly heap (Envoy, Go, Rust), with a little page cache.
pub const DEFAULT_UNRECLAIMABLE_SHARE: f64 = 0.8;

/// The longest trace accepted (31 days), so a typo cannot ask for billions of ticks.
pub const MAX_TIME_SECONDS: f64 = 31.0 * 24.0 * 3600.0;

/// Larger limits or worker counts are typos (a 1024-core proxy).
const MAX_CPU_MILLIS: u64 = 1_024_000;
const MAX_CONCURRENCY: u64 = 1024;

const REQUIRED: [&str; 4] = ["time", "proxy", "cpu_millicores", "memory_bytes"];
const OPTIONAL: [&str; 4] = [
    "unreclaimable_bytes",
    "cpu_limit_millicores",
    "memory_limit_bytes",
    "concurrency",
];

/// One row: the demand from `at_us` on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Microseconds from the start of the trace.
    pub at_us: u64,
    pub cpu_millis: f64,
    pub memory_bytes: u64,
    pub unreclaimable_bytes: u64,
}

/// Everything the trace says about one proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTrace {
    pub name: String,
    /// Non-decreasing in `at_us`; never empty.
    pub points: Vec<Point>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// Envoy's worker count (`--concurrency N`).
    pub concurrency: Option<u32>,
}

impl ProxyTrace {
    /// When the proxy appears, in microseconds.
    pub fn start_us(&self) -> u64 {
        self.points.first().map_or(0, |p| p.at_us)
    }
}

/// A parsed trace: proxies in the order they first appear.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub proxies: Vec<ProxyTrace>,
    /// The end of the trace (its largest time), in microseconds.
    pub end_us: u64,
}

impl Trace {
    pub fn proxy(&self, name: &str) -> Option<&ProxyTrace> {
        self.proxies.iter().find(|p| p.name == name)
    }
}

/// Where in the text a problem is: a 1-based line and, when it is about one cell, the 1-based
/// column and its header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: Option<(usize, String)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some((n, name)) = &self.column {
            write!(f, ", column {n} ({name})")?;
        }
        Ok(())
    }
}

/// What is wrong with a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("read trace {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace{}: {at}: {message}", origin(.path))]
    Invalid {
        path: Option<PathBuf>,
        at: Location,
        message: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

impl TraceError {
    /// Where the problem is (`None` for read errors).
    pub fn location(&self) -> Option<&Location> {
        match self {
            TraceError::Invalid { at, .. } => Some(at),
            TraceError::Read { .. } => None,
        }
    }

    fn at(line: usize, column: Option<(usize, &str)>, message: impl Into<String>) -> Self {
        TraceError::Invalid {
            path: None,
            at: Location {
                line,
                column: column.map(|(n, name)| (n + 1, name.to_string())),
            },
            message: message.into(),
        }
    }

    fn with_path(self, path: &Path) -> Self {
        match self {
            TraceError::Invalid { at, message, .. } => TraceError::Invalid {
                path: Some(path.to_path_buf()),
                at,
                message,
            },
            read => read,
        }
    }
}

/// Reads and parses the trace file at `path`.
pub fn load(path: &Path) -> Result<Trace, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_trace(&text).map_err(|e| e.with_path(path))
}

/// Column positions found in the header.
struct Columns {
    names: Vec<String>,
    time: usize,
    proxy: usize,
    cpu: usize,
    memory: usize,
    unreclaimable: Option<usize>,
    cpu_limit: Option<usize>,
    memory_limit: Option<usize>,
    concurrency: Option<usize>,
}

fn parse_header(line_no: usize, line: &str) -> Result<Columns, TraceError> {
    let names: Vec<String> = line.split(',').map(|c| c.trim().to_string()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if !REQUIRED.contains(&name.as_str()) && !OPTIONAL.contains(&name.as_str()) {
            return Err(TraceError::at(
                line_no,
                Some((i, name)),
                format!(
                    "unknown column `{name}` (known: {}, {})",
                    REQUIRED.join(", "),
                    OPTIONAL.join(", ")
                ),
            ));
        }
        if seen.insert(name, i).is_some() {
            return Err(TraceError::at(
                line_no,
                Some((i, name)),
                format!("column `{name}` appears twice"),
            ));
        }
    }
    for required in REQUIRED {
        if !seen.contains_key(required) {
            return Err(TraceError::at(
                line_no,
                None,
                format!(
                    "header lacks the required column `{required}` (need {})",
                    REQUIRED.join(",")
                ),
            ));
        }
    }
    let at = |name: &str| seen.get(name).copied();
    Ok(Columns {
        time: at("time").unwrap_or_default(),
        proxy: at("proxy").unwrap_or_default(),
        cpu: at("cpu_millicores").unwrap_or_default(),
        memory: at("memory_bytes").unwrap_or_default(),
        unreclaimable: at("unreclaimable_bytes"),
        cpu_limit: at("cpu_limit_millicores"),
        memory_limit: at("memory_limit_bytes"),
        concurrency: at("concurrency"),
        names,
    })
}

/// One data line, split, with the helpers that turn cells into values.
struct Row<'a> {
    line: usize,
    cells: Vec<&'a str>,
    columns: &'a Columns,
}

impl Row<'_> {
    fn fail(&self, col: usize, message: impl Into<String>) -> TraceError {
        TraceError::at(self.line, Some((col, &self.columns.names[col])), message)
    }

    fn text(&self, col: usize) -> &str {
        self.cells[col]
    }

    fn decimal(&self, col: usize) -> Result<f64, TraceError> {
        let text = self.text(col);
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            Ok(_) => Err(self.fail(col, format!("`{text}` must be a finite number >= 0"))),
            Err(_) => Err(self.fail(col, format!("`{text}` is not a number"))),
        }
    }

    fn integer(&self, col: usize) -> Result<u64, TraceError> {
        let text = self.text(col);
        text.parse::<u64>()
            .map_err(|_| self.fail(col, format!("`{text}` is not a whole number of bytes >= 0")))
    }

    /// An optional cell: `None` when the column is absent or the cell is empty.
    fn optional(&self, col: Option<usize>) -> Result<Option<u64>, TraceError> {
        match col {
            Some(c) if !self.text(c).is_empty() => self.integer(c).map(Some),
            _ => Ok(None),
        }
    }

    /// An optional positive per-proxy constant (a limit, a worker count).
    fn positive(&self, col: Option<usize>, max: u64) -> Result<Option<u64>, TraceError> {
        let value = self.optional(col)?;
        match (value, col) {
            (Some(v), Some(c)) if v == 0 || v > max => {
                Err(self.fail(c, format!("{v} must be greater than 0 and at most {max}")))
            }
            _ => Ok(value),
        }
    }
}

/// Sets a per-proxy constant, or checks it did not change.
fn constant(
    slot: &mut Option<u64>,
    value: Option<u64>,
    row: &Row<'_>,
    col: Option<usize>,
) -> Result<(), TraceError> {
    match (value, *slot, col) {
        (Some(v), Some(old), Some(c)) if v != old => Err(row.fail(
            c,
            format!(
                "{v} differs from this proxy's earlier value {old}: limits and concurrency are constant"
            ),
        )),
        (Some(v), _, _) => {
            *slot = Some(v);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Parses trace text (see the module documentation for the format).
pub fn parse_trace(text: &str) -> Result<Trace, TraceError> {
    let mut columns: Option<Columns> = None;
    let mut proxies: Vec<ProxyTrace> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut last_line: HashMap<usize, usize> = HashMap::new();
    let mut end_us = 0u64;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.contains('"') {
            return Err(TraceError::at(
                line_no,
                None,
                "quoted fields are not supported (plain CSV: no commas or quotes in values)",
            ));
        }
        let Some(cols) = &columns else {
            columns = Some(parse_header(line_no, line)?);
            continue;
        };
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != cols.names.len() {
            return Err(TraceError::at(
                line_no,
                None,
                format!(
                    "{} fields, the header has {}",
                    cells.len(),
                    cols.names.len()
                ),
            ));
        }
        let row = Row {
            line: line_no,
            cells,
            columns: cols,
        };

        let seconds = row.decimal(cols.time)?;
        if seconds > MAX_TIME_SECONDS {
            return Err(row.fail(
                cols.time,
                format!("{seconds} s is past the longest trace accepted ({MAX_TIME_SECONDS} s)"),
            ));
        }
        let at_us = (seconds * 1e6).round() as u64;
        let name = row.text(cols.proxy);
        if name.is_empty() {
            return Err(row.fail(cols.proxy, "empty proxy name"));
        }
        let cpu_millis = row.decimal(cols.cpu)?;
        let memory_bytes = row.integer(cols.memory)?;
        let unreclaimable_bytes = match row.optional(cols.unreclaimable)? {
            Some(u) if u > memory_bytes => {
                return Err(row.fail(
                    cols.unreclaimable.unwrap_or_default(),
                    format!("{u} exceeds memory_bytes ({memory_bytes})"),
                ));
            }
            Some(u) => u,
            None => (memory_bytes as f64 * DEFAULT_UNRECLAIMABLE_SHARE) as u64,
        };
        let cpu_limit = row.positive(cols.cpu_limit, MAX_CPU_MILLIS)?;
        let memory_limit = row.positive(cols.memory_limit, u64::MAX)?;
        let concurrency = row.positive(cols.concurrency, MAX_CONCURRENCY)?;

        let slot = *index.entry(name.to_string()).or_insert_with(|| {
            proxies.push(ProxyTrace {
                name: name.to_string(),
                points: Vec::new(),
                cpu_limit_millis: None,
                memory_limit_bytes: None,
                concurrency: None,
            });
            proxies.len() - 1
        });
        let proxy = &mut proxies[slot];
        if let Some(prev) = proxy.points.last()
            && at_us < prev.at_us
        {
            return Err(row.fail(
                cols.time,
                format!(
                    "time {seconds} s goes back before proxy `{name}`'s previous row (line {}, {} s)",
                    last_line.get(&slot).copied().unwrap_or_default(),
                    prev.at_us as f64 / 1e6
                ),
            ));
        }
        constant(&mut proxy.cpu_limit_millis, cpu_limit, &row, cols.cpu_limit)?;
        constant(
            &mut proxy.memory_limit_bytes,
            memory_limit,
            &row,
            cols.memory_limit,
        )?;
        let mut workers = proxy.concurrency.map(u64::from);
        constant(&mut workers, concurrency, &row, cols.concurrency)?;
        proxy.concurrency = workers.and_then(|n| u32::try_from(n).ok());
        proxy.points.push(Point {
            at_us,
            cpu_millis,
            memory_bytes,
            unreclaimable_bytes,
        });
        last_line.insert(slot, line_no);
        end_us = end_us.max(at_us);
    }
    if columns.is_none() {
        return Err(TraceError::at(
            text.lines().count().max(1),
            None,
            format!("no header (want {})", REQUIRED.join(",")),
        ));
    }
    if proxies.is_empty() {
        return Err(TraceError::at(
            text.lines().count().max(1),
            None,
            "no data rows",
        ));
    }
    Ok(Trace { proxies, end_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn err(text: &str) -> (Location, String) {
        match parse_trace(text) {
            Err(TraceError::Invalid { at, message, .. }) => (at, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn at(line: usize, column: Option<(usize, &str)>) -> Location {
        Location {
            line,
            column: column.map(|(n, s)| (n, s.to_string())),
        }
    }

    #[test]
    fn parses_interleaved_proxies_with_optional_columns() {
        let text = "# a comment\n\
                    time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes,cpu_limit_millicores,memory_limit_bytes\r\n\
                    0,a,10,104857600,83886080,2000,1073741824\n\
                    \n\
                    0,b,500.5,52428800,,,\n\
                    1.5,a,20,104857600,,,\n\
                    3,b,0,52428800,,1000,\n";
        let t = parse_trace(text).unwrap();
        assert_eq!(t.end_us, 3_000_000);
        assert_eq!(t.proxies.len(), 2);
        let a = t.proxy("a").unwrap();
        assert_eq!(a.cpu_limit_millis, Some(2000));
        assert_eq!(a.memory_limit_bytes, Some(1 << 30));
        assert_eq!(
            a.points[1],
            Point {
                at_us: 1_500_000,
                cpu_millis: 20.0,
                memory_bytes: 100 * MI,
                unreclaimable_bytes: 80 * MI,
            }
        );
        assert_eq!(a.concurrency, None);
        let b = t.proxy("b").unwrap();
        assert_eq!(b.cpu_limit_millis, Some(1000));
        assert_eq!(b.memory_limit_bytes, None);
        // No unreclaimable_bytes: the default share.
        assert_eq!(b.points[0].unreclaimable_bytes, 40 * MI);
        assert_eq!(b.points[0].cpu_millis, 500.5);
        assert_eq!(b.start_us(), 0);
    }

    #[test]
    fn columns_may_come_in_any_order() {
        let t = parse_trace("proxy,memory_bytes,time,cpu_millicores\np,100,2,7\n").unwrap();
        assert_eq!(t.proxies[0].points[0].at_us, 2_000_000);
        assert_eq!(t.proxies[0].points[0].cpu_millis, 7.0);
        assert_eq!(t.proxies[0].points[0].memory_bytes, 100);
    }

    #[test]
    fn bad_cells_name_line_and_column() {
        let head = "time,proxy,cpu_millicores,memory_bytes\n";
        let (loc, msg) = err(&format!("{head}0,a,1,1\n1,a,abc,1\n"));
        assert_eq!(loc, at(3, Some((3, "cpu_millicores"))));
        assert!(msg.contains("`abc` is not a number"), "{msg}");

        let (loc, msg) = err(&format!("{head}0,a,-5,1\n"));
        assert_eq!(loc, at(2, Some((3, "cpu_millicores"))));
        assert!(msg.contains(">= 0"), "{msg}");

        let (loc, _) = err(&format!("{head}0,a,1,1.5\n"));
        assert_eq!(loc, at(2, Some((4, "memory_bytes"))));

        let (loc, _) = err(&format!("{head}NaN,a,1,1\n"));
        assert_eq!(loc, at(2, Some((1, "time"))));

        let (loc, msg) = err(&format!("{head}0,,1,1\n"));
        assert_eq!(loc, at(2, Some((2, "proxy"))));
        assert!(msg.contains("empty proxy"));

        let (loc, msg) = err(&format!("{head}99999999999,a,1,1\n"));
        assert_eq!(loc, at(2, Some((1, "time"))));
        assert!(msg.contains("longest trace"), "{msg}");
    }

    #[test]
    fn time_must_not_go_back_per_proxy() {
        let text = "time,proxy,cpu_millicores,memory_bytes\n5,a,1,1\n1,b,1,1\n4,a,1,1\n";
        let (loc, msg) = err(text);
        assert_eq!(loc, at(4, Some((1, "time"))));
        assert!(msg.contains("line 2"), "{msg}");
        // Equal times are a step at that instant.
        assert!(parse_trace("time,proxy,cpu_millicores,memory_bytes\n5,a,1,1\n5,a,2,1\n").is_ok());
    }

    #[test]
    fn header_problems() {
        let (loc, msg) = err("time,proxy,cpu,memory_bytes\n");
        assert_eq!(loc, at(1, Some((3, "cpu"))));
        assert!(msg.contains("unknown column `cpu`"), "{msg}");

        let (loc, msg) = err("time,proxy,cpu_millicores\n0,a,1\n");
        assert_eq!(loc, at(1, None));
        assert!(msg.contains("`memory_bytes`"), "{msg}");

        let (loc, msg) = err("time,proxy,time,cpu_millicores,memory_bytes\n");
        assert_eq!(loc, at(1, Some((3, "time"))));
        assert!(msg.contains("twice"));

        let (_, msg) = err("# only a comment\n");
        assert!(msg.contains("no header"), "{msg}");
        let (loc, msg) = err("\n\ntime,proxy,cpu_millicores,memory_bytes\n");
        assert_eq!(loc.line, 3);
        assert!(msg.contains("no data rows"), "{msg}");
    }

    #[test]
    fn row_shape_and_quotes() {
        let head = "time,proxy,cpu_millicores,memory_bytes\n";
        let (loc, msg) = err(&format!("{head}0,a,1\n"));
        assert_eq!(loc, at(2, None));
        assert!(msg.contains("3 fields, the header has 4"), "{msg}");
        let (loc, msg) = err(&format!("{head}0,\"a,b\",1,1\n"));
        assert_eq!(loc, at(2, None));
        assert!(msg.contains("quoted"));
    }

    #[test]
    fn optional_columns_are_checked() {
        let head = "time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes,cpu_limit_millicores,memory_limit_bytes\n";
        let (loc, msg) = err(&format!("{head}0,a,1,100,200,,\n"));
        assert_eq!(loc, at(2, Some((5, "unreclaimable_bytes"))));
        assert!(msg.contains("exceeds memory_bytes"), "{msg}");

        let (loc, msg) = err(&format!("{head}0,a,1,100,,0,\n"));
        assert_eq!(loc, at(2, Some((6, "cpu_limit_millicores"))));
        assert!(msg.contains("greater than 0"));
        let (loc, _) = err(&format!("{head}0,a,1,100,,2000000,\n"));
        assert_eq!(loc, at(2, Some((6, "cpu_limit_millicores"))));

        let (loc, msg) = err(&format!("{head}0,a,1,100,,,1000\n1,a,1,100,,,2000\n"));
        assert_eq!(loc, at(3, Some((7, "memory_limit_bytes"))));
        assert!(msg.contains("constant"), "{msg}");
    }

    #[test]
    fn concurrency_is_a_per_proxy_constant() {
        let head = "time,proxy,cpu_millicores,memory_bytes,concurrency\n";
        let t = parse_trace(&format!("{head}0,a,1,1,4\n1,a,1,1,\n2,a,1,1,4\n")).unwrap();
        assert_eq!(t.proxies[0].concurrency, Some(4));
        let (loc, msg) = err(&format!("{head}0,a,1,1,4\n1,a,1,1,2\n"));
        assert_eq!(loc, at(3, Some((5, "concurrency"))));
        assert!(msg.contains("constant"), "{msg}");
        let (loc, _) = err(&format!("{head}0,a,1,1,0\n"));
        assert_eq!(loc, at(2, Some((5, "concurrency"))));
    }

    #[test]
    fn errors_from_a_file_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "time,proxy,cpu_millicores,memory_bytes\n0,a,x,1\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.csv: line 2, column 3 (cpu_millicores): `x` is not a number"),
            "{e}"
        );
        let e = load(&dir.path().join("missing.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("read trace "), "{e}");
    }
}
