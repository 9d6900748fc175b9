//! `describe`: summary statistics of the numeric columns, in one pass over the data.
//!
//! Key decision: each partition reduces to a small partial (per numeric column: count, null
//! count, mean, M2, min, max, and a sorted sample of at most [`SAMPLES_PER_PARTITION`]
//! values, each weighing the rows it stands for), and one task merges the partials: Chan's
//! merge for the mean and standard deviation, and the percentiles read off the merged
//! weighted sample as polars' `nearest` quantile would read them off the sorted column.
//! Count, nulls, mean, std, min and max are exact; the percentiles are exact while each
//! partition has at most [`SAMPLES_PER_PARTITION`] non-null values in a column, and
//! otherwise within about `1 / SAMPLES_PER_PARTITION` of the true rank (Dask's `describe`
//! approximates them too).

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Collection, Error, Key, Layer, Op, Result, Task, Value, ValueList};
use polars::prelude::{Column, DataFrame as PlFrame, DataType, NamedFrom, SchemaRef, Series};
use serde::{Deserialize, Serialize};

use crate::frame::{DataFrame, partition_key};
use crate::partition::Partition;
use crate::polars_error::from_polars;

/// Values kept per partition and column for the percentiles.
pub const SAMPLES_PER_PARTITION: usize = 4096;

/// The percentiles `describe` reports.
const PERCENTILES: [(&str, f64); 3] = [("25%", 0.25), ("50%", 0.5), ("75%", 0.75)];

/// One column's partial: moments, extremes and a weighted sorted sample.
#[derive(Debug, Default, Clone)]
struct ColumnPartial {
    count: f64,
    nulls: f64,
    mean: f64,
    m2: f64,
    min: Option<f64>,
    max: Option<f64>,
    /// (value, weight), sorted by value.
    sample: Vec<(f64, f64)>,
}

impl ColumnPartial {
    fn of(column: &Column) -> Result<ColumnPartial> {
        let values = column
            .cast(&DataType::Float64)
            .map_err(|e| from_polars(e, &format!("describing column {:?}", column.name())))?;
        let values = values
            .f64()
            .map_err(|e| from_polars(e, "describe"))?
            .clone();
        let nulls = values.null_count() as f64;
        let mut sorted: Vec<f64> = values.iter().flatten().collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mut partial = ColumnPartial {
            count: n as f64,
            nulls,
            ..ColumnPartial::default()
        };
        if n == 0 {
            return Ok(partial);
        }
        // Two-pass moments over the partition: stable, and exact enough to merge.
        let mean = sorted.iter().sum::<f64>() / n as f64;
        partial.mean = mean;
        partial.m2 = sorted.iter().map(|v| (v - mean) * (v - mean)).sum();
        partial.min = sorted.first().copied();
        partial.max = sorted.last().copied();
        let k = n.min(SAMPLES_PER_PARTITION);
        let weight = n as f64 / k as f64;
        partial.sample = (0..k)
            .map(|i| {
                (
                    sorted[if k == n { i } else { (2 * i + 1) * n / (2 * k) }],
                    weight,
                )
            })
            .collect();
        Ok(partial)
    }

    /// Chan's merge of two partials; samples are concatenated (sorted later).
    fn merge(&mut self, other: ColumnPartial) {
        let n = self.count + other.count;
        if other.count > 0.0 {
            let delta = other.mean - self.mean;
            self.mean += delta * other.count / n;
            self.m2 += other.m2 + delta * delta * self.count * other.count / n;
        }
        self.count = n;
        self.nulls += other.nulls;
        self.min = min_option(self.min, other.min, f64::min);
        self.max = min_option(self.max, other.max, f64::max);
        self.sample.extend(other.sample);
    }

    /// Polars' `nearest` quantile of the (weighted) sample.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: f64 = self.sample.iter().map(|(_, w)| w).sum();
        if self.sample.is_empty() {
            return None;
        }
        let target = ((total - 1.0).max(0.0) * q).round();
        let mut start = 0.0;
        for &(value, weight) in &self.sample {
            if target < start + weight {
                return Some(value);
            }
            start += weight;
        }
        self.sample.last().map(|(v, _)| *v)
    }
}

fn min_option(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Partial of one partition: a frame with one row per sample value and the moments
/// repeated (long format, so it travels as any partition does).
#[derive(Debug, Serialize, Deserialize)]
struct DescribePartial {
    columns: Vec<String>,
}

const PARTIAL_FIELDS: [&str; 6] = ["count", "nulls", "mean", "m2", "min", "max"];

#[typetag::serde(name = "frame-describe-partial")]
impl Op for DescribePartial {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-describe-partial", inputs, 1)?;
        let frame = Partition::from_value(&inputs[0])?;
        let mut out = Vec::with_capacity(self.columns.len());
        for name in &self.columns {
            let column = frame.column(name).map_err(|e| from_polars(e, "describe"))?;
            let p = ColumnPartial::of(column)?;
            let moments = [p.count, p.nulls, p.mean, p.m2]
                .into_iter()
                .map(Some)
                .chain([p.min, p.max]);
            let mut cols: Vec<Column> = PARTIAL_FIELDS
                .iter()
                .zip(moments)
                .map(|(field, v)| Column::new((*field).into(), [v]))
                .collect();
            let (values, weights): (Vec<f64>, Vec<f64>) = p.sample.into_iter().unzip();
            let stats = PlFrame::new(1, std::mem::take(&mut cols))
                .map_err(|e| from_polars(e, "describe"))?;
            let sample = PlFrame::new(
                values.len(),
                vec![
                    Column::new("value".into(), values),
                    Column::new("weight".into(), weights),
                ],
            )
            .map_err(|e| from_polars(e, "describe"))?;
            out.push(Partition::value(stats));
            out.push(Partition::value(sample));
        }
        Ok(Value::new(ValueList(out)))
    }
    fn name(&self) -> &str {
        "frame-describe-partial"
    }
}

