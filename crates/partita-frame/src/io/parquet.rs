//! Parquet: one partition per file, or per span of row groups for large files.

use std::fs::File;
use std::path::Path;

use partita_core::{Error, Result, Scheduler};
use polars::prelude::{
    LazyFrame, ParquetReader, ParquetWriter, PlRefPath, ScanArgsParquet, SchemaRef, SerReader,
};

use super::{Scan, io_error, list_files, utf8_path};
use crate::frame::DataFrame;
use crate::polars_error::from_polars;

/// Options for [`read_parquet`].
#[derive(Clone, Debug)]
pub struct ParquetOptions {
    /// Read only these columns (the projection reaches the reader).
    pub columns: Option<Vec<String>>,
    /// Split a file whose row groups hold more than this many uncompressed bytes into
    /// partitions of consecutive row groups; `None` keeps one partition per file.
    /// Default 256 MiB, like Dask's `blocksize`.
    pub partition_bytes: Option<u64>,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            columns: None,
            partition_bytes: Some(256 << 20),
        }
    }
}

/// Read parquet files lazily: `path` is a file, a directory of `.parquet` files, or a glob.
///
/// Only metadata is read now (schemas, which must agree across files, and row-group sizes);
/// each partition reads its rows when computed, with the projections and predicates of the
/// operations applied to it.
pub fn read_parquet(path: impl AsRef<Path>, options: &ParquetOptions) -> Result<DataFrame> {
    let files = list_files(path.as_ref(), "parquet")?;
    let mut schema: Option<(SchemaRef, String)> = None;
    let mut scans = Vec::new();
    for file in &files {
        let name = utf8_path(file)?;
        let file_schema = scan(&name, None)?
            .collect_schema()
            .map_err(|e| from_polars(e, &format!("reading the schema of {name}")))?;
        super::agree_on_schema(&mut schema, file_schema, &name)?;
        let spans = row_group_spans(file, options.partition_bytes)?;
        if spans.len() <= 1 {
            scans.push(Scan::Parquet {
                path: name,
                rows: None,
            });
        } else {
            scans.extend(spans.into_iter().map(|rows| Scan::Parquet {
                path: name.clone(),
                rows: Some(rows),
            }));
        }
    }
    let (schema, _) = schema.ok_or_else(|| Error::Internal("no parquet file listed".into()))?;
    let frame = DataFrame::from_scans(scans, schema)?;
    match &options.columns {
        Some(columns) => frame.select_columns(columns),
        None => Ok(frame),
    }
}

/// `(offset, len)` row spans of consecutive row groups holding about `target` uncompressed
/// bytes each; one span per file when `target` is `None` or the file is small.
fn row_group_spans(file: &Path, target: Option<u64>) -> Result<Vec<(u64, u64)>> {
    let Some(target) = target else {
        return Ok(Vec::new());
    };
    let handle = File::open(file).map_err(|e| io_error(file, e))?;
    let mut reader = ParquetReader::new(handle);
    let metadata = reader
        .get_metadata()
        .map_err(|e| from_polars(e, &format!("reading the metadata of {}", file.display())))?;
    let mut spans = Vec::new();
    let (mut offset, mut rows, mut bytes) = (0u64, 0u64, 0u64);
    for group in &metadata.row_groups {
        if rows > 0 && bytes + group.total_byte_size() as u64 > target {
            spans.push((offset, rows));
            offset += rows;
            rows = 0;
            bytes = 0;
        }
        rows += group.num_rows() as u64;
        bytes += group.total_byte_size() as u64;
    }
    if rows > 0 {
        spans.push((offset, rows));
    }
    Ok(spans)
}

/// A parquet file (or a span of its rows) as the root of a polars plan.
pub(crate) fn scan(path: &str, rows: Option<(u64, u64)>) -> Result<LazyFrame> {
    let args = ScanArgsParquet {
        // Partitions already run in parallel; one partition's read need not fan out.
        glob: false,
        ..ScanArgsParquet::default()
    };
    let lf = LazyFrame::scan_parquet(PlRefPath::new(path), args)
        .map_err(|e| from_polars(e, &format!("opening {path}")))?;
    Ok(match rows {
        // The slice sits directly on the scan, so polars reads only the row groups it covers
        // and still pushes later predicates into the reader (they apply after the slice).
        Some((offset, len)) => lf.slice(offset as i64, len as _),
        None => lf,
    })
}

/// Write one partition as a parquet file (zstd, polars' default).
pub(crate) fn write(frame: &mut polars::prelude::DataFrame, path: &Path) -> Result<u64> {
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    ParquetWriter::new(file)
        .finish(frame)
        .map_err(|e| from_polars(e, &format!("writing {}", path.display())))?;
    Ok(frame.height() as u64)
}

impl DataFrame {
    /// Compute and write one parquet file per partition, `part.{i}.parquet`, into the
    /// directory `path`, which must not exist. The directory appears whole or not at all.
    /// Returns the number of rows written.
    pub fn to_parquet(&self, path: impl AsRef<Path>, scheduler: &dyn Scheduler) -> Result<u64> {
        super::write_partitions(self, path.as_ref(), super::FileFormat::Parquet, scheduler)
    }
}
