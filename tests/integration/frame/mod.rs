//! Partitioned dataframes, each operation compared with polars run directly on the same
//! data, for several partition counts (1, a few, more than rows), on every scheduler.

mod arrow;
mod groupby;
mod io;
mod join;
mod ops;
mod reshape;
mod sort;

use partita::frame::DataFrame;
use partita::frame::polars;
use partita::frame::polars::prelude::*;

/// Partition counts every test tries: one, a few, and more than the rows of `sample(20)`.
pub const PARTITIONS: [usize; 4] = [1, 3, 7, 40];

/// A frame of `rows` rows with string and integer keys (some null), floats (some null),
/// ints and bools, reproducible from `seed`.
pub fn sample(rows: usize, seed: u64) -> polars::prelude::DataFrame {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut k = Vec::new();
    let mut g = Vec::new();
    let mut v = Vec::new();
    let mut n = Vec::new();
    let mut flag = Vec::new();
    for _ in 0..rows {
        let r = next();
        k.push(if r % 11 == 0 {
            None
        } else {
            Some(["a", "b", "c", "d"][(r % 4) as usize])
        });
        g.push(if r % 13 == 5 {
            None
        } else {
            Some(((r >> 8) % 5) as i64)
        });
        v.push(if r % 7 == 3 {
            None
        } else {
            Some(((r >> 16) % 1000) as f64 / 10.0 - 20.0)
        });
        n.push(((r >> 32) % 100) as i32);
        flag.push((r >> 40) % 3 == 0);
    }
    df!("k" => k, "g" => g, "v" => v, "n" => n, "flag" => flag).expect("sample frame")
}

/// `sample(rows, seed)` as partita frames with each partition count of [`PARTITIONS`].
pub fn partitioned(rows: usize, seed: u64) -> Vec<(polars::prelude::DataFrame, DataFrame)> {
    let data = sample(rows, seed);
    PARTITIONS
        .iter()
        .map(|&n| {
            (
                data.clone(),
                DataFrame::from_polars(data.clone(), n).expect("from_polars"),
            )
        })
        .collect()
}
