//! A direct group-by for the aggregations partials and combines are made of.
//!
//! Key decision: most of a decomposed group-by's time is its per-partition partial (H2O q3:
//! 60% of every partition's task is polars' generic hash group-by, the rest is reading the
//! file). The partials and combines [`crate::groupby`] writes for sums, counts and means
//! use only `len`, `count`, `sum` and `sum` of a cast to `Float64` (the two halves of a
//! mean), grouped by integer or string columns, and those of extremes `min` and `max`. This
//! module computes exactly those, of bare columns (`sum` of a cast to `Float64` aside),
//! extremes of 8-64-bit integer columns only, in one pass per column, and leaves
//! everything else to polars:
//!
//! - **Group ids.** Each key column gets a dense group id per row, in order of first
//!   appearance. Integer keys whose range is small (at most twice the rows plus 1,024, as in "perfect
//!   hash" aggregation) index a table directly; wider integers hash into a table of their
//!   values. Strings hash their 16-byte view when inline (at most 12 bytes, the common key)
//!   and their bytes otherwise, and compare views before bytes. A null key is a group of
//!   its own. Several keys are combined pairwise: `id_a * groups_b + id_b` is an integer
//!   key of its own, densified the same way, so no step needs more than 64 bits.
//! - **Aggregations** scatter each value column into per-group accumulators. Integer sums
//!   wrap in 64 bits and are truncated to the output type, which is what polars' wrapping
//!   sums in that type give; nulls are skipped (a group of nulls sums to 0, and its
//!   `min`/`max` is null). Float sums
//!   add in row order, so they equal polars' up to the order of summation (which in
//!   polars' streaming engine depends on its threads and morsels too).
//! - **Only on the streaming engine**: `PARTITA_POLARS_ENGINE=in-memory` (whose float sums
//!   are compensated) or `PARTITA_GROUP_BY=polars` leaves every group-by to polars.
//! - **The output schema is polars' own**, found by planning the same group-by on an empty
//!   frame; an output type this module does not produce exactly (a `Float32` sum, a sum of
//!   booleans) makes it decline, and polars runs the group-by.
//!
//! Group order is first appearance (polars leaves it unspecified). Reference tests compare
//! results with polars' group-by on the same data, sorted.

use foldhash::quality::FixedState;
use hashbrown::HashTable;
use polars::prelude::{
    AggExpr, ChunkedArray, Column, DataFrame as PlFrame, DataType, DataTypeExpr, Expr, IDX_DTYPE,
    IdxCa, IdxSize, IntoColumn, IntoLazy, NamedFrom, PolarsNumericType, PolarsResult, Schema,
    Series, polars_bail, polars_err,
};
use polars_arrow::array::{Array, View};
use polars_arrow::bitmap::Bitmap;
use std::hash::BuildHasher;

/// One aggregation the direct path computes.
#[derive(Debug, Clone, PartialEq)]
enum Agg {
    /// Rows per group.
    Len,
    /// Non-null values of a column per group.
    Count(String),
    /// Sum of a column's non-null values; `to_f64` when the column is cast to `Float64`
    /// first.
    Sum { input: String, to_f64: bool },
    /// Smallest (`max` false) or largest non-null value of an integer column.
    Extreme { input: String, max: bool },
}

/// The aggregations, when every one is of a kind this module computes.
fn parse_aggs(aggs: &[Expr]) -> Option<Vec<Agg>> {
    aggs.iter().map(|a| parse_agg(strip_alias(a))).collect()
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(inner, _) => strip_alias(inner),
        _ => e,
    }
}

fn column_name(e: &Expr) -> Option<String> {
    match strip_alias(e) {
        Expr::Column(name) => Some(name.to_string()),
        _ => None,
    }
}

