//! Progress reporting: a callback trait, a closure adapter, and an indicatif bar.
//!
//! Schedulers report about a thousand times per run whatever its size, so a sink may do
//! real work per call (draw, send a message) without slowing million-task graphs.

use std::fmt;
use std::sync::Arc;

/// Receives progress from a run. Called from worker threads.
pub trait ProgressSink: Send + Sync {
    /// The run starts with `total` tasks.
    fn started(&self, total: usize) {
        let _ = total;
    }
    /// `done` of `total` tasks have finished.
    fn advanced(&self, done: usize, total: usize);
    /// The run ended (`ok` says whether it succeeded).
    fn finished(&self, done: usize, total: usize, ok: bool) {
        let _ = (done, total, ok);
    }
}

/// A closure as a progress sink: `ProgressFn::new(|done, total| ...)`.
pub struct ProgressFn<F>(F);

impl<F: Fn(usize, usize) + Send + Sync> ProgressFn<F> {
    /// Wrap a `(done, total)` callback.
    pub fn new(f: F) -> Arc<ProgressFn<F>> {
        Arc::new(ProgressFn(f))
    }
}

impl<F> fmt::Debug for ProgressFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressFn")
    }
}

impl<F: Fn(usize, usize) + Send + Sync> ProgressSink for ProgressFn<F> {
    fn advanced(&self, done: usize, total: usize) {
        (self.0)(done, total)
    }
}

/// A terminal progress bar (indicatif) on standard error.
#[derive(Debug)]
pub struct ProgressBar {
    bar: indicatif::ProgressBar,
}

impl Default for ProgressBar {
    fn default() -> Self {
        ProgressBar::new()
    }
}

impl ProgressBar {
    /// A bar drawn on standard error (hidden when it is not a terminal).
    pub fn new() -> ProgressBar {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} tasks ({per_sec}, eta {eta})",
        )
        .expect("the template is valid")
        .progress_chars("##-");
        bar.set_style(style);
        ProgressBar { bar }
    }

    /// A bar that draws nowhere (for tests).
    pub fn hidden() -> ProgressBar {
        let p = ProgressBar::new();
        p.bar
            .set_draw_target(indicatif::ProgressDrawTarget::hidden());
        p
    }

    /// The position last reported.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }
}

impl ProgressSink for ProgressBar {
    fn started(&self, total: usize) {
        self.bar.reset();
        self.bar.set_length(total as u64);
    }
    fn advanced(&self, done: usize, _total: usize) {
        self.bar.set_position(done as u64);
    }
    fn finished(&self, done: usize, _total: usize, ok: bool) {
        self.bar.set_position(done as u64);
        if ok {
            self.bar.finish();
        } else {
            self.bar.abandon();
        }
    }
}
