//! CSV: large files split into byte ranges on line boundaries, one partition per range.
//!
//! Like Dask's `blocksize`, a range boundary is moved forward to just after the next newline.
//! Quoted fields holding newlines can therefore not be split correctly; files with such
//! fields should be read with `blocksize: None` (one partition per file).

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use partita_core::{Error, Result, Scheduler};
use polars::prelude::{
    CsvReadOptions, CsvWriter, DataFrame as PlFrame, IntoLazy, LazyCsvReader, LazyFileListReader,
    LazyFrame, PlRefPath, SchemaRef, SerReader, SerWriter,
};
use serde::{Deserialize, Serialize};

use super::{Scan, io_error, list_files, utf8_path};
use crate::frame::DataFrame;
use crate::polars_error::from_polars;

/// Options for [`read_csv`].
#[derive(Clone, Debug)]
pub struct CsvOptions {
    /// Field separator.
    pub separator: u8,
    /// Whether each file starts with a header line naming the columns.
    pub has_header: bool,
    /// Target bytes per partition; `None` reads each file as one partition.
    pub blocksize: Option<u64>,
    /// The schema, when known; otherwise inferred from the first `infer_schema_rows` rows
    /// of the first file.
    pub schema: Option<SchemaRef>,
    /// Rows read to infer the schema.
    pub infer_schema_rows: usize,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            separator: b',',
            has_header: true,
            blocksize: Some(64 << 20),
            schema: None,
            infer_schema_rows: 1000,
        }
    }
}

/// One partition of a CSV input: bytes `start..end` of a file, whole lines, no header.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CsvRange {
    /// The file.
    pub path: String,
    /// First byte (the start of a line).
    pub start: u64,
    /// One past the last byte (the end of a line or of the file).
    pub end: u64,
    /// The columns every range is parsed into.
    pub schema: SchemaRef,
    /// Field separator.
    pub separator: u8,
}

/// Read CSV files lazily: `path` is a file, a directory of `.csv` files, or a glob.
///
/// The schema is inferred now from the start of the first file (or given in `options`);
/// files must have the same header. Rows are parsed when partitions are computed; a row
/// that does not parse is an error naming the file and byte range.
pub fn read_csv(path: impl AsRef<Path>, options: &CsvOptions) -> Result<DataFrame> {
    let files = list_files(path.as_ref(), "csv")?;
    let first = utf8_path(&files[0])?;
    let schema = match &options.schema {
        Some(schema) => Arc::clone(schema),
        None => LazyCsvReader::new(PlRefPath::new(first.as_str()))
            .with_has_header(options.has_header)
            .with_separator(options.separator)
            .with_infer_schema_length(Some(options.infer_schema_rows))
            .finish()
            .and_then(|mut lf| lf.collect_schema())
            .map_err(|e| from_polars(e, &format!("inferring the schema of {first}")))?,
    };
    let mut header: Option<Vec<u8>> = None;
    let mut scans = Vec::new();
    for file in &files {
        let name = utf8_path(file)?;
        let size = std::fs::metadata(file)
            .map_err(|e| io_error(file, e))?
            .len();
        let mut handle = File::open(file).map_err(|e| io_error(file, e))?;
        let mut start = 0;
        if options.has_header {
            let line = read_line_at(&mut handle, 0, file)?;
            start = line.len() as u64;
            let trimmed = trim_eol(&line).to_vec();
            match &header {
                None => header = Some(trimmed),
                Some(h) if *h != trimmed => {
                    return Err(Error::Schema(format!(
                        "{name} does not have the header of {first}: {:?} instead of {:?}",
                        String::from_utf8_lossy(&trimmed),
                        String::from_utf8_lossy(h)
                    )));
                }
                Some(_) => {}
            }
        }
        let mut boundaries = vec![start];
        if let Some(block) = options.blocksize.filter(|&b| b > 0) {
            let mut next = start + block;
            while next < size {
                let line = read_line_at(&mut handle, next, file)?;
                let boundary = next + line.len() as u64;
                if boundary >= size {
                    break;
                }
                boundaries.push(boundary);
                next = boundary + block;
            }
        }
        boundaries.push(size);
        for w in boundaries.windows(2) {
            scans.push(Scan::Csv(CsvRange {
                path: name.clone(),
                start: w[0],
                end: w[1],
                schema: Arc::clone(&schema),
                separator: options.separator,
            }));
        }
    }
    DataFrame::from_scans(scans, schema)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The bytes from `offset` up to and including the next newline (or to the end of file).
fn read_line_at(file: &mut File, offset: u64, path: &Path) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(path, e))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error(path, e))?;
        if n == 0 {
            return Ok(out);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&buf[..=i]);
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Parse one range into a polars plan root.
pub(crate) fn scan(range: &CsvRange) -> Result<LazyFrame> {
    let path = Path::new(&range.path);
    let len = range.end.checked_sub(range.start).ok_or_else(|| {
        Error::Graph(format!(
            "csv range {}..{} of {} is reversed",
            range.start, range.end, range.path
        ))
    })?;
    if len == 0 {
        return Ok(PlFrame::empty_with_arc_schema(Arc::clone(&range.schema)).lazy());
    }
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    file.seek(SeekFrom::Start(range.start))
        .map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if (bytes.len() as u64) < len {
        return Err(io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended before byte {} (did it change?)", range.end),
            ),
        ));
    }
    let frame = CsvReadOptions::default()
        .with_has_header(false)
        .with_schema(Some(Arc::clone(&range.schema)))
        .map_parse_options(|o| o.with_separator(range.separator))
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()
        .map_err(|e| {
            from_polars(
                e,
                &format!(
                    "parsing {} bytes {}..{}",
                    range.path, range.start, range.end
                ),
            )
        })?;
    Ok(frame.lazy())
}

/// Write one partition as a CSV file with a header line.
pub(crate) fn write(frame: &mut PlFrame, path: &Path, separator: u8) -> Result<u64> {
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    CsvWriter::new(file)
        .include_header(true)
        .with_separator(separator)
        .finish(frame)
        .map_err(|e| from_polars(e, &format!("writing {}", path.display())))?;
    Ok(frame.height() as u64)
}

impl DataFrame {
    /// Compute and write one CSV file per partition, `part.{i}.csv` with a header line,
    /// into the directory `path`, which must not exist. The directory appears whole or not
    /// at all. Returns the number of rows written.
    pub fn to_csv(&self, path: impl AsRef<Path>, scheduler: &dyn Scheduler) -> Result<u64> {
        super::write_partitions(
            self,
            path.as_ref(),
            super::FileFormat::Csv { separator: b',' },
            scheduler,
        )
    }
}
