//! Turning polars' errors into partita's, keeping polars' message (which names the column).

use partita_core::Error;
use polars::prelude::PolarsError;

/// Map a polars error to the partita error of the same kind; `doing` says what partita was
/// doing ("building a filter", "reading data/part.0.parquet").
pub(crate) fn from_polars(e: PolarsError, doing: &str) -> Error {
    let message = format!("{doing}: {e}");
    match e {
        PolarsError::ColumnNotFound(_)
        | PolarsError::SchemaFieldNotFound(_)
        | PolarsError::SchemaMismatch(_)
        | PolarsError::StructFieldNotFound(_)
        | PolarsError::Duplicate(_) => Error::Schema(message),
        PolarsError::ShapeMismatch(_) => Error::Shape(message),
        PolarsError::InvalidOperation(_) => Error::Type(message),
        PolarsError::Context { error, .. } | PolarsError::ExprContext { error, .. } => {
            // Keep the outer message (it has the context) but the inner kind.
            match from_polars(*error, doing) {
                Error::Schema(_) => Error::Schema(message),
                Error::Shape(_) => Error::Shape(message),
                Error::Type(_) => Error::Type(message),
                _ => Error::External(message.into()),
            }
        }
        _ => Error::External(message.into()),
    }
}
