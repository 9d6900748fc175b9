//! Arrow IPC files: one partition per file.

use std::fs::File;
use std::path::Path;

use partita_core::{Error, Result};
use polars::prelude::{
    DataFrame as PlFrame, IpcScanOptions, IpcWriter, LazyFrame, PlRefPath, SchemaRef, SerWriter,
    UnifiedScanArgs,
};

use super::{Scan, io_error, list_files, utf8_path};
use crate::frame::DataFrame;
use crate::polars_error::from_polars;

/// Read Arrow IPC (Feather v2) files lazily: a file, a directory of `.arrow` files, or a
/// glob. Schemas must agree across files.
pub fn read_ipc(path: impl AsRef<Path>) -> Result<DataFrame> {
    let files = list_files(path.as_ref(), "arrow")?;
    let mut schema: Option<(SchemaRef, String)> = None;
    let mut scans = Vec::new();
    for file in &files {
        let name = utf8_path(file)?;
        let file_schema = scan(&name)?
            .collect_schema()
            .map_err(|e| from_polars(e, &format!("reading the schema of {name}")))?;
        super::agree_on_schema(&mut schema, file_schema, &name)?;
        scans.push(Scan::Ipc { path: name });
    }
    let (schema, _) = schema.ok_or_else(|| Error::Internal("no ipc file listed".into()))?;
    DataFrame::from_scans(scans, schema)
}

pub(crate) fn scan(path: &str) -> Result<LazyFrame> {
    let args = UnifiedScanArgs {
        glob: false,
        ..UnifiedScanArgs::default()
    };
    LazyFrame::scan_ipc(PlRefPath::new(path), IpcScanOptions::default(), args)
        .map_err(|e| from_polars(e, &format!("opening {path}")))
}

/// Write one partition as an Arrow IPC file.
pub(crate) fn write(frame: &mut PlFrame, path: &Path) -> Result<u64> {
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    IpcWriter::new(file)
        .finish(frame)
        .map_err(|e| from_polars(e, &format!("writing {}", path.display())))?;
    Ok(frame.height() as u64)
}

impl DataFrame {
    /// Compute and write one Arrow IPC file per partition, `part.{i}.arrow`, into the
    /// directory `path`, which must not exist. Returns the number of rows written.
    pub fn to_ipc(
        &self,
        path: impl AsRef<Path>,
        scheduler: &dyn partita_core::Scheduler,
    ) -> Result<u64> {
        super::write_partitions(self, path.as_ref(), super::FileFormat::Ipc, scheduler)
    }
}