fn parse_agg(e: &Expr) -> Option<Agg> {
    match e {
        Expr::Len => Some(Agg::Len),
        Expr::Agg(AggExpr::Count {
            input,
            include_nulls: false,
        }) => column_name(input).map(Agg::Count),
        Expr::Agg(AggExpr::Min { input, .. }) => {
            column_name(input).map(|input| Agg::Extreme { input, max: false })
        }
        Expr::Agg(AggExpr::Max { input, .. }) => {
            column_name(input).map(|input| Agg::Extreme { input, max: true })
        }
        Expr::Agg(AggExpr::Sum(input)) => match strip_alias(input) {
            Expr::Column(name) => Some(Agg::Sum {
                input: name.to_string(),
                to_f64: false,
            }),
            Expr::Cast {
                expr,
                dtype: DataTypeExpr::Literal(DataType::Float64),
                options: _,
            } => column_name(expr).map(|input| Agg::Sum {
                input,
                to_f64: true,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// The columns [`group_by`] reads: the keys, then every aggregated column.
pub(crate) fn needed_columns(keys: &[String], aggs: &[Expr]) -> Option<Vec<String>> {
    let mut names = keys.to_vec();
    for agg in parse_aggs(aggs)? {
        let name = match agg {
            Agg::Len => continue,
            Agg::Count(c) | Agg::Sum { input: c, .. } | Agg::Extreme { input: c, .. } => c,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Some(names)
}

/// What [`group_by`] computes for one output column.
enum Output {
    Len,
    Count(String),
    Sum(String, SumKind),
    /// The column's own integer type.
    Extreme(String, bool),
}

/// The columns the direct path writes after the keys, checked against a schema.
struct Plan {
    outputs: Vec<(String, Output)>,
}

/// A plan for `group_by(keys).agg(aggs)` on frames of `schema`, or `None` when the keys,
/// the aggregations or their types are not ones this module computes (see the module
/// docs). Polars' own planning of the same group-by gives the output names and types, and
/// its errors (a missing column, named).
fn plan(schema: &Schema, keys: &[String], aggs: &[Expr]) -> Option<PolarsResult<Plan>> {
    let parsed = parse_aggs(aggs)?;
    if keys.is_empty() || parsed.is_empty() {
        return None;
    }
    let out =
        match crate::groupby::group_by_lazy(PlFrame::empty_with_schema(schema).lazy(), keys, aggs)
            .collect_schema()
        {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
    if out.len() != keys.len() + parsed.len() {
        return None;
    }
    for key in keys {
        if !groupable(schema.get(key)?) {
            return None;
        }
    }
    let mut outputs = Vec::with_capacity(parsed.len());
    for (agg, (name, dtype)) in parsed.into_iter().zip(out.iter().skip(keys.len())) {
        let output = match agg {
            Agg::Len if *dtype == IDX_DTYPE => Output::Len,
            Agg::Count(input) if *dtype == IDX_DTYPE => Output::Count(input),
            Agg::Sum { input, to_f64 } => {
                let kind = sum_kind(schema.get(&input)?, to_f64, dtype)?;
                Output::Sum(input, kind)
            }
            // Integers only: float extremes have NaN rules of their own (which is also why
            // `propagate_nans`, parsed away above, does not matter here).
            Agg::Extreme { input, max } => {
                let from = schema.get(&input)?;
                if !plain_integer(from) || from != dtype {
                    return None;
                }
                Output::Extreme(input, max)
            }
            _ => return None,
        };
        outputs.push((name.to_string(), output));
    }
    Some(Ok(Plan { outputs }))
}

/// Whether [`group_by`] computes `group_by(keys).agg(aggs)` on frames of `schema` (only
/// the columns it reads matter). A group-by polars would refuse to plan is not accepted:
/// polars then reports it before reading anything.
pub(crate) fn accepts(schema: &Schema, keys: &[String], aggs: &[Expr]) -> bool {
    let Some(needed) = needed_columns(keys, aggs) else {
        return false;
    };
    let mut read = Schema::with_capacity(needed.len());
    for name in &needed {
        match schema.get(name) {
            Some(dtype) => {
                read.insert(name.as_str().into(), dtype.clone());
            }
            None => return false,
        }
    }
    matches!(plan(&read, keys, aggs), Some(Ok(_)))
}

/// `group_by(keys).agg(aggs)` on `frame`, or `None` when [`accepts`] says no.
pub(crate) fn group_by(
    frame: &PlFrame,
    keys: &[String],
    aggs: &[Expr],
) -> Option<PolarsResult<PlFrame>> {
    let plan = match plan(frame.schema(), keys, aggs)? {
        Ok(plan) => plan,
        Err(e) => return Some(Err(e)),
    };
    Some(run(frame, keys, &plan))
}

#[cfg(test)]
thread_local! {
    /// Group-bys the direct path ran on this thread (tests see which path a plan took).
    pub(crate) static RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn run(frame: &PlFrame, keys: &[String], plan: &Plan) -> PolarsResult<PlFrame> {
    #[cfg(test)]
    RUNS.with(|r| r.set(r.get() + 1));
    let mut groups: Option<Groups> = None;
    for key in keys {
        let next = key_groups(frame.column(key)?)?;
        groups = Some(match groups {
            None => next,
            Some(prev) => prev.combine(&next),
        });
    }
    let groups = groups.ok_or_else(|| polars_err!(ComputeError: "a group-by needs a key"))?;
    let firsts = IdxCa::from_vec("".into(), groups.first.clone());
    let mut columns: Vec<Column> = Vec::with_capacity(keys.len() + plan.outputs.len());
    for key in keys {
        columns.push(frame.column(key)?.take(&firsts)?);
    }
    for (name, output) in &plan.outputs {
        columns.push(match output {
            Output::Len => {
                let mut counts = vec![0 as IdxSize; groups.len()];
                for &g in &groups.ids {
                    counts[g as usize] += 1;
                }
                IdxCa::from_vec(name.as_str().into(), counts).into_column()
            }
            Output::Count(input) => {
                count_non_null(frame.column(input)?.as_materialized_series(), &groups, name)
            }
            Output::Extreme(input, max) => extreme(
                frame.column(input)?.as_materialized_series(),
                *max,
                &groups,
                name,
            )?,
            Output::Sum(input, kind) => sum(
                frame.column(input)?.as_materialized_series(),
                *kind,
                &groups,
                name,
            )?,
        });
    }
    PlFrame::new(groups.len(), columns)
}

/// The integer types the direct path groups and sums (8 to 64 bits).
fn plain_integer(dtype: &DataType) -> bool {
    matches!(
        dtype,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Key types the direct path groups.
fn groupable(dtype: &DataType) -> bool {
    plain_integer(dtype) || *dtype == DataType::String
}

/// How a sum is accumulated and what it is written as.
#[derive(Clone, Copy, Debug)]
enum SumKind {
    /// Wrapping in i64 (signed inputs), written as `out`.
    Signed(IntOut),
    /// Wrapping in u64 (unsigned inputs), written as `out`.
    Unsigned(IntOut),
    /// In f64 (a `Float64` column, or any numeric column cast to it).
    Float,
}

#[derive(Clone, Copy, Debug)]
enum IntOut {
    I32,
    I64,
    U32,
    U64,
}

/// The sum of a `dtype` column (cast to `Float64` first when `to_f64`) as polars types it
/// `out`, or `None` when the direct path would not give polars' result exactly.
fn sum_kind(dtype: &DataType, to_f64: bool, out: &DataType) -> Option<SumKind> {
    let numeric = plain_integer(dtype) || matches!(dtype, DataType::Float32 | DataType::Float64);
    if to_f64 {
        return (numeric && *out == DataType::Float64).then_some(SumKind::Float);
    }
    let int_out = match out {
        DataType::Int32 => IntOut::I32,
        DataType::Int64 => IntOut::I64,
        DataType::UInt32 => IntOut::U32,
        DataType::UInt64 => IntOut::U64,
        DataType::Float64 if *dtype == DataType::Float64 => return Some(SumKind::Float),
        _ => return None,
    };
    if !plain_integer(dtype) {
        None
    } else if dtype.is_signed_integer() {
        Some(SumKind::Signed(int_out))
    } else if dtype.is_unsigned_integer() {
        Some(SumKind::Unsigned(int_out))
    } else {
        None
    }
}

/// A dense group id per row, in order of first appearance.
struct Groups {
    /// The group of each row.
    ids: Vec<IdxSize>,
    /// The first row of each group.
    first: Vec<IdxSize>,
}

impl Groups {
    fn len(&self) -> usize {
        self.first.len()
    }

    fn with_capacity(rows: usize) -> Groups {
        Groups {
            ids: Vec::with_capacity(rows),
            first: Vec::new(),
        }
    }

    /// Add a row of a new group.
    fn push_new(&mut self) -> IdxSize {
        let g = self.first.len() as IdxSize;
        self.first.push(self.ids.len() as IdxSize);
        self.ids.push(g);
        g
    }

    /// The groups of two keys taken together.
    fn combine(&self, other: &Groups) -> Groups {
        let width = other.len() as u64;
        let combined: Vec<u64> = self
            .ids
            .iter()
            .zip(&other.ids)
            .map(|(&a, &b)| a as u64 * width + b as u64)
            .collect();
        let span = (self.len() as u64).saturating_mul(width);
        int_groups(&combined, None, 0, span.saturating_sub(1))
    }
}

/// Group ids for one key column (of a type [`groupable`] accepts).
fn key_groups(column: &Column) -> PolarsResult<Groups> {
    let series = column.as_materialized_series();
    // Signed values map to u64 in order (the sign bit flipped), so one range works.
    macro_rules! ints {
        ($ca:expr, $to:expr) => {{
            let (values, nulls) = int_keys($ca, $to);
            let (lo, hi) = int_range(&values, nulls.as_deref());
            Ok(int_groups(&values, nulls.as_deref(), lo, hi))
        }};
    }
    let signed = |v: i64| (v as u64) ^ (1 << 63);
    match series.dtype() {
        DataType::Int8 => ints!(series.i8()?, |v: i8| signed(v as i64)),
        DataType::Int16 => ints!(series.i16()?, |v: i16| signed(v as i64)),
        DataType::Int32 => ints!(series.i32()?, |v: i32| signed(v as i64)),
        DataType::Int64 => ints!(series.i64()?, signed),
        DataType::UInt8 => ints!(series.u8()?, |v: u8| v as u64),
        DataType::UInt16 => ints!(series.u16()?, |v: u16| v as u64),
        DataType::UInt32 => ints!(series.u32()?, |v: u32| v as u64),
        DataType::UInt64 => ints!(series.u64()?, |v: u64| v),
        DataType::String => Ok(string_groups(series.str()?)),
        other => polars_bail!(ComputeError: "partita's direct group-by cannot group {other} keys"),
    }
}

/// An integer column's values mapped to u64, and which rows are null (`None` when none
/// is).
fn int_keys<T: PolarsNumericType>(
    ca: &ChunkedArray<T>,
    to: impl Fn(T::Native) -> u64,
) -> (Vec<u64>, Option<Vec<bool>>) {
    let mut values = Vec::with_capacity(ca.len());
    for arr in ca.downcast_iter() {
        values.extend(arr.values().iter().map(|&v| to(v)));
    }
    let nulls = (ca.null_count() > 0).then(|| {
        let mut nulls = Vec::with_capacity(ca.len());
        for arr in ca.downcast_iter() {
            match arr.validity() {
                Some(valid) => nulls.extend(valid.iter().map(|ok| !ok)),
                None => nulls.extend(std::iter::repeat_n(false, arr.len())),
            }
        }
        nulls
    });
    (values, nulls)
}

/// The smallest and largest non-null value; `(1, 0)` (an empty range) when there is none.
fn int_range(values: &[u64], nulls: Option<&[bool]>) -> (u64, u64) {
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    match nulls {
        None => {
            for &v in values {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        Some(nulls) => {
            for (&v, &null) in values.iter().zip(nulls) {
                if !null {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
    }
    if lo > hi { (1, 0) } else { (lo, hi) }
}

/// Dense group ids for integer keys within `lo..=hi` (rows marked in `nulls` form the null
/// group): a direct table when the range is at most about twice the rows, a hash table
/// otherwise.
fn int_groups(values: &[u64], nulls: Option<&[bool]>, lo: u64, hi: u64) -> Groups {
    let rows = values.len();
    let mut groups = Groups::with_capacity(rows);
    let mut null_group: Option<IdxSize> = None;
    let is_null = |i: usize| nulls.is_some_and(|n| n[i]);
    let span = hi.wrapping_sub(lo);
    if hi >= lo && span <= 2 * rows as u64 + 1024 {
        let mut slots = vec![IdxSize::MAX; span as usize + 1];
        for (i, &v) in values.iter().enumerate() {
            if is_null(i) {
                push_null(&mut groups, &mut null_group);
                continue;
            }
            let slot = &mut slots[(v - lo) as usize];
            if *slot == IdxSize::MAX {
                *slot = groups.push_new();
            } else {
                groups.ids.push(*slot);
            }
        }
        return groups;
    }
    if hi < lo {
        // Every key is null.
        for _ in values {
            push_null(&mut groups, &mut null_group);
        }
        return groups;
    }
    let state = FixedState::default();
    let mut table: HashTable<IdxSize> = HashTable::new();
    // The key of each group (0 for the null group, which the table never holds).
    let mut keys: Vec<u64> = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        if is_null(i) {
            push_null(&mut groups, &mut null_group);
            keys.resize(groups.len(), 0);
            continue;
        }
        let hash = state.hash_one(v);
        match table.find(hash, |&g| keys[g as usize] == v) {
            Some(&g) => groups.ids.push(g),
            None => {
                let g = groups.push_new();
                keys.push(v);
                table.insert_unique(hash, g, |&g| state.hash_one(keys[g as usize]));
            }
        }
    }
    groups
}

fn push_null(groups: &mut Groups, null_group: &mut Option<IdxSize>) {
    match *null_group {
        Some(g) => groups.ids.push(g),
        None => *null_group = Some(groups.push_new()),
    }
}

/// Dense group ids for a string column: see the module docs.
fn string_groups(ca: &polars::prelude::StringChunked) -> Groups {
    let state = FixedState::default();
    let mut groups = Groups::with_capacity(ca.len());
    let mut null_group: Option<IdxSize> = None;
    let mut table: HashTable<IdxSize> = HashTable::new();
    // Per group: the key's view (normalized when inline) and its bytes.
    let mut views: Vec<u128> = Vec::new();
    let mut bytes: Vec<&[u8]> = Vec::new();
    for arr in ca.downcast_iter() {
        let valid = arr.validity().filter(|v| v.unset_bits() > 0);
        for (i, view) in arr.views().iter().enumerate() {
            if valid.is_some_and(|v: &Bitmap| !v.get_bit(i)) {
                let before = groups.len();
                push_null(&mut groups, &mut null_group);
                if groups.len() > before {
                    views.push(u128::MAX);
                    bytes.push(&[]);
                }
                continue;
            }
            let (key, hash) = if view.is_inline() {
                let key = inline_key(*view);
                (key, state.hash_one(key))
            } else {
                let value = arr.value(i).as_bytes();
                (view.as_u128(), state.hash_one(value))
            };
            let found = table.find(hash, |&g| {
                let g = g as usize;
                if view.is_inline() {
                    views[g] == key
                } else {
                    // Long strings: same length and prefix (the low 64 bits), then bytes.
                    views[g] as u64 == key as u64 && bytes[g] == arr.value(i).as_bytes()
                }
            });
            match found {
                Some(&g) => groups.ids.push(g),
                None => {
                    let g = groups.push_new();
                    views.push(key);
                    bytes.push(arr.value(i).as_bytes());
                    table.insert_unique(hash, g, |&g| {
                        let g = g as usize;
                        if views[g] as u32 <= View::MAX_INLINE_SIZE {
                            state.hash_one(views[g])
                        } else {
                            state.hash_one(bytes[g])
                        }
                    });
                }
            }
        }
    }
    groups
}

/// An inline view with the bytes past its length zeroed, so equal strings have equal keys
/// whatever a writer left there.
fn inline_key(view: View) -> u128 {
    let len = view.length;
    let raw = view.as_u128();
    if len >= View::MAX_INLINE_SIZE {
        raw
    } else {
        raw & ((1u128 << (32 + 8 * len)) - 1)
    }
}

/// Non-null values per group.
fn count_non_null(values: &Series, groups: &Groups, name: &str) -> Column {
    let mut counts = vec![0 as IdxSize; groups.len()];
    let mut row = 0usize;
    for arr in values.chunks() {
        let n = arr.len();
        let ids = &groups.ids[row..row + n];
        match arr.validity().filter(|v| v.unset_bits() > 0) {
            None => {
                for &g in ids {
                    counts[g as usize] += 1;
                }
            }
            Some(valid) => {
                for (&g, ok) in ids.iter().zip(valid.iter()) {
                    counts[g as usize] += ok as IdxSize;
                }
            }
        }
        row += n;
    }
    IdxCa::from_vec(name.into(), counts).into_column()
}

/// Scatter-add each chunk of `ca`, mapped by `to`, into `acc` by group.
fn scatter<T: PolarsNumericType, A: Copy>(
    ca: &ChunkedArray<T>,
    groups: &Groups,
    acc: &mut [A],
    to: impl Fn(T::Native) -> A,
    add: impl Fn(A, A) -> A,
) {
    let mut row = 0usize;
    for arr in ca.downcast_iter() {
        let n = arr.len();
        let ids = &groups.ids[row..row + n];
        let values = arr.values().as_slice();
        match arr.validity().filter(|v| v.unset_bits() > 0) {
            None => {
                for (&g, &v) in ids.iter().zip(values) {
                    let a = &mut acc[g as usize];
                    *a = add(*a, to(v));
                }
            }
            Some(valid) => {
                for ((&g, &v), ok) in ids.iter().zip(values).zip(valid.iter()) {
                    if ok {
                        let a = &mut acc[g as usize];
                        *a = add(*a, to(v));
                    }
                }
            }
        }
        row += n;
    }
}

/// Per-group sums of `values` as `kind` says, named `name`.
fn sum(values: &Series, kind: SumKind, groups: &Groups, name: &str) -> PolarsResult<Column> {
    let n = groups.len();
    macro_rules! each_int {
        ($series:expr, $acc:expr, $to:ty, $add:expr) => {{
            let s = $series;
            match s.dtype() {
                DataType::Int8 => scatter(s.i8()?, groups, $acc, |v| v as $to, $add),
                DataType::Int16 => scatter(s.i16()?, groups, $acc, |v| v as $to, $add),
                DataType::Int32 => scatter(s.i32()?, groups, $acc, |v| v as $to, $add),
                DataType::Int64 => scatter(s.i64()?, groups, $acc, |v| v as $to, $add),
                DataType::UInt8 => scatter(s.u8()?, groups, $acc, |v| v as $to, $add),
                DataType::UInt16 => scatter(s.u16()?, groups, $acc, |v| v as $to, $add),
                DataType::UInt32 => scatter(s.u32()?, groups, $acc, |v| v as $to, $add),
                DataType::UInt64 => scatter(s.u64()?, groups, $acc, |v| v as $to, $add),
                DataType::Float32 => scatter(s.f32()?, groups, $acc, |v| v as $to, $add),
                DataType::Float64 => scatter(s.f64()?, groups, $acc, |v| v as $to, $add),
                other => polars_bail!(ComputeError: "partita's direct group-by cannot sum {other}"),
            }
        }};
    }
    let series = match kind {
        SumKind::Float => {
            let mut acc = vec![0f64; n];
            each_int!(values, &mut acc, f64, |a: f64, b: f64| a + b);
            Series::new(name.into(), acc)
        }
        SumKind::Signed(out) => {
            let mut acc = vec![0i64; n];
            each_int!(values, &mut acc, i64, i64::wrapping_add);
            int_output(name, acc.into_iter().map(|v| v as u64), out)
        }
        SumKind::Unsigned(out) => {
            let mut acc = vec![0u64; n];
            each_int!(values, &mut acc, u64, u64::wrapping_add);
            int_output(name, acc.into_iter(), out)
        }
    };
    Ok(series.into_column())
}

/// Per-group smallest or largest non-null value of an integer column, in its own type
/// (null for a group with none), named `name`.
fn extreme(values: &Series, max: bool, groups: &Groups, name: &str) -> PolarsResult<Column> {
    fn fold<T: PolarsNumericType>(
        ca: &ChunkedArray<T>,
        groups: &Groups,
        max: bool,
    ) -> Vec<Option<T::Native>>
    where
        T::Native: Ord,
    {
        let mut acc: Vec<Option<T::Native>> = vec![None; groups.len()];
        let mut row = 0usize;
        for arr in ca.downcast_iter() {
            let n = arr.len();
            let ids = &groups.ids[row..row + n];
            for (&g, v) in ids.iter().zip(arr.iter()) {
                if let Some(&v) = v {
                    let a = &mut acc[g as usize];
                    *a = Some(match *a {
                        None => v,
                        Some(a) if max => a.max(v),
                        Some(a) => a.min(v),
                    });
                }
            }
            row += n;
        }
        acc
    }
    let name = name.into();
    let series = match values.dtype() {
        DataType::Int8 => Series::new(name, fold(values.i8()?, groups, max)),
        DataType::Int16 => Series::new(name, fold(values.i16()?, groups, max)),
        DataType::Int32 => Series::new(name, fold(values.i32()?, groups, max)),
        DataType::Int64 => Series::new(name, fold(values.i64()?, groups, max)),
        DataType::UInt8 => Series::new(name, fold(values.u8()?, groups, max)),
        DataType::UInt16 => Series::new(name, fold(values.u16()?, groups, max)),
        DataType::UInt32 => Series::new(name, fold(values.u32()?, groups, max)),
        DataType::UInt64 => Series::new(name, fold(values.u64()?, groups, max)),
        other => {
            polars_bail!(ComputeError: "partita's direct group-by cannot take extremes of {other}")
        }
    };
    Ok(series.into_column())
}

/// 64-bit wrapped sums written as `out` (truncated, as a wrapping sum in that type gives).
fn int_output(name: &str, sums: impl Iterator<Item = u64>, out: IntOut) -> Series {
    let name = name.into();
    match out {
        IntOut::I32 => Series::new(name, sums.map(|v| v as i32).collect::<Vec<_>>()),
        IntOut::I64 => Series::new(name, sums.map(|v| v as i64).collect::<Vec<_>>()),
        IntOut::U32 => Series::new(name, sums.map(|v| v as u32).collect::<Vec<_>>()),
        IntOut::U64 => Series::new(name, sums.collect::<Vec<_>>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{NamedFrom, SortMultipleOptions, col, len};
    use proptest::prelude::*;

    /// Polars' own group-by of the same frame.
    fn reference(frame: &PlFrame, keys: &[String], aggs: &[Expr]) -> PlFrame {
        crate::plan::collect(crate::groupby::group_by_lazy(
            frame.clone().lazy(),
            keys,
            aggs,
        ))
        .unwrap()
    }

    fn sorted(frame: PlFrame, keys: &[String]) -> PlFrame {
        frame
            .sort(
                keys.to_vec(),
                SortMultipleOptions::default().with_nulls_last(true),
            )
            .unwrap()
    }

    /// The direct path's answer equals polars' (sorted by the keys; float sums are of
    /// quarters, so exact in any order).
    fn check(frame: &PlFrame, keys: &[&str], aggs: &[Expr]) {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let direct = group_by(frame, &keys, aggs)
            .expect("the direct path takes these")
            .unwrap();
        let expected = reference(frame, &keys, aggs);
        assert_eq!(direct.schema(), expected.schema());
        let (direct, expected) = (sorted(direct, &keys), sorted(expected, &keys));
        assert!(
            direct.equals_missing(&expected),
            "direct:\n{direct}\npolars:\n{expected}"
        );
    }

    fn aggs() -> Vec<Expr> {
        vec![
            col("a").sum().alias("sa"),
            col("b").sum().alias("sb"),
            col("b").cast(DataType::Float64).sum().alias("fb"),
            col("b").count().alias("nb"),
            col("c").sum(),
            col("a").min().alias("mina"),
            col("b").max().alias("maxb"),
            len(),
        ]
    }

    /// A frame in two chunks, so group ids must carry across chunks.
    fn two_chunks(a: PlFrame, b: PlFrame) -> PlFrame {
        let both = a.height() > 0 && b.height() > 0;
        let mut out = a;
        out.vstack_mut(&b).unwrap();
        assert!(out.first_col_n_chunks() > 1 || !both);
        out
    }

    /// One generated row: integer key, string key, `a`, `b`, `c`.
    type Row = (Option<i64>, Option<String>, i32, Option<i64>, f64);

    fn frame_of(rows: &[Row]) -> PlFrame {
        let k: Vec<Option<i64>> = rows.iter().map(|r| r.0).collect();
        let s: Vec<Option<String>> = rows.iter().map(|r| r.1.clone()).collect();
        let a: Vec<i32> = rows.iter().map(|r| r.2).collect();
        let b: Vec<Option<i64>> = rows.iter().map(|r| r.3).collect();
        let c: Vec<f64> = rows.iter().map(|r| r.4).collect();
        PlFrame::new(
            rows.len(),
            vec![
                Series::new("k".into(), k).into_column(),
                Series::new("s".into(), s).into_column(),
                Series::new("a".into(), a).into_column(),
                Series::new("b".into(), b).into_column(),
                Series::new("c".into(), c).into_column(),
            ],
        )
        .unwrap()
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            prop_oneof![
                4 => (-3i64..4).prop_map(Some),
                1 => Just(None),
                1 => any::<i64>().prop_map(Some),
            ],
            prop_oneof![
                4 => "[ab]{0,2}".prop_map(Some),
                2 => "long key number [0-2]".prop_map(Some),
                1 => Just(None),
            ],
            // Sums that stay within i32: polars' debug build checks overflow.
            -1_000_000i32..1_000_000,
            prop_oneof![3 => (-50i64..50).prop_map(Some), 1 => Just(None)],
            (-400i32..400).prop_map(|q| q as f64 / 4.0),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn same_groups_and_sums_as_polars(
            first in proptest::collection::vec(row(), 0..40),
            second in proptest::collection::vec(row(), 0..40),
        ) {
            let frame = two_chunks(frame_of(&first), frame_of(&second));
            check(&frame, &["k"], &aggs());
            check(&frame, &["s"], &aggs());
            check(&frame, &["s", "k"], &aggs());
            check(&frame, &["k", "s", "b"], &aggs());
            // Keys in one chunk, values in two: group ids are by row, not by chunk.
            let mut keys_whole = frame.clone();
            for key in ["k", "s"] {
                let whole = frame.column(key).unwrap().as_materialized_series().rechunk();
                keys_whole.with_column(whole.into_column()).unwrap();
            }
            check(&keys_whole, &["k"], &aggs());
            check(&keys_whole, &["s", "k"], &aggs());
        }

        #[test]
        fn float_sums_agree_with_polars_up_to_summation_order(
            rows in proptest::collection::vec((0i64..20, -1e6f64..1e6), 0..300),
        ) {
            let k: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let v: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let scale: f64 = v.iter().map(|x| x.abs()).sum::<f64>().max(1.0);
            let frame = polars::prelude::df!("k" => k, "v" => v).unwrap();
            let keys = ["k".to_string()];
            let aggs = [col("v").sum().alias("s"), col("v").cast(DataType::Float64).sum().alias("f")];
            let direct = sorted(group_by(&frame, &keys, &aggs).unwrap().unwrap(), &keys);
            let expected = sorted(reference(&frame, &keys, &aggs), &keys);
            prop_assert_eq!(direct.schema(), expected.schema());
            prop_assert_eq!(direct.column("k").unwrap(), expected.column("k").unwrap());
            for name in ["s", "f"] {
                let (a, b) = (direct.column(name).unwrap().f64().unwrap(), expected.column(name).unwrap().f64().unwrap());
                for (x, y) in a.into_no_null_iter().zip(b.into_no_null_iter()) {
                    prop_assert!((x - y).abs() <= 1e-12 * scale, "{} vs {}", x, y);
                }
            }
        }
    }

    /// The integer types the direct path groups and sums.
    fn integer_types() -> [DataType; 8] {
        [
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt8,
            DataType::UInt16,
            DataType::UInt32,
            DataType::UInt64,
        ]
    }

    #[test]
    fn every_integer_key_type_and_wide_ranges() {
        let values: Vec<Option<i64>> = vec![Some(5), None, Some(-7), Some(5), Some(100), None];
        let base = Series::new("k".into(), values);
        let v = Series::new("v".into(), vec![1i64, 2, 3, 4, 5, 6]);
        for dtype in integer_types() {
            // Unsigned types cannot hold -7: a non-strict cast makes it null.
            let k = base.cast(&dtype).unwrap();
            let frame = PlFrame::new(6, vec![k.into_column(), v.clone().into_column()]).unwrap();
            check(&frame, &["k"], &[col("v").sum(), len()]);
        }
        // A range far wider than the rows hashes instead of indexing.
        let k = Series::new("k".into(), vec![i64::MIN, i64::MAX, 0, i64::MAX, i64::MIN]);
        let v = Series::new("v".into(), vec![1u16, 2, 3, 4, 5]);
        let frame = PlFrame::new(5, vec![k.into_column(), v.into_column()]).unwrap();
        check(
            &frame,
            &["k"],
            &[col("v").sum(), col("v").count().alias("n")],
        );
        // Keys that are all null.
        let k = Series::new("k".into(), vec![None::<i32>, None]);
        let v = Series::new("v".into(), vec![1u64, 2]);
        let frame = PlFrame::new(2, vec![k.into_column(), v.into_column()]).unwrap();
        check(&frame, &["k"], &[col("v").sum(), len()]);
    }

    #[test]
    fn sums_of_every_numeric_type_and_empty_frames() {
        // Negative values too (unsigned casts make them null): sign extension matters.
        let base = Series::new(
            "v".into(),
            vec![Some(-1i64), None, Some(3), Some(-4), Some(5)],
        );
        let k = Series::new("k".into(), vec!["a", "b", "a", "b", "a"]);
        for dtype in integer_types().into_iter().chain([DataType::Float64]) {
            let v = base.cast(&dtype).unwrap();
            let frame = PlFrame::new(5, vec![k.clone().into_column(), v.into_column()]).unwrap();
            check(
                &frame,
                &["k"],
                &[
                    col("v").sum().alias("s"),
                    col("v").cast(DataType::Float64).sum().alias("f"),
                    col("v").count().alias("n"),
                ],
            );
            if dtype != DataType::Float64 {
                check(
                    &frame,
                    &["k"],
                    &[col("v").min().alias("lo"), col("v").max().alias("hi")],
                );
            }
        }
        // A Float32 column: its own sum is polars', its sum as Float64 the direct path's.
        let v = base.cast(&DataType::Float32).unwrap();
        let frame = PlFrame::new(5, vec![k.clone().into_column(), v.into_column()]).unwrap();
        check(&frame, &["k"], &[col("v").cast(DataType::Float64).sum()]);
        // A column of nulls only.
        let v = Series::new_null("v".into(), 5)
            .cast(&DataType::Int32)
            .unwrap();
        let frame = PlFrame::new(5, vec![k.into_column(), v.into_column()]).unwrap();
        check(
            &frame,
            &["k"],
            &[col("v").sum().alias("s"), col("v").count()],
        );
        // No rows, several keys.
        let frame = frame_of(&[]);
        check(&frame, &["s", "k"], &aggs());
    }

    #[test]
    fn a_plan_runs_the_steps_around_a_direct_group_by() {
        let frame = frame_of(&[
            (Some(1), Some("x".into()), 5, Some(2), 0.5),
            (Some(2), Some("y".into()), 6, None, 1.5),
            (Some(1), Some("x".into()), 7, Some(4), 2.5),
            (None, None, 8, Some(6), 3.5),
        ]);
        let keys = vec!["s".to_string()];
        // Steps before the group-by that change the answer if run twice or not at all.
        let steps: Vec<crate::plan::Step> = vec![
            crate::plan::Step::Filter(col("a").gt(polars::prelude::lit(5))),
            crate::plan::Step::WithColumns(vec![(col("b") * polars::prelude::lit(3)).alias("b")]),
            crate::plan::Step::GroupBy {
                keys: keys.clone(),
                aggs: vec![col("b").sum().alias("t"), len()],
            },
            crate::plan::Step::Select(vec![col("s"), (col("t") * col("len")).alias("w")]),
            crate::plan::Step::Sort {
                by: keys.clone(),
                descending: vec![false],
                nulls_last: true,
            },
        ];
        // The direct path takes this group-by (so the test covers the split plan).
        let aggs = [col("b").sum().alias("t"), len()];
        assert!(accepts(frame.schema(), &keys, &aggs));
        let plan = crate::plan::PartitionPlan {
            scan: None,
            steps: steps.clone().into(),
        };
        let before = RUNS.with(|r| r.get());
        let out = if crate::plan::direct_group_by() {
            let out = plan.run(Some(&frame)).unwrap();
            assert_eq!(
                RUNS.with(|r| r.get()),
                before + 1,
                "the direct path ran once"
            );
            out
        } else {
            plan.run(Some(&frame)).unwrap()
        };
        let expected = crate::plan::collect(
            steps
                .iter()
                .fold(frame.clone().lazy(), |lf, step| step.apply(lf)),
        )
        .unwrap();
        assert!(out.equals_missing(&expected), "{out}\n{expected}");
        assert_eq!(out.height(), 3);
    }

    #[test]
    fn extremes_at_the_bounds_of_every_integer_type() {
        let k = Series::new("k".into(), vec!["lo", "hi", "lo", "hi", "none", "none"]);
        // Each type's smallest and largest value; the group "none" holds only nulls.
        macro_rules! bounds {
            ($t:ty) => {
                Series::new(
                    "v".into(),
                    vec![
                        Some(<$t>::MIN),
                        Some(<$t>::MAX),
                        Some(0 as $t),
                        Some(<$t>::MIN),
                        None,
                        None,
                    ],
                )
            };
        }
        let columns = [
            bounds!(i8),
            bounds!(i16),
            bounds!(i32),
            bounds!(i64),
            bounds!(u8),
            bounds!(u16),
            bounds!(u32),
            bounds!(u64),
        ];
        for v in columns {
            assert!(plain_integer(v.dtype()));
            let frame = PlFrame::new(6, vec![k.clone().into_column(), v.into_column()]).unwrap();
            check(
                &frame,
                &["k"],
                &[col("v").min().alias("lo"), col("v").max().alias("hi")],
            );
        }
    }

    #[test]
    fn integer_sums_wrap_in_their_type_as_polars_does() {
        // Polars' release build wraps (`2^31 - 1 + 5` sums to `-2^31 + 4` as Int32); its
        // debug build panics, so the expected sums are written out.
        let k = Series::new("k".into(), vec![1i32, 1, 1, 2]);
        let v = Series::new("v".into(), vec![i32::MAX, 5, 7, i32::MIN]);
        let u = Series::new("u".into(), vec![u32::MAX, 2, 3, 0]);
        let w = Series::new("w".into(), vec![i64::MAX, 1, 0, 0]);
        let frame = PlFrame::new(
            4,
            vec![
                k.into_column(),
                v.into_column(),
                u.into_column(),
                w.into_column(),
            ],
        )
        .unwrap();
        let keys = ["k".to_string()];
        let out = group_by(
            &frame,
            &keys,
            &[col("v").sum(), col("u").sum(), col("w").sum()],
        )
        .unwrap()
        .unwrap();
        let expected = polars::prelude::df!(
            "k" => [1i32, 2],
            "v" => [i32::MAX.wrapping_add(12), i32::MIN],
            "u" => [u32::MAX.wrapping_add(5), 0],
            "w" => [i64::MIN, 0]
        )
        .unwrap();
        assert_eq!(out.schema(), expected.schema());
        assert!(out.equals_missing(&expected), "{out}");
    }

    #[test]
    fn other_aggregations_and_types_are_left_to_polars() {
        let frame = polars::prelude::df!(
            "k" => [1i64, 2], "f" => [1.0f32, 2.0], "b" => [true, false], "v" => [1i64, 2]
        )
        .unwrap();
        let keys = |k: &str| vec![k.to_string()];
        // Float extremes (NaN rules) are polars'.
        assert!(group_by(&frame, &keys("k"), &[col("f").max()]).is_none());
        // A Float32 sum, a sum of booleans, a mean, a float key.
        assert!(group_by(&frame, &keys("k"), &[col("f").sum()]).is_none());
        assert!(group_by(&frame, &keys("k"), &[col("b").sum()]).is_none());
        assert!(group_by(&frame, &keys("k"), &[col("v").mean()]).is_none());
        assert!(group_by(&frame, &keys("f"), &[col("v").sum()]).is_none());
        // A missing column is polars' error, naming it.
        let err = group_by(&frame, &keys("k"), &[col("nope").sum()])
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        // `aggregate` still answers them, through polars.
        let out = crate::groupby::aggregate(&frame, &keys("k"), &[col("v").mean()]).unwrap();
        assert_eq!(out.height(), 2);
    }

    #[test]
    fn inline_keys_ignore_bytes_past_their_length() {
        let a = View::new_inline(b"abc").as_u128();
        let dirty = a | (0xFFu128 << 120);
        let dirty: View = View {
            length: 3,
            prefix: (dirty >> 32) as u32,
            buffer_idx: (dirty >> 64) as u32,
            offset: (dirty >> 96) as u32,
        };
        assert_eq!(inline_key(dirty), a);
        assert_eq!(
            inline_key(View::new_inline(b"abcdefghijkl")),
            View::new_inline(b"abcdefghijkl").as_u128()
        );
    }
}
