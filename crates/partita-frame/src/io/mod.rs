//! Reading and writing partitioned files.
//!
//! Key decisions:
//! - A file-backed partition is a [`Scan`], not a task input: the scan becomes the root of
//!   the partition's polars plan, so projections and predicates of later steps reach the
//!   reader (see [`crate::plan`]).
//! - Inputs name a file, a directory (its files with the format's extension) or a glob;
//!   files are taken in natural order (`part.2` before `part.10`), which is the order their
//!   partitions get.
//! - Writers run one task per partition into a temporary directory beside the target and
//!   rename it into place when every partition is written: readers never see a half-written
//!   output, and a failure leaves nothing behind.

pub mod csv;
pub mod ipc;
pub mod parquet;

use std::fmt;
use std::path::{Path, PathBuf};

use partita_core::{Error, Result};
use polars::prelude::{LazyFrame, SchemaRef};
use serde::{Deserialize, Serialize};

pub use csv::{CsvOptions, CsvRange};

/// Where one partition's rows are read from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Scan {
    /// Rows `offset..offset + len` of a parquet file (the whole file when `rows` is `None`).
    Parquet {
        /// The file.
        path: String,
        /// `(offset, len)` in rows.
        rows: Option<(u64, u64)>,
    },
    /// A byte range of a CSV file, starting and ending on line boundaries.
    Csv(CsvRange),
    /// A whole Arrow IPC file.
    Ipc {
        /// The file.
        path: String,
    },
}

impl Scan {
    /// The file it reads.
    pub fn path(&self) -> &str {
        match self {
            Scan::Parquet { path, .. } | Scan::Ipc { path } => path,
            Scan::Csv(range) => &range.path,
        }
    }

    /// The scan as the root of a polars plan.
    pub fn lazy(&self) -> Result<LazyFrame> {
        match self {
            Scan::Parquet { path, rows } => parquet::scan(path, *rows),
            Scan::Csv(range) => csv::scan(range),
            Scan::Ipc { path } => ipc::scan(path),
        }
    }
}

impl fmt::Display for Scan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scan::Parquet { path, rows: None } => write!(f, "{path}"),
            Scan::Parquet {
                path,
                rows: Some((offset, len)),
            } => write!(f, "{path} rows {offset}..{}", offset + len),
            Scan::Csv(range) => write!(f, "{} bytes {}..{}", range.path, range.start, range.end),
            Scan::Ipc { path } => write!(f, "{path}"),
        }
    }
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn not_found(path: &Path, what: &str) -> Error {
    io_error(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string()),
    )
}

/// The files a path names: the file itself, a directory's files ending in `.{extension}`
/// (hidden and temporary files skipped), or a glob's matches; in natural order.
pub fn list_files(path: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let text = path.to_string_lossy();
    let mut files = if text.contains(['*', '?', '[']) {
        let matches = glob::glob(&text).map_err(|e| {
            io_error(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            )
        })?;
        let mut files = Vec::new();
        for m in matches {
            let p = m.map_err(|e| {
                let p = e.path().to_path_buf();
                io_error(&p, e.into())
            })?;
            if p.is_file() {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(not_found(path, "no file matches this pattern"));
        }
        files
    } else if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| io_error(path, e))? {
            let entry = entry.map_err(|e| io_error(path, e))?;
            let p = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let hidden = name.starts_with('.') || name.starts_with('_');
            if !hidden && p.is_file() && p.extension().is_some_and(|e| e == extension) {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(not_found(
                path,
                &format!("the directory holds no .{extension} file"),
            ));
        }
        files
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(not_found(path, "no such file or directory"));
    };
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

/// Compare strings with runs of digits compared as numbers: `part.2` < `part.10`.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
                let (ta, tb) = (&na[strip(na)..], &nb[strip(nb)..]);
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then(da.cmp(&db));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// How two schemas differ, for errors.
pub(crate) fn describe_difference(a: &SchemaRef, b: &SchemaRef) -> String {
    for (name, dtype) in a.iter() {
        match b.get(name) {
            None => return format!("column {name:?} is missing"),
            Some(other) if other != dtype => {
                return format!("column {name:?} is {other} instead of {dtype}");
            }
            Some(_) => {}
        }
    }
    for name in b.iter_names() {
        if a.get(name).is_none() {
            return format!("it has an extra column {name:?}");
        }
    }
    "the columns are in a different order".into()
}

/// Remember the first file's schema in `first`, or check that `schema` (of `name`) equals
/// it, naming both files and the first difference.
pub(crate) fn agree_on_schema(
    first: &mut Option<(SchemaRef, String)>,
    schema: SchemaRef,
    name: &str,
) -> Result<()> {
    match first {
        None => *first = Some((schema, name.to_string())),
        Some((expected, first_name)) if **expected != *schema => {
            return Err(Error::Schema(format!(
                "{name} does not have the schema of {first_name}: {}",
                describe_difference(expected, &schema)
            )));
        }
        Some(_) => {}
    }
    Ok(())
}

/// The path as a string polars accepts, or an error for paths that are not UTF-8.
pub(crate) fn utf8_path(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path is not valid UTF-8",
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut names = vec![
            "part.10.parquet",
            "part.2.parquet",
            "part.1.parquet",
            "a.parquet",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a.parquet",
                "part.1.parquet",
                "part.2.parquet",
                "part.10.parquet"
            ]
        );
    }

    #[test]
    fn missing_inputs_name_the_path() {
        let err = list_files(Path::new("/nonexistent/partita/x.parquet"), "parquet").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/partita/x.parquet"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = list_files(dir.path(), "parquet").unwrap_err();
        assert!(err.to_string().contains("no .parquet file"), "{err}");
        let err = list_files(&dir.path().join("*.parquet"), "parquet").unwrap_err();
        assert!(err.to_string().contains("no file matches"), "{err}");
    }
}

