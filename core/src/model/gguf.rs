//! A reader of GGUF files (versions 2 and 3, little-endian), the single-file
//! format of llama.cpp: a header of typed key/value metadata, a table of
//! tensors, and the tensor data, all read from one memory map.
//!
//! Nothing a file says is trusted: every count and length is checked against
//! the bytes that are really there before anything is allocated, and every
//! tensor's data is checked to lie inside the file.

use crate::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// `GGUF` read as a little-endian u32.
const MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal in GGUF; deeper nesting than this is taken as corruption.
const MAX_ARRAY_DEPTH: u32 = 8;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, from any integer type (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x as u64),
            MetaValue::U16(x) => Some(x as u64),
            MetaValue::U32(x) => Some(x as u64),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, from any integer type that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(x) => Some(x as i64),
            MetaValue::U16(x) => Some(x as i64),
            MetaValue::U32(x) => Some(x as i64),
            MetaValue::U64(x) => i64::try_from(x).ok(),
            MetaValue::I8(x) => Some(x as i64),
            MetaValue::I16(x) => Some(x as i64),
            MetaValue::I32(x) => Some(x as i64),
            MetaValue::I64(x) => Some(x),
            _ => None,
        }
    }

    /// The value as a float, from f32 or f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => Some(x as f64),
            MetaValue::F64(x) => Some(x),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F32(_) => "float32",
            MetaValue::F64(_) => "float64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

macro_rules! ggml_types {
    ($($name:ident = $num:literal, $block:literal, $bytes:literal;)*) => {
        /// Element types of ggml tensors, numbered as ggml numbers them.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($name = $num,)*
        }

        impl GgmlType {
            /// The type with ggml number `n`, if there is one.
            pub fn from_u32(n: u32) -> Option<GgmlType> {
                match n {
                    $($num => Some(GgmlType::$name),)*
                    _ => None,
                }
            }

            /// Elements per block (1 for plain types).
            pub fn block_size(self) -> usize {
                match self {
                    $(GgmlType::$name => $block,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self {
                    $(GgmlType::$name => $bytes,)*
                }
            }

            /// The name ggml gives the type (`Q4_1`, `F32`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$name => stringify!($name),)*
                }
            }
        }
    };
}

// Numbers, block sizes and block bytes as in ggml.h / gguf-py's GGML_QUANT_SIZES
// (QK_K = 256). Numbers 4, 5, 31-33 and 36-38 belong to types ggml has removed.
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 40;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
    MXFP4 = 39, 32, 17;
    NVFP4 = 40, 64, 36;
    Q1_0 = 41, 128, 18;
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major shape, outermost dimension first (ggml's `ne` reversed):
    /// a linear layer stored with `ne = [in, out]` has shape `[out, in]`.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data.
    pub nbytes: usize,
}

impl GgufTensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: its metadata and tensor table, with the data mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    index: HashMap<String, usize>,
    data: Backing,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::model(
                path.display(),
                format!("file is {len} bytes, too short to be a GGUF file (a GGUF header alone is 24 bytes)"),
            ));
        }
        // SAFETY: the map is only read. As with every memory-mapped file, another
        // process truncating or rewriting the file while it is mapped is undefined;
        // model files are not expected to change under a running server.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), Backing::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory; `path` only names it in messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(path.into(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, data: Backing) -> Result<GgufFile> {
        let header = parse_header(&path, data.bytes())?;
        let mut index = HashMap::with_capacity(header.tensors.len());
        for (i, t) in header.tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(Error::model(
                    path.display(),
                    format!("tensor {:?} appears twice in the tensor table", t.name),
                ));
            }
        }
        Ok(GgufFile {
            path,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
            index,
            data,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key)?.as_str()
    }

    /// An integer of any type, as u64 (`None` when absent, negative or not an integer).
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.meta(key)?.as_u64()
    }

    /// An f32 or f64, as f32.
    pub fn meta_f32(&self, key: &str) -> Option<f32> {
        self.meta(key)?.as_f64().map(|x| x as f32)
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        self.meta(key)?.as_bool()
    }

    pub fn meta_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.meta(key)?.as_array()
    }

    /// An array of strings (`None` when absent, not an array, or holding anything but strings).
    pub fn meta_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.meta_array(key)?
            .iter()
            .map(MetaValue::as_str)
            .collect()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.meta_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let bytes = self.bytes();
        info.offset
            .checked_add(info.nbytes)
            .and_then(|end| bytes.get(info.offset..end))
            .ok_or_else(|| {
                Error::model(
                    self.path.display(),
                    format!(
                        "tensor {} claims bytes {}..+{} but the file has {} bytes",
                        info.name,
                        info.offset,
                        info.nbytes,
                        bytes.len()
                    ),
                )
            })
    }

    /// A tensor's values widened to f32 (see `gguf_quant` for the types this can read).
    pub fn dequantize(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let raw = self.tensor_bytes(info)?;
        super::gguf_quant::dequantize(&info.name, info.ggml_type, raw, info.numel()).map_err(|e| {
            match e {
                Error::Model { message, .. } => Error::model(self.path.display(), message),
                other => other,
            }
        })
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: usize,
    data_offset: usize,
}

