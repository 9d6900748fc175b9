//! A worker spilling a value to disk and reading it back: `cargo bench -p
//! partita-distributed --bench spill_file`.
//!
//! `spill_file` writes the value's split encoding part by part and reads the body back into
//! the words the codec keeps; `joined` is what a worker would do with a value's one-buffer
//! encoding (`Value::encode` + `fs::write`, `fs::read` + `Value::decode`): a copy of the
//! value on each side. A 64 MiB f64 chunk, on the file system of the temporary directory
//! (written files sit in the page cache, as a spill read back soon after does).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use partita_array::Chunk;
use partita_core::Value;
use partita_distributed::spill_file;

fn chunk() -> Value {
    let n = 8 << 20;
    let a = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[n]), |i| i[0] as f64);
    Value::new(Chunk::new(a))
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("0.value");
    let value = chunk();
    let mut group = c.benchmark_group("spill 64 MiB chunk, write + read");
    group.throughput(Throughput::Bytes(value.nbytes() as u64));
    group.sample_size(20);
    group.bench_function("spill_file", |b| {
        b.iter(|| {
            spill_file::write(&path, &value).expect("written");
            black_box(spill_file::read(&path).expect("read"))
        })
    });
    group.bench_function("joined", |b| {
        b.iter(|| {
            std::fs::write(&path, value.encode().expect("encoded")).expect("written");
            black_box(Value::decode(std::fs::read(&path).expect("read")).expect("decoded"))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