/// The file formats partitions are written in.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) enum FileFormat {
    Parquet,
    Csv { separator: u8 },
    Ipc,
}

impl FileFormat {
    fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv { .. } => "csv",
            FileFormat::Ipc => "arrow",
        }
    }
}

/// The task writing one partition to one file; it returns the number of rows written.
#[derive(Debug, Serialize, Deserialize)]
struct WritePartition {
    path: String,
    format: FileFormat,
}

#[typetag::serde(name = "frame-write")]
impl partita_core::Op for WritePartition {
    fn execute(&self, inputs: &[partita_core::Value]) -> Result<partita_core::Value> {
        partita_core::op::expect_inputs("frame-write", inputs, 1)?;
        let mut frame = crate::partition::Partition::from_value(&inputs[0])?.clone();
        let path = Path::new(&self.path);
        let rows = match self.format {
            FileFormat::Parquet => parquet::write(&mut frame, path)?,
            FileFormat::Csv { separator } => csv::write(&mut frame, path, separator)?,
            FileFormat::Ipc => ipc::write(&mut frame, path)?,
        };
        Ok(partita_core::Value::new(rows))
    }
    fn name(&self) -> &str {
        "frame-write"
    }
}

/// Write each partition of `frame` to `dir/part.{i}.{ext}` through a temporary directory.
pub(crate) fn write_partitions(
    frame: &crate::DataFrame,
    dir: &Path,
    format: FileFormat,
    scheduler: &dyn partita_core::Scheduler,
) -> Result<u64> {
    use partita_core::{Collection, Key, Layer, Task};
    use std::sync::Arc;
    partita_core::atomic::create_directory_atomically(dir, |tmp| {
        let name = Key::unique_name(&format!("to-{}", format.extension()));
        let tasks: Vec<Task> = frame
            .output_keys()
            .into_iter()
            .enumerate()
            .map(|(i, input)| {
                let path = tmp.join(format!("part.{i}.{}", format.extension()));
                let op = WritePartition {
                    path: utf8_path(&path)?,
                    format,
                };
                Ok(Task::new(
                    Key::new(Arc::clone(&name), [i as u32]),
                    Arc::new(op),
                    vec![input],
                ))
            })
            .collect::<Result<_>>()?;
        let keys: Vec<Key> = tasks.iter().map(|t| t.key.clone()).collect();
        let layer = Layer::new(Arc::clone(&name), tasks, vec![Arc::clone(frame.layer())]);
        let graph = Layer::materialize(&[layer])?;
        let values = partita_core::compute(graph, &keys, scheduler)?;
        values.iter().map(|v| v.get::<u64>().copied()).sum()
    })
}