/// A cursor over the file that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl fmt::Display) -> Error {
        Error::model(
            self.path.display(),
            format!("corrupt GGUF file (at byte {}): {message}", self.pos),
        )
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: {what} needs {n} bytes, {} are left",
                    self.remaining()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count or length that must fit in usize.
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| self.err(format!("{what} {n} does not fit in memory")))
    }

    fn bytes_str(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.len(what)?;
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what} claims {n} bytes but only {} are left",
                self.remaining()
            )));
        }
        self.take(n, what)
    }

    /// A string that must be UTF-8 (keys and tensor names).
    fn strict_string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let b = self.bytes_str(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            Error::model(
                self.path.display(),
                format!("corrupt GGUF file (at byte {start}): {what} is not valid UTF-8"),
            )
        })
    }

    fn value(&mut self, ty: u32, depth: u32, key: &str) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(key)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(self.err(format!("metadata {key:?}: bool byte is {b}, not 0 or 1")))
                }
            },
            8 => {
                let b = self.bytes_str(key)?;
                // Strings should be UTF-8; keep what a stray invalid byte cannot corrupt.
                MetaValue::String(match std::str::from_utf8(b) {
                    Ok(s) => s.to_owned(),
                    Err(_) => String::from_utf8_lossy(b).into_owned(),
                })
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "metadata {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_ty = self.u32(key)?;
                let min = min_value_size(elem_ty).ok_or_else(|| {
                    self.err(format!(
                        "metadata {key:?}: unknown array element type {elem_ty}"
                    ))
                })?;
                let n = self.len(key)?;
                if n > self.remaining() / min {
                    return Err(self.err(format!(
                        "metadata {key:?}: array claims {n} elements but only {} bytes are left",
                        self.remaining()
                    )));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem_ty, depth + 1, key)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(key)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.err(format!("metadata {key:?}: unknown value type {other}"))),
        })
    }
}