fn read_partial(stats: &PlFrame, sample: &PlFrame) -> Result<ColumnPartial> {
    let field = |name: &str| -> Result<Option<f64>> {
        stats
            .column(name)
            .and_then(|c| c.f64().map(|c| c.get(0)))
            .map_err(|e| from_polars(e, "reading a describe partial"))
    };
    let f64s = |name: &str| -> Result<Vec<f64>> {
        sample
            .column(name)
            .and_then(|c| c.f64().map(|c| c.into_no_null_iter().collect()))
            .map_err(|e| from_polars(e, "reading a describe partial"))
    };
    Ok(ColumnPartial {
        count: field("count")?.unwrap_or(0.0),
        nulls: field("nulls")?.unwrap_or(0.0),
        mean: field("mean")?.unwrap_or(0.0),
        m2: field("m2")?.unwrap_or(0.0),
        min: field("min")?,
        max: field("max")?,
        sample: f64s("value")?.into_iter().zip(f64s("weight")?).collect(),
    })
}

/// Merge every partition's partial into the `describe` frame.
#[derive(Debug, Serialize, Deserialize)]
struct DescribeMerge {
    columns: Vec<String>,
}

#[typetag::serde(name = "frame-describe-merge")]
impl Op for DescribeMerge {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut merged = vec![ColumnPartial::default(); self.columns.len()];
        for v in inputs {
            let parts = v.get::<ValueList>()?;
            if parts.0.len() != 2 * self.columns.len() {
                return Err(Error::Internal(format!(
                    "a describe partial has {} parts for {} columns",
                    parts.0.len(),
                    self.columns.len()
                )));
            }
            for (c, pair) in parts.0.chunks(2).enumerate() {
                let stats = Partition::from_value(&pair[0])?;
                let sample = Partition::from_value(&pair[1])?;
                merged[c].merge(read_partial(stats, sample)?);
            }
        }
        let mut statistic = vec!["count", "null_count", "mean", "std", "min"];
        statistic.extend(PERCENTILES.iter().map(|(name, _)| *name));
        statistic.push("max");
        let mut columns = vec![Column::new("statistic".into(), statistic)];
        for (name, mut p) in self.columns.iter().zip(merged) {
            p.sample.sort_by(|a, b| a.0.total_cmp(&b.0));
            let std = (p.count > 1.0).then(|| (p.m2 / (p.count - 1.0)).sqrt());
            let mean = (p.count > 0.0).then_some(p.mean);
            let mut values = vec![Some(p.count), Some(p.nulls), mean, std, p.min];
            values.extend(PERCENTILES.iter().map(|(_, q)| p.quantile(*q)));
            values.push(p.max);
            columns.push(Series::new(name.as_str().into(), values).into());
        }
        let out = PlFrame::new(3 + 3 + PERCENTILES.len(), columns)
            .map_err(|e| from_polars(e, "assembling describe"))?;
        Ok(Partition::value(out))
    }
    fn name(&self) -> &str {
        "frame-describe-merge"
    }
}

impl DataFrame {
    /// Summary statistics of the numeric columns, like polars' (and Dask's) `describe`: a
    /// one-partition frame with a `statistic` column (count, null_count, mean, std, min, 25%,
    /// 50%, 75%, max) and one `f64` column per numeric column. See the module docs for the
    /// percentiles' accuracy.
    pub fn describe(&self) -> Result<DataFrame> {
        let columns: Vec<String> = self
            .schema()
            .iter()
            .filter(|(_, dtype)| dtype.is_primitive_numeric())
            .map(|(name, _)| name.to_string())
            .collect();
        if columns.is_empty() {
            return Err(Error::Schema(format!(
                "describe needs a numeric column; the columns are {:?}",
                self.columns()
            )));
        }
        let numeric = self.select_columns(&columns)?;
        let partial_name = Key::unique_name("describe-partial");
        let op: Arc<dyn Op> = Arc::new(DescribePartial {
            columns: columns.clone(),
        });
        let mut tasks: Vec<Task> = (0..numeric.npartitions())
            .map(|i| {
                Task::new(
                    partition_key(&partial_name, i),
                    Arc::clone(&op),
                    vec![numeric.partition_key(i)],
                )
            })
            .collect();
        let partials = tasks.iter().map(|t| t.key.clone()).collect();
        let name = Key::unique_name("describe");
        tasks.push(Task::new(
            partition_key(&name, 0),
            Arc::new(DescribeMerge {
                columns: columns.clone(),
            }),
            partials,
        ));
        let mut schema = polars::prelude::Schema::with_capacity(columns.len() + 1);
        schema.insert("statistic".into(), DataType::String);
        for c in &columns {
            schema.insert(c.as_str().into(), DataType::Float64);
        }
        let schema: SchemaRef = Arc::new(schema);
        let layer = Layer::new(Arc::clone(&name), tasks, vec![Arc::clone(numeric.layer())]);
        DataFrame::from_layer(name, layer, 1, schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_quantiles_of_an_exact_sample_match_polars_rule() {
        let p = ColumnPartial {
            sample: (0..10).map(|v| (v as f64, 1.0)).collect(),
            ..ColumnPartial::default()
        };
        // round((10 - 1) * q): 2.25 -> 2, 4.5 -> 5 (half away from zero), 6.75 -> 7.
        assert_eq!(p.quantile(0.25), Some(2.0));
        assert_eq!(p.quantile(0.5), Some(5.0));
        assert_eq!(p.quantile(0.75), Some(7.0));
    }
}
