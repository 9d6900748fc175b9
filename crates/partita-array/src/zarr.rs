//! Zarr v3 arrays on disk, through the `zarrs` crate (the choice: the well-kept
//! Rust implementation of the format Python's zarr reads and writes).
//!
//! Reading is lazy: every block is a task that opens the store and reads its region, so
//! the graph stays serializable and blocks are read in parallel, only when computed.
//! Writing compresses chunks with zstd (Python's zarr default) and computes the array block
//! by block straight into a store built in a temporary
//! directory next to the target, which is renamed into place at the end: a failed write
//! leaves nothing at the target path.

use std::path::Path;
use std::sync::Arc;

use partita_core::{Collection, Error, Key, Layer, Op, Result, Scheduler, Task, Value};
use serde::{Deserialize, Serialize};
use zarrs::array::builder::ArrayBuilderFillValue;
use zarrs::array::codec::bytes_to_bytes::zstd::ZstdCodec;
use zarrs::array::{
    Array as ZarrArray, ArrayBuilder, ArraySubset, DataType as ZarrType, data_type,
};
use zarrs::filesystem::FilesystemStore;

use crate::array::Array;
use crate::chunk::Chunk;
use crate::dtype::DType;
use crate::grid::{ChunkGrid, Chunks};

fn zarr_type(d: DType) -> ZarrType {
    match d {
        DType::Bool => data_type::bool(),
        DType::U8 => data_type::uint8(),
        DType::I32 => data_type::int32(),
        DType::I64 => data_type::int64(),
        DType::F32 => data_type::float32(),
        DType::F64 => data_type::float64(),
    }
}

fn from_zarr_type(z: &ZarrType) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| zarr_type(d) == *z)
}

fn zarr_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Codec(format!("{}: zarr: {e}", path.display()))
}

fn open(path: &Path) -> Result<ZarrArray<FilesystemStore>> {
    if !path.join("zarr.json").is_file() {
        return Err(Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no zarr.json: not a Zarr v3 array",
            ),
        });
    }
    let store = Arc::new(FilesystemStore::new(path).map_err(|e| zarr_error(path, e))?);
    ZarrArray::open(store, "/").map_err(|e| zarr_error(path, e))
}

/// Read one block of a Zarr array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZarrReadBlock {
    /// The array's directory.
    pub path: String,
    /// The block's first element.
    pub start: Vec<u64>,
    /// The block's shape.
    pub shape: Vec<u64>,
    /// Its dtype.
    pub dtype: DType,
}

#[typetag::serde(name = "array-zarr-read")]
impl Op for ZarrReadBlock {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        let path = Path::new(&self.path);
        let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        crate::chunk::checked_block_len(&shape, self.dtype)?;
        let z = open(path)?;
        let subset = ArraySubset::new_with_start_shape(self.start.clone(), self.shape.clone())
            .map_err(|e| zarr_error(path, e))?;
        let chunk = crate::with_dtype!(self.dtype, T => Chunk::new(
            z.retrieve_array_subset::<ndarray::ArrayD<T>>(&subset).map_err(|e| zarr_error(path, e))?
        ));
        Ok(Value::new(chunk))
    }
    fn name(&self) -> &str {
        "read-zarr"
    }
}

/// Write one block into a Zarr array whose metadata exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZarrWriteBlock {
    /// The array's directory.
    pub path: String,
    /// The block's first element.
    pub start: Vec<u64>,
}

#[typetag::serde(name = "array-zarr-write")]
impl Op for ZarrWriteBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("to-zarr", inputs, 1)?;
        let path = Path::new(&self.path);
        let chunk = Chunk::from_value(&inputs[0])?;
        let z = open(path)?;
        if z.data_type() != &zarr_type(chunk.dtype()) {
            return Err(Error::Type(format!(
                "{}: a {} block for a zarr array of {:?}",
                path.display(),
                chunk.dtype(),
                z.data_type()
            )));
        }
        let shape: Vec<u64> = chunk.shape().iter().map(|&d| d as u64).collect();
        let subset = ArraySubset::new_with_start_shape(self.start.clone(), shape)
            .map_err(|e| zarr_error(path, e))?;
        crate::with_chunk!(chunk, a => z
            .store_array_subset(&subset, a.as_standard_layout().into_owned())
            .map_err(|e| zarr_error(path, e))?);
        Ok(Value::new(()))
    }
    fn name(&self) -> &str {
        "to-zarr"
    }
}