/// The fewest bytes a value of GGUF type `ty` can take.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.array::<4>("magic")?;
    if magic != MAGIC {
        return Err(Error::model(
            path.display(),
            format!("not a GGUF file (starts with {magic:02x?}, GGUF files start with \"GGUF\")"),
        ));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::model(
                path.display(),
                "GGUF version 1 is not supported (re-convert with a current llama.cpp)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::model(
                path.display(),
                "big-endian GGUF files are not supported",
            ))
        }
        v => {
            return Err(Error::model(
                path.display(),
                format!("unsupported GGUF version {v} (tessera reads versions 2 and 3)"),
            ))
        }
    }
    let n_tensors = r.len("tensor count")?;
    let n_kv = r.len("metadata count")?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes;
    // a tensor entry at least 8 (name length) + 4 (dims) + 8 (one dim) + 4 (type) + 8 (offset).
    if n_kv > r.remaining() / 13 {
        return Err(r.err(format!(
            "header claims {n_kv} metadata entries, more than the file can hold"
        )));
    }
    if n_tensors > r.remaining() / 32 {
        return Err(r.err(format!(
            "header claims {n_tensors} tensors, more than the file can hold"
        )));
    }

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.strict_string("metadata key")?;
        let ty = r.u32("metadata type")?;
        let value = r.value(ty, 0, &key)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(r.err(format!("metadata key {key:?} appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64().and_then(|a| usize::try_from(a).ok()) {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(Error::model(
                    path.display(),
                    format!("general.alignment {v:?} is not a power of two"),
                ))
            }
        },
    };

    struct Raw {
        name: String,
        ne: Vec<u64>,
        ty: GgmlType,
        rel: u64,
    }
    let mut raws = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.strict_string("tensor name")?;
        let n_dims = r.u32("tensor dimension count")? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "tensor {name:?} has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(r.u64("tensor dimension")?);
        }
        let ty_num = r.u32("tensor type")?;
        let ty = GgmlType::from_u32(ty_num)
            .ok_or_else(|| r.err(format!("tensor {name:?} has unknown ggml type {ty_num}")))?;
        let rel = r.u64("tensor offset")?;
        raws.push(Raw { name, ne, ty, rel });
    }

    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| r.err("data offset overflows"))?;
    let file_len = buf.len();
    let mut tensors = Vec::with_capacity(raws.len());
    for Raw { name, ne, ty, rel } in raws {
        let bad = |m: String| Error::model(path.display(), format!("tensor {name:?}: {m}"));
        let mut shape = Vec::with_capacity(ne.len());
        let mut numel: usize = 1;
        for &d in ne.iter().rev() {
            let d = usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large")))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| bad(format!("shape {ne:?} overflows")))?;
            shape.push(d);
        }
        let row = shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size()) {
            return Err(bad(format!(
                "rows of {row} elements are not a whole number of {ty} blocks of {}",
                ty.block_size()
            )));
        }
        let nbytes = (numel / ty.block_size())
            .checked_mul(ty.type_size())
            .ok_or_else(|| bad(format!("shape {ne:?} overflows")))?;
        let rel = usize::try_from(rel).map_err(|_| bad(format!("offset {rel} is too large")))?;
        if !rel.is_multiple_of(alignment) {
            return Err(bad(format!(
                "data offset {rel} is not a multiple of the alignment {alignment}"
            )));
        }
        let offset = data_offset
            .checked_add(rel)
            .ok_or_else(|| bad(format!("offset {rel} overflows")))?;
        match offset.checked_add(nbytes) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(bad(format!(
                    "data (bytes {offset}..+{nbytes}) runs past the end of the file ({file_len} bytes); \
                     the file is truncated or corrupt"
                )))
            }
        }
        tensors.push(GgufTensorInfo {
            name,
            shape,
            ggml_type: ty,
            offset,
            nbytes,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Builds GGUF images in memory, for tests here and in the other GGUF modules.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    pub fn value(out: &mut Vec<u8>, v: &MetaValue) {
        match v {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.push(*x as u8),
            MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => out.push(*x as u8),
            MetaValue::String(s) => string(out, s),
            MetaValue::Array(a) => {
                let ty = a.first().map(type_code).unwrap_or(4);
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    value(out, x);
                }
            }
        }
    }

    pub fn type_code(v: &MetaValue) -> u32 {
        match v {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// A GGUF v3 image. Tensors are `(name, ne (ggml order), type, data)`.
    pub fn build(
        meta: &[(&str, MetaValue)],
        tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)],
    ) -> Vec<u8> {
        let align = meta
            .iter()
            .find(|(k, _)| *k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(32) as usize;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (k, v) in meta {
            string(&mut out, k);
            out.extend_from_slice(&type_code(v).to_le_bytes());
            value(&mut out, v);
        }
        let mut rel = 0usize;
        let mut offsets = vec![];
        for (name, ne, ty, data) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(*ty as u32).to_le_bytes());
            out.extend_from_slice(&(rel as u64).to_le_bytes());
            offsets.push(rel);
            rel = (rel + data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        let base = out.len();
        for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
            out.resize(base + off, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn sample() -> Vec<u8> {
        build(
            &[
                ("general.architecture", MetaValue::String("llama".into())),
                ("llama.block_count", MetaValue::U32(2)),
                ("llama.rope.freq_base", MetaValue::F32(500000.0)),
                ("x.f64", MetaValue::F64(0.25)),
                ("x.neg", MetaValue::I32(-3)),
                (
                    "x.list",
                    MetaValue::Array(vec![
                        MetaValue::String("a".into()),
                        MetaValue::String("b c".into()),
                    ]),
                ),
                (
                    "x.nested",
                    MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(7)])]),
                ),
                ("x.flag", MetaValue::Bool(true)),
            ],
            &[
                (
                    "a",
                    vec![3, 2],
                    GgmlType::F32,
                    f32_bytes(&[1., 2., 3., 4., 5., 6.]),
                ),
                ("b", vec![4], GgmlType::F32, f32_bytes(&[7., 8., 9., 10.])),
            ],
        )
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let f = GgufFile::from_bytes("mem.gguf", sample()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.meta_u64("llama.block_count"), Some(2));
        assert_eq!(f.meta_u64("x.neg"), None);
        assert_eq!(f.meta("x.neg").and_then(MetaValue::as_i64), Some(-3));
        assert_eq!(f.meta_f32("llama.rope.freq_base"), Some(500000.0));
        assert_eq!(f.meta_f32("x.f64"), Some(0.25));
        assert_eq!(f.meta_str_array("x.list"), Some(vec!["a", "b c"]));
        assert_eq!(f.meta_str_array("x.nested"), None);
        assert_eq!(f.meta_bool("x.flag"), Some(true));
        let a = f.tensor("a").unwrap().clone();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.nbytes, 24);
        assert_eq!(a.offset % 32, 0);
        assert_eq!(f.dequantize(&a).unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        let b = f.tensor("b").unwrap().clone();
        assert_eq!(b.offset - a.offset, 32);
        assert_eq!(f.dequantize(&b).unwrap(), vec![7., 8., 9., 10.]);
        assert!(f.tensor("c").is_none());
    }

    #[test]
    fn honours_alignment() {
        let img = build(
            &[("general.alignment", MetaValue::U32(64))],
            &[
                ("a", vec![1], GgmlType::F32, f32_bytes(&[1.])),
                ("b", vec![1], GgmlType::F32, f32_bytes(&[2.])),
            ],
        );
        let f = GgufFile::from_bytes("mem.gguf", img).unwrap();
        assert_eq!(f.alignment, 64);
        assert_eq!(f.data_offset % 64, 0);
        let b = f.tensor("b").unwrap().clone();
        assert_eq!(b.offset, f.data_offset + 64);
        assert_eq!(f.dequantize(&b).unwrap(), vec![2.]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let img = sample();
        // The data ends with 16 bytes of tensor `b`, each cut shorter than the full image must fail.
        for cut in 0..img.len() {
            let r = GgufFile::from_bytes("mem.gguf", img[..cut].to_vec());
            assert!(r.is_err(), "cut at {cut} of {} parsed", img.len());
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let img = sample();
        for i in 0..img.len() {
            for x in [0x00u8, 0xff, 0x7f, 0x80, 0x01] {
                let mut bad = img.clone();
                bad[i] ^= x;
                if let Ok(f) = GgufFile::from_bytes("mem.gguf", bad) {
                    for t in f.tensors.clone() {
                        let _ = f.dequantize(&t);
                    }
                }
            }
        }
    }

    #[test]
    fn huge_counts_are_errors_not_allocations() {
        // A header claiming 2^60 metadata entries.
        let mut img = b"GGUF".to_vec();
        img.extend_from_slice(&3u32.to_le_bytes());
        img.extend_from_slice(&0u64.to_le_bytes());
        img.extend_from_slice(&(1u64 << 60).to_le_bytes());
        img.extend_from_slice(&[0u8; 64]);
        let e = GgufFile::from_bytes("mem.gguf", img)
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata entries"), "{e}");

        // An array claiming 2^60 elements.
        let mut img = b"GGUF".to_vec();
        img.extend_from_slice(&3u32.to_le_bytes());
        img.extend_from_slice(&0u64.to_le_bytes());
        img.extend_from_slice(&1u64.to_le_bytes());
        string(&mut img, "k");
        img.extend_from_slice(&9u32.to_le_bytes());
        img.extend_from_slice(&8u32.to_le_bytes());
        img.extend_from_slice(&(1u64 << 60).to_le_bytes());
        img.extend_from_slice(&[0u8; 64]);
        let e = GgufFile::from_bytes("mem.gguf", img)
            .unwrap_err()
            .to_string();
        assert!(e.contains("array claims"), "{e}");

        // A string claiming 2^63 bytes.
        let mut img = b"GGUF".to_vec();
        img.extend_from_slice(&3u32.to_le_bytes());
        img.extend_from_slice(&0u64.to_le_bytes());
        img.extend_from_slice(&1u64.to_le_bytes());
        img.extend_from_slice(&(1u64 << 63).to_le_bytes());
        img.extend_from_slice(&[0u8; 64]);
        assert!(GgufFile::from_bytes("mem.gguf", img).is_err());

        // A tensor whose shape overflows.
        let img = build(&[], &[("t", vec![1 << 40, 1 << 40], GgmlType::F32, vec![])]);
        let e = GgufFile::from_bytes("mem.gguf", img)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"t\""), "{e}");
    }

    #[test]
    fn names_unknown_types_and_bad_headers() {
        let mut img = build(&[], &[("t", vec![4], GgmlType::F32, vec![0; 16])]);
        // The type field of the only tensor sits 12 bytes before the end of the tensor table.
        let type_pos = 24 + 8 + 1 + 4 + 8;
        assert_eq!(&img[type_pos..type_pos + 4], &0u32.to_le_bytes());
        img[type_pos..type_pos + 4].copy_from_slice(&77u32.to_le_bytes());
        let e = GgufFile::from_bytes("mem.gguf", img)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown ggml type 77"), "{e}");

        let e = GgufFile::from_bytes("mem.gguf", b"GGML\x03\0\0\0".repeat(4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
        let mut img = sample();
        img[4..8].copy_from_slice(&3u32.to_be_bytes());
        let e = GgufFile::from_bytes("mem.gguf", img)
            .unwrap_err()
            .to_string();
        assert!(e.contains("big-endian"), "{e}");
    }

    #[test]
    fn type_table_matches_ggml() {
        assert_eq!(GgmlType::from_u32(3), Some(GgmlType::Q4_1));
        assert_eq!(GgmlType::from_u32(30), Some(GgmlType::BF16));
        assert_eq!(GgmlType::from_u32(4), None);
        assert_eq!(GgmlType::Q6_K.type_size(), 2 + 128 + 64 + 16);
        assert_eq!(GgmlType::Q4_K.block_size(), 256);
        assert_eq!(GgmlType::Q8_0.to_string(), "Q8_0");
    }
}
