//! One Python thread state per task thread, kept between tasks.
//!
//! Key decision: a thread Python did not start (a rayon or tokio thread running tasks) gets
//! a Python thread state the first time it runs a Python task, and keeps it until the thread
//! ends. Without this, every `Python::attach` on such a thread creates a thread state (and
//! maps a fresh frame stack) and destroys it on release: measured on 10,000 `pt.delayed`
//! calls, a fifth of the time per call. Keeping an outer `PyGILState_Ensure` outstanding for
//! the thread's lifetime is the pattern CPython's C-API documentation gives for this;
//! pyo3's `attach` then finds the state and only takes and releases the GIL.
//!
//! Task threads keep one everywhere. Other threads (those moving values, which pickle and
//! unpickle them) keep one only in a worker or scheduler process (`python -m partita`),
//! whose main thread waits detached for the runtime to stop: in a user's process a runtime
//! may be dropped by a thread holding the GIL, which would then wait for a thread that
//! waits for the GIL to give its state back.
//!
//! The state goes when the thread ends (a thread-local destructor), or earlier when a
//! [`GiveBack`] is dropped: the compute thread of `run_interruptible` holds one and drops it
//! before it hands its result over, or while it unwinds (the caller then waits for the
//! thread holding the GIL). After the interpreter starts
//! shutting down (an `atexit` hook sets a flag) no state is kept or given back: a thread
//! touching the interpreter while it finalizes could be stopped by it.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

/// Set when the interpreter begins to exit.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Set in a `python -m partita` worker or scheduler process.
static SERVING: AtomicBool = AtomicBool::new(false);

/// The thread state this thread keeps, detached from the GIL between tasks.
struct Kept(*mut ffi::PyThreadState);

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: `self.0` is this thread's own state, created by the outer
        // `PyGILState_Ensure` in `keep` and detached by `PyEval_SaveThread`; it is restored
        // here on the same thread and then released by the matching `PyGILState_Release`,
        // which deletes it. Skipped once the interpreter is exiting or gone.
        unsafe {
            if EXITING.load(Ordering::Acquire) || ffi::Py_IsInitialized() == 0 {
                return;
            }
            ffi::PyEval_RestoreThread(self.0);
            ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_UNLOCKED);
        }
    }
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Give this thread a Python thread state that outlives the next `Python::attach`, unless it
/// has one (a Python thread, or one inside `attach`, which holds the GIL). Call it with the
/// GIL released, before running a Python task.
fn keep() {
    if EXITING.load(Ordering::Acquire) {
        return;
    }
    let _ = KEPT.try_with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            return;
        };
        if kept.is_some() {
            return;
        }
        // SAFETY: without a thread state this thread cannot hold the GIL, so the outer
        // `PyGILState_Ensure` creates one and takes the GIL, and `PyEval_SaveThread` gives
        // the GIL back while the state (its use count now one) stays registered for the
        // thread. Both are called on this thread with an initialized interpreter (this
        // module is loaded in it).
        unsafe {
            if ffi::Py_IsInitialized() == 0 || !ffi::PyGILState_GetThisThreadState().is_null() {
                return;
            }
            let _outer = ffi::PyGILState_Ensure();
            *kept = Some(Kept(ffi::PyEval_SaveThread()));
        }
    });
}

/// `Python::attach` for a Python task: the thread keeps its state (see [`keep`]).
pub(crate) fn attach_task<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    keep();
    Python::attach(f)
}

/// `Python::attach` for moving a value (pickling, unpickling, sizing): the thread keeps its
/// state only in a worker or scheduler process (see the module docs).
pub(crate) fn attach_value<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    if SERVING.load(Ordering::Acquire) {
        keep();
    }
    Python::attach(f)
}

/// This process serves a cluster: see the module docs.
pub(crate) fn serving() {
    SERVING.store(true, Ordering::Release);
}

/// Gives back this thread's kept state when dropped (the thread must not hold the GIL).
pub(crate) struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        let _ = KEPT.try_with(|kept| kept.take());
    }
}

/// Registered with `atexit`: from now on threads neither keep nor give back states.
#[pyfunction]
pub(crate) fn _interpreter_exiting() {
    EXITING.store(true, Ordering::Release);
}

/// Register [`_interpreter_exiting`] with `atexit`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(_interpreter_exiting, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
