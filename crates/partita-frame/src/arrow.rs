//! Arrow (arrow-rs) interop: frames from `RecordBatch`es and results as `RecordBatch`es.
//!
//! Key decision: columns cross between polars' arrow and arrow-rs through the Arrow C data
//! interface, the ABI both implement: polars exports an array and its field as C structs,
//! arrow-rs imports them (and the other way round). Buffers are shared, not copied; each
//! side's release callback keeps the other's memory alive. The two crates declare the same
//! `#[repr(C)]` structs under different names, so the hand-over is a move of one into the
//! other: the only `unsafe` code in partita, confined to [`c_interface`].
//!
//! Polars keeps strings as views (`Utf8View`), which arrow-rs reads directly; arrow-rs
//! `Utf8`/`LargeUtf8` columns become views on the way into polars (that is a copy polars
//! makes, not this module).

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field as ArrowRsField, Schema as ArrowRsSchema, SchemaRef as ArrowRsSchemaRef};
use partita_core::{Error, Result, Scheduler};
use polars::prelude::{CompatLevel, DataFrame as PlFrame, SchemaExt, Series};
use polars_arrow::array::Array;

use crate::frame::DataFrame;
use crate::polars_error::from_polars;

/// The unsafe hand-over between the two Arrow implementations' C structs.
#[allow(unsafe_code)]
mod c_interface {
    use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
    use polars_arrow::ffi::{ArrowArray, ArrowSchema};

    // Both sides declare the C data interface's structs (same fields, same order,
    // `#[repr(C)]`); `transmute` checks the sizes at compile time.

    /// polars' exported array as arrow-rs's.
    pub(super) fn array_to_arrow_rs(array: ArrowArray) -> FFI_ArrowArray {
        // SAFETY: identical `#[repr(C)]` layouts of the C data interface's `ArrowArray`;
        // ownership (the release callback) moves with the bytes and `array` is not dropped.
        unsafe { std::mem::transmute::<ArrowArray, FFI_ArrowArray>(array) }
    }

    /// polars' exported schema as arrow-rs's.
    pub(super) fn schema_to_arrow_rs(schema: ArrowSchema) -> FFI_ArrowSchema {
        // SAFETY: as above, for the C data interface's `ArrowSchema`.
        unsafe { std::mem::transmute::<ArrowSchema, FFI_ArrowSchema>(schema) }
    }

    /// arrow-rs's exported array as polars'.
    pub(super) fn array_to_polars(array: FFI_ArrowArray) -> ArrowArray {
        // SAFETY: as above.
        unsafe { std::mem::transmute::<FFI_ArrowArray, ArrowArray>(array) }
    }

    /// arrow-rs's exported schema as polars'.
    pub(super) fn schema_to_polars(schema: FFI_ArrowSchema) -> ArrowSchema {
        // SAFETY: as above.
        unsafe { std::mem::transmute::<FFI_ArrowSchema, ArrowSchema>(schema) }
    }

    /// Import an arrow-rs array exported by polars.
    pub(super) fn import_into_arrow_rs(
        array: FFI_ArrowArray,
        schema: &FFI_ArrowSchema,
    ) -> Result<arrow_array::ArrayRef, arrow_schema::ArrowError> {
        // SAFETY: `array` and `schema` were just exported by polars as a valid pair.
        let data = unsafe { arrow_array::ffi::from_ffi(array, schema) }?;
        Ok(arrow_array::make_array(data))
    }

    /// Import into polars an array exported by arrow-rs.
    pub(super) fn import_into_polars(
        array: ArrowArray,
        schema: &ArrowSchema,
    ) -> polars::prelude::PolarsResult<(
        polars_arrow::datatypes::Field,
        Box<dyn polars_arrow::array::Array>,
    )> {
        // SAFETY: `array` and `schema` were just exported by arrow-rs as a valid pair.
        unsafe {
            let field = polars_arrow::ffi::import_field_from_c(schema)?;
            let values = polars_arrow::ffi::import_array_from_c(array, field.dtype().clone())?;
            Ok((field, values))
        }
    }
}

