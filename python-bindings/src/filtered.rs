//! `RustFilteredArray`: an array selected by a boolean mask, whose chunk sizes along axis 0
//! are unknown (wrapped by `partita.Array` like any array; see partita-array's `filtered`).
//! What needs the sizes is refused with a `ShapeError` naming `compute_chunk_sizes()`.

use std::sync::Arc;

use partita::array::{Axes, FilteredArray, FilteredOperand, Reduced};
use pyo3::prelude::*;

use crate::{
    IntoPy, RustArray, SchedulerArg, binary_op, chunk_to_numpy, dtype, graph_dot, operand,
    reduce_options, reduction_by_name, run_interruptible, scheduler, unary_op,
};

/// A lazy array selected by a boolean mask (wrapped by `partita.Array`).
#[pyclass(module = "partita._partita", frozen)]
pub(crate) struct RustFilteredArray(pub(crate) FilteredArray);

fn wrap(f: partita::Result<FilteredArray>) -> PyResult<RustFilteredArray> {
    f.map(RustFilteredArray).py_err()
}

/// An operand next to a filtered array: another one, an array, or a scalar.
fn filtered_operand(value: &Bound<'_, PyAny>) -> PyResult<FilteredOperand> {
    if let Ok(f) = value.cast::<RustFilteredArray>() {
        return Ok(FilteredOperand::Filtered(f.get().0.clone()));
    }
    Ok(match operand(value)? {
        partita::array::Operand::Array(a) => FilteredOperand::Array(a),
        scalar => FilteredOperand::Scalar(scalar),
    })
}

/// A reduction's result as the Python object it is: a known array or a filtered one.
fn reduced(py: Python<'_>, r: partita::Result<Reduced>) -> PyResult<Py<PyAny>> {
    Ok(match r.py_err()? {
        Reduced::Array(a) => Py::new(py, RustArray(a))?.into_any(),
        Reduced::Filtered(f) => Py::new(py, RustFilteredArray(f))?.into_any(),
    })
}

#[pymethods]
impl RustFilteredArray {
    /// The shape, `None` for the unknown first axis.
    #[getter]
    fn shape(&self) -> Vec<Option<usize>> {
        self.0.shape()
    }
    #[getter]
    fn chunks(&self) -> Vec<Vec<Option<usize>>> {
        self.0.chunks()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.0.dtype().name()
    }
    #[getter]
    fn npartitions(&self) -> usize {
        self.0.npartitions()
    }
    #[getter]
    fn max_nbytes(&self) -> usize {
        self.0.max_nbytes()
    }
    #[getter]
    fn name(&self) -> String {
        self.0.name().to_string()
    }

    #[pyo3(signature = (op, other, reflected = false))]
    fn binary(
        &self,
        op: &str,
        other: &Bound<'_, PyAny>,
        reflected: bool,
    ) -> PyResult<RustFilteredArray> {
        wrap(
            self.0
                .binary(binary_op(op)?, filtered_operand(other)?, reflected),
        )
    }

    fn unary(&self, op: &str) -> PyResult<RustFilteredArray> {
        wrap(self.0.unary(unary_op(op)?))
    }

    fn astype(&self, dtype_name: &str) -> PyResult<RustFilteredArray> {
        wrap(self.0.astype(dtype(dtype_name)?))
    }

    fn clip(&self, low: &Bound<'_, PyAny>, high: &Bound<'_, PyAny>) -> PyResult<RustFilteredArray> {
        use partita::array::BinaryOp;
        let (low, high) = (filtered_operand(low)?, filtered_operand(high)?);
        let low = self.0.binary(BinaryOp::Maximum, low, false);
        wrap(low.and_then(|l| l.binary(BinaryOp::Minimum, high, false)))
    }

    /// `where(self, a, b)` with this array as the condition.
    fn where_(&self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<RustFilteredArray> {
        wrap(self.0.where_(filtered_operand(a)?, filtered_operand(b)?))
    }

    /// Select again with a mask selected by the same mask.
    fn mask(&self, mask: &RustFilteredArray) -> PyResult<RustFilteredArray> {
        wrap(self.0.mask(&mask.0))
    }

    #[pyo3(signature = (name, axis = None, keepdims = false, split_every = None, ddof = 0))]
    fn reduce(
        &self,
        py: Python<'_>,
        name: &str,
        axis: Option<Vec<isize>>,
        keepdims: bool,
        split_every: Option<usize>,
        ddof: u32,
    ) -> PyResult<Py<PyAny>> {
        let axes = axis.map_or(Axes::All, Axes::These);
        let reduction = reduction_by_name(name, ddof)?;
        let options = reduce_options(keepdims, split_every);
        reduced(py, self.0.reduce(reduction, axes, options))
    }

    #[pyo3(signature = (name, axis = None, keepdims = false, split_every = None))]
    fn argreduce(
        &self,
        py: Python<'_>,
        name: &str,
        axis: Option<isize>,
        keepdims: bool,
        split_every: Option<usize>,
    ) -> PyResult<Py<PyAny>> {
        let reduction = reduction_by_name(name, 0)?;
        let options = reduce_options(keepdims, split_every);
        reduced(py, self.0.reduce(reduction, Axes::from(axis), options))
    }

    /// Compute into a NumPy array.
    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn compute(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self::scheduler(scheduler, num_workers)?;
        let array = self.0.clone();
        let chunk = run_interruptible(py, progress, |o| array.compute_chunk_with(s.as_ref(), o))?;
        Ok(chunk_to_numpy(py, chunk))
    }

    /// Compute every block; the result knows its chunk sizes.
    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn persist(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<RustArray> {
        let s = self::scheduler(scheduler, num_workers)?;
        let array = self.0.clone();
        run_interruptible(py, progress, |_| array.persist(s.as_ref())).map(RustArray)
    }

    /// Count each block's rows (from the mask alone) and return the array with known chunks.
    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn compute_chunk_sizes(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<RustArray> {
        let s = self::scheduler(scheduler, num_workers)?;
        let array = self.0.clone();
        run_interruptible(py, progress, |o| {
            array.compute_chunk_sizes_with(s.as_ref(), o)
        })
        .map(RustArray)
    }

    fn dot(&self) -> PyResult<String> {
        use partita::Collection;
        graph_dot(self.0.layer())
    }

    fn graph_size(&self) -> PyResult<usize> {
        use partita::Collection;
        partita::Layer::materialize(&[Arc::clone(self.0.layer())])
            .map(|g| g.len())
            .py_err()
    }

    /// Anything else an array offers needs the chunk sizes: say so, naming the operation.
    fn __getattr__(&self, name: &str) -> PyResult<Py<PyAny>> {
        Err(crate::to_py(partita::array::filtered::unknown_chunks(name)))
    }
}
