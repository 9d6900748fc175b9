//! Element types and NumPy-style promotion.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    /// `bool`
    Bool,
    /// `u8`
    U8,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl DType {
    /// All dtypes, in promotion order.
    pub const ALL: [DType; 6] = [
        DType::Bool,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::F32,
        DType::F64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 => 1,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// NumPy's name for it.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// Parse NumPy-style names (`"float64"`, `"f8"`, `"int32"`, `"bool"`, ...).
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "bool" | "bool_" | "?" => DType::Bool,
            "uint8" | "u1" | "u8" => DType::U8,
            "int32" | "i4" | "i32" => DType::I32,
            "int64" | "i8" | "i64" | "int" => DType::I64,
            "float32" | "f4" | "f32" => DType::F32,
            "float64" | "f8" | "f64" | "float" => DType::F64,
            _ => return None,
        })
    }

    /// Floating point?
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Integer (not bool)?
    pub fn is_int(self) -> bool {
        matches!(self, DType::U8 | DType::I32 | DType::I64)
    }

    /// The type both operands of a binary operation are cast to (NumPy's `result_type` for
    /// arrays of these dtypes): the larger kind wins; integers mixed with `f32` give `f64`
    /// unless the integer is `u8`; `u8` with signed integers gives the signed one.
    pub fn promote(a: DType, b: DType) -> DType {
        use DType::*;
        match (a.max(b), a.min(b)) {
            (F32, I32 | I64) => F64,
            (hi, _) => hi,
        }
    }

    /// The dtype that true division and float math functions produce from this one.
    pub fn float_result(self) -> DType {
        match self {
            DType::F32 => DType::F32,
            _ => DType::F64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::DType::*;
    use super::*;

    #[test]
    fn promotion_follows_numpy() {
        // numpy.result_type for each pair, written out.
        let cases = [
            (Bool, Bool, Bool),
            (Bool, U8, U8),
            (U8, I32, I32),
            (I32, I64, I64),
            (I64, F32, F64),
            (I32, F32, F64),
            (U8, F32, F32),
            (Bool, F32, F32),
            (F32, F64, F64),
            (I64, F64, F64),
        ];
        for (a, b, want) in cases {
            assert_eq!(DType::promote(a, b), want, "{a} with {b}");
            assert_eq!(DType::promote(b, a), want, "{b} with {a}");
        }
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::parse("complex128"), None);
    }
}