/// One arrow-rs array (and its field) from a polars arrow array.
fn to_arrow_rs(
    field: &polars_arrow::datatypes::Field,
    array: Box<dyn Array>,
) -> Result<(ArrowRsField, ArrayRef)> {
    let schema = c_interface::schema_to_arrow_rs(polars_arrow::ffi::export_field_to_c(field));
    let rs_field = ArrowRsField::try_from(&schema)
        .map_err(|e| Error::Type(format!("column {:?} has no arrow-rs type: {e}", field.name)))?;
    let array = c_interface::array_to_arrow_rs(polars_arrow::ffi::export_array_to_c(array));
    let array = c_interface::import_into_arrow_rs(array, &schema).map_err(|e| {
        Error::Type(format!(
            "column {:?} cannot cross to arrow-rs: {e}",
            field.name
        ))
    })?;
    Ok((rs_field, array))
}

/// The arrow-rs schema of a polars frame.
pub fn schema_to_arrow(frame: &polars::prelude::Schema) -> Result<ArrowRsSchemaRef> {
    let fields = frame
        .iter_fields()
        .map(|f| {
            let field = f.to_arrow(CompatLevel::newest());
            let schema =
                c_interface::schema_to_arrow_rs(polars_arrow::ffi::export_field_to_c(&field));
            ArrowRsField::try_from(&schema).map_err(|e| {
                Error::Type(format!("column {:?} has no arrow-rs type: {e}", f.name()))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ArrowRsSchema::new(fields)))
}

/// A polars frame as arrow-rs record batches (one per aligned chunk; none when it has no
/// rows), sharing its buffers.
pub fn to_record_batches(frame: &PlFrame) -> Result<Vec<RecordBatch>> {
    let schema = schema_to_arrow(frame.schema())?;
    let mut frame = frame.clone();
    frame.align_chunks_par();
    let fields: Vec<polars_arrow::datatypes::Field> = frame
        .schema()
        .iter_fields()
        .map(|f| f.to_arrow(CompatLevel::newest()))
        .collect();
    let mut batches = Vec::new();
    for chunk in frame.iter_chunks(CompatLevel::newest(), false) {
        if chunk.height() == 0 {
            continue;
        }
        let columns = fields
            .iter()
            .zip(chunk.into_arrays())
            .map(|(field, array)| to_arrow_rs(field, array).map(|(_, a)| a))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
            .map_err(|e| Error::Type(format!("building a record batch: {e}")))?;
        batches.push(batch);
    }
    Ok(batches)
}

/// An arrow-rs record batch as a polars frame, sharing its buffers where polars' types
/// allow (see the module docs).
pub fn from_record_batch(batch: &RecordBatch) -> Result<PlFrame> {
    let columns = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let (array, schema) = arrow_array::ffi::to_ffi(&column.to_data()).map_err(|e| {
                Error::Type(format!(
                    "column {:?} cannot leave arrow-rs: {e}",
                    field.name()
                ))
            })?;
            let (_, values) = c_interface::import_into_polars(
                c_interface::array_to_polars(array),
                &c_interface::schema_to_polars(schema),
            )
            .map_err(|e| from_polars(e, &format!("importing arrow column {:?}", field.name())))?;
            Series::from_arrow(field.name().as_str().into(), values)
                .map(Into::into)
                .map_err(|e| from_polars(e, &format!("importing arrow column {:?}", field.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    PlFrame::new(batch.num_rows(), columns)
        .map_err(|e| from_polars(e, "assembling a frame from a record batch"))
}

impl DataFrame {
    /// A frame with one partition per record batch (they must share a schema).
    pub fn from_record_batches(batches: &[RecordBatch]) -> Result<DataFrame> {
        if let Some(first) = batches.first() {
            for (i, b) in batches.iter().enumerate().skip(1) {
                if b.schema() != first.schema() {
                    return Err(Error::Schema(format!(
                        "record batch {i} does not have the schema of batch 0: {:?} vs {:?}",
                        b.schema(),
                        first.schema()
                    )));
                }
            }
        }
        let parts = batches
            .iter()
            .map(from_record_batch)
            .collect::<Result<Vec<_>>>()?;
        DataFrame::from_partitions(parts)
    }

    /// The arrow-rs schema of the result.
    pub fn arrow_schema(&self) -> Result<ArrowRsSchemaRef> {
        schema_to_arrow(self.schema())
    }

    /// Compute and return the result as arrow-rs record batches, in partition order (empty
    /// partitions give none; [`DataFrame::arrow_schema`] gives the schema without rows).
    pub fn compute_record_batches(&self, scheduler: &dyn Scheduler) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for part in self.compute_partitions(scheduler)? {
            batches.extend(to_record_batches(&part)?);
        }
        Ok(batches)
    }
}

/// The arrow-rs crates these functions speak, for building and reading batches.
pub use {arrow_array, arrow_schema};
