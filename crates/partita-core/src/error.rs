//! The one error type of partita.
//!
//! Every fallible function in every partita crate returns [`Result`]. Variants say *what kind*
//! of thing went wrong (so Python can map each to its own exception class) and messages are
//! lowercase and name the key, file, column or shape involved.

use std::fmt;

use crate::key::Key;

/// A boxed error from user code (closures in delayed functions, map_blocks kernels, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result<T, partita_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in partita.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task depends on a key that no task produces.
    #[error("missing dependency: task {key} depends on {missing}, which is not in the graph")]
    MissingDependency { key: Key, missing: Key },
    /// The graph has a cycle; `key` is on it and `cycle` lists the whole loop.
    #[error("cycle in graph: task {key} depends on itself ({})", display_cycle(.cycle))]
    Cycle { key: Key, cycle: Vec<Key> },
    /// Two tasks in one graph builder share a key.
    #[error("duplicate key in graph: {key}")]
    DuplicateKey { key: Key },
    /// A requested key is not in the graph.
    #[error("key not in graph: {key}")]
    KeyNotFound { key: Key },
    /// Any other malformed graph.
    #[error("graph error: {0}")]
    Graph(String),
    /// Shapes or chunkings that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// Missing columns, wrong column types.
    #[error("schema error: {0}")]
    Schema(String),
    /// A value of one type was given where another was expected.
    #[error("type error: {0}")]
    Type(String),
    /// A task failed; `key` names it and `source` says why.
    #[error("task {key} failed: {source}")]
    Compute { key: Key, source: Box<Error> },
    /// A task panicked; the panic was caught and turned into this error.
    #[error("task {key} panicked: {message}")]
    Panic { key: Key, message: String },
    /// An error raised by user code (a closure in a delayed function, a kernel, ...).
    #[error("{0}")]
    External(BoxError),
    /// A file could not be read or written.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Encoding or decoding a value, op or graph failed.
    #[error("codec error: {0}")]
    Codec(String),
    /// The network or the remote side failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// Authentication was refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The computation was cancelled before it finished.
    #[error("computation cancelled")]
    Cancelled,
    /// A feature that partita does not offer (yet); the message says which.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// A bug in partita.
    #[error("internal error: {0}")]
    Internal(String),
    /// Another error with a sentence of context in front.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
}

fn display_cycle(cycle: &[Key]) -> String {
    let mut out = String::new();
    for (i, key) in cycle.iter().enumerate() {
        if i > 0 {
            out.push_str(" -> ");
        }
        out.push_str(&key.to_string());
    }
    out
}

impl Error {
    /// A compute error for `key`, unless `self` already names a failing task (errors from
    /// fused tasks name the inner task that failed, which is the more precise one).
    pub fn in_task(self, key: &Key) -> Error {
        match self {
            e @ (Error::Compute { .. } | Error::Panic { .. } | Error::Cancelled) => e,
            e => Error::Compute {
                key: key.clone(),
                source: Box::new(e),
            },
        }
    }

    /// Wrap user code's error.
    pub fn external(err: impl Into<BoxError>) -> Error {
        Error::External(err.into())
    }

    /// The innermost error, skipping `Compute` and `Context` wrappers.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Compute { source, .. } | Error::Context { source, .. } => source.root_cause(),
            e => e,
        }
    }

    /// The key of the failing task, if this error came from one.
    pub fn task_key(&self) -> Option<&Key> {
        match self {
            Error::Compute { key, .. } | Error::Panic { key, .. } => Some(key),
            Error::Context { source, .. } => source.task_key(),
            _ => None,
        }
    }
}

/// Add context to errors: `result.context("reading chunk grid")?`.
pub trait Context<T> {
    /// Put `context` in front of the error message.
    fn context(self, context: impl fmt::Display) -> Result<T>;
    /// Like [`Context::context`], computing the message only on error.
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f().to_string(),
            source: Box::new(e.into()),
        })
    }
}

/// Return early with an error: `bail!(Shape, "cannot add shapes {a:?} and {b:?}")`.
#[macro_export]
macro_rules! bail {
    ($variant:ident, $($arg:tt)+) => {
        return Err($crate::Error::$variant(format!($($arg)+)))
    };
}

/// Return early with an error unless a condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $variant:ident, $($arg:tt)+) => {
        if !$cond {
            $crate::bail!($variant, $($arg)+);
        }
    };
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
