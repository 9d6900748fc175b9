//! Spill files: a worker's value on disk while memory is short.
//!
//! Key decision: a spill file holds the value's *split* encoding ([`Value::encode_split`]),
//! the same head and body the wire sends, so spilling never joins a value into one fresh
//! buffer first (which, for a large chunk, would need the value's size again in memory
//! exactly when memory is short) and reading it back puts the body straight into 8-byte
//! words the codec keeps ([`Value::decode_split`]: an array's elements are not copied
//! again). Layout: `[magic "PTSPILL1"][head length: u64 LE][head][body]`; the body is the
//! rest of the file. Files are written to a temporary name and renamed, so a file with the
//! final name is complete; one that is damaged anyway (truncated, or not a spill file) is an
//! error naming it, not a panic or a wrong value.

use std::io::{Read, Write};
use std::path::Path;

use partita_core::{Error, Result, Value};

const MAGIC: &[u8; 8] = b"PTSPILL1";

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write `value` to `path` (through `path` with extension `tmp`, then a rename).
pub fn write(path: &Path, value: &Value) -> Result<()> {
    let (head, parts) = value.encode_split()?;
    let tmp = path.with_extension("tmp");
    let io = io_error(path);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        let mut prefix = Vec::with_capacity(16 + head.len());
        prefix.extend_from_slice(MAGIC);
        prefix.extend_from_slice(&(head.len() as u64).to_le_bytes());
        prefix.extend_from_slice(&head);
        file.write_all(&prefix)?;
        for part in &parts {
            file.write_all(part)?;
        }
        file.flush()
    })();
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io(e))
        }
    }
}

/// Read back a value [`write`] put in `path`.
pub fn read(path: &Path) -> Result<Value> {
    let io = io_error(path);
    let bad =
        |fault: String| Error::Codec(format!("spill file {} is damaged: {fault}", path.display()));
    let mut file = std::fs::File::open(path).map_err(&io)?;
    let len = file.metadata().map_err(&io)?.len();
    let mut prefix = [0u8; 16];
    file.read_exact(&mut prefix)
        .map_err(|_| bad(format!("{len} bytes, shorter than its prefix")))?;
    if &prefix[..8] != MAGIC {
        return Err(bad("it does not start like a spill file".into()));
    }
    let head_len = u64::from_le_bytes(prefix[8..].try_into().expect("8 bytes"));
    let Some(body_len) = (len - 16).checked_sub(head_len) else {
        return Err(bad(format!(
            "a head of {head_len} bytes in {} bytes",
            len - 16
        )));
    };
    let (head_len, body_len) = match (usize::try_from(head_len), usize::try_from(body_len)) {
        (Ok(h), Ok(b)) => (h, b),
        _ => return Err(bad(format!("{len} bytes do not fit in memory"))),
    };
    let mut head = vec![0u8; head_len];
    file.read_exact(&mut head).map_err(&io)?;
    let mut words: Vec<u64> = bytemuck::allocation::try_zeroed_slice_box(body_len.div_ceil(8))
        .map_err(|()| bad(format!("cannot hold a body of {body_len} bytes")))?
        .into_vec();
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    file.read_exact(&mut bytes[..body_len]).map_err(&io)?;
    Value::decode_split(head.into(), words, body_len).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use partita_array::Chunk;

    fn chunk() -> Value {
        let a = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[3, 5]), |i| {
            (i[0] * 10 + i[1]) as f64 + 0.5
        });
        Value::new(Chunk::new(a))
    }

    #[test]
    fn values_round_trip_through_spill_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.value");
        let v = chunk();
        write(&path, &v).unwrap();
        let got = read(&path).unwrap();
        assert_eq!(got.get::<Chunk>().unwrap(), v.get::<Chunk>().unwrap());
        // A value without a split body (a string) too; nothing is left but the file.
        let s = Value::new("spilled".to_string());
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap().get::<String>().unwrap(), "spilled");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn damaged_spill_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("7.value");
        write(&path, &chunk()).unwrap();
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 5, 15, 16, 20, whole.len() - 8, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains("7.value"), "cut at {cut}: {err}");
        }
        let mut other = whole.clone();
        other[0] = b'X';
        std::fs::write(&path, &other).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("does not start like a spill file"), "{err}");
        // A head length beyond the file.
        let mut long = whole.clone();
        long[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &long).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("a head of 18446744073709551615 bytes"),
            "{err}"
        );
        let err = read(&dir.path().join("missing.value"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.value"), "{err}");
    }
}