/// Open a Zarr v3 array lazily, one block per stored chunk (or per `chunks`, if given).
pub fn read_zarr(path: impl AsRef<Path>, chunks: Option<Chunks>) -> Result<Array> {
    let path = path.as_ref();
    let z = open(path)?;
    let dtype = from_zarr_type(z.data_type()).ok_or_else(|| {
        Error::NotImplemented(format!(
            "{}: zarr data type {:?} (supported: bool, uint8, int32, int64, float32, float64)",
            path.display(),
            z.data_type()
        ))
    })?;
    let shape: Vec<usize> = z.shape().iter().map(|&d| d as usize).collect();
    let chunks = match chunks {
        Some(c) => c,
        None => {
            let stored = z
                .chunk_shape(&vec![0; shape.len()])
                .map_err(|e| zarr_error(path, e))?;
            Chunks::Shape(stored.iter().map(|d| d.get() as usize).collect())
        }
    };
    let grid = ChunkGrid::new(&shape, &chunks, dtype)?;
    let name = path.display().to_string();
    Ok(Array::from_blocks(
        "read-zarr",
        grid.clone(),
        dtype,
        Vec::new(),
        |idx| {
            let op = ZarrReadBlock {
                path: name.clone(),
                start: grid.block_offset(idx).iter().map(|&o| o as u64).collect(),
                shape: grid.block_shape(idx).iter().map(|&s| s as u64).collect(),
                dtype,
            };
            (Arc::new(op) as Arc<dyn Op>, Vec::new())
        },
    ))
}

impl Array {
    /// Compute and write as a Zarr v3 array in the directory `path`, which must not exist.
    ///
    /// Stored chunks follow this array's chunks (rechunked to a regular grid first if they
    /// are irregular). The array appears at `path` whole or not at all.
    pub fn to_zarr(&self, path: impl AsRef<Path>, scheduler: &dyn Scheduler) -> Result<()> {
        let path = path.as_ref();
        // Zarr's grid is regular: every chunk the size of the first, the last one cut short.
        let regular = self.chunks().iter().all(|c| {
            c.len() < 2 || c[..c.len() - 1].iter().all(|&x| x == c[0]) && c[c.len() - 1] <= c[0]
        });
        let source = if regular {
            self.clone()
        } else {
            let sizes: Vec<usize> = self
                .chunks()
                .iter()
                .map(|c| c.iter().copied().max().unwrap_or(1))
                .collect();
            self.rechunk(Chunks::Shape(sizes))?
        };
        let chunk_shape: Vec<u64> = source.chunks().iter().map(|c| c[0].max(1) as u64).collect();
        partita_core::atomic::create_directory_atomically(path, |tmp| {
            let store = Arc::new(FilesystemStore::new(tmp).map_err(|e| zarr_error(tmp, e))?);
            let shape: Vec<u64> = source.shape().iter().map(|&d| d as u64).collect();
            let fill: ArrayBuilderFillValue = match source.dtype() {
                DType::Bool => zarrs::array::FillValue::from(false).into(),
                DType::U8 => 0u8.into(),
                DType::I32 => 0i32.into(),
                DType::I64 => 0i64.into(),
                DType::F32 => 0f32.into(),
                DType::F64 => 0f64.into(),
            };
            // zstd like Python's zarr by default; level 3 is zstd's own default trade-off.
            let mut builder =
                ArrayBuilder::new(shape, chunk_shape, zarr_type(source.dtype()), fill);
            builder.bytes_to_bytes_codecs(vec![Arc::new(ZstdCodec::new(3, false))]);
            let z = builder.build(store, "/").map_err(|e| zarr_error(tmp, e))?;
            z.store_metadata().map_err(|e| zarr_error(tmp, e))?;
            drop(z);
            // One write task per block, reading that block; the run returns nothing. The ops
            // name the store by path, so they run on a cluster's workers too (which share
            // this filesystem, as they must for the rename to publish their writes).
            let name = Key::unique_name("to-zarr");
            let grid = source.grid().clone();
            let target = tmp.display().to_string();
            let tasks: Vec<Task> = grid
                .blocks()
                .map(|idx| {
                    let op = ZarrWriteBlock {
                        path: target.clone(),
                        start: grid.block_offset(&idx).iter().map(|&o| o as u64).collect(),
                    };
                    Task::new(
                        crate::array::block_key(&name, &idx),
                        Arc::new(op),
                        vec![source.block_key(&idx)],
                    )
                })
                .collect();
            let keys: Vec<Key> = tasks.iter().map(|t| t.key.clone()).collect();
            let layer = Layer::new(Arc::clone(&name), tasks, vec![Arc::clone(source.layer())]);
            let graph = Layer::materialize(&[layer])?;
            partita_core::compute(graph, &keys, scheduler)?;
            Ok(())
        })
    }
}
