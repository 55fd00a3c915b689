//! Reads the kernel metadata out of an AMDGPU code object.
//!
//! hipRTC (`hiprtcGetCode`) and `clang --cuda-device-only` hand us an
//! AMDGPU ELF whose `NT_AMDGPU_METADATA` note describes every kernel in
//! MessagePack: its parameters, register counts, spills, scratch and LDS use.
//! We read it for two reasons:
//!
//! * at run time, to check a launch's argument list against the kernel's
//!   parameters before the driver silently reads garbage kernargs;
//! * in tests, to assert that no kernel spills registers and to print a
//!   register table per kernel and architecture.
//!
//! The input comes from a compiler we do not control and may be a file on
//! disk, so the parser never trusts an offset or length: every read is
//! bounds-checked and every failure is an `Err(String)` naming what was
//! wrong, never a panic. No external crates: the ELF and MessagePack subsets
//! needed here are small.

/// One kernel parameter as the code object describes it.
///
/// Enough to check a launch: the byte size the kernel expects and whether the
/// host must pass a device address (as opposed to a plain value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// Bytes the parameter occupies in the kernarg segment (`.size`).
    pub size: u32,
    /// True for address kinds (`global_buffer`, other `*_buffer` kinds,
    /// `dynamic_shared_pointer`); false for `by_value` and anything else.
    pub pointer: bool,
}

/// What the metadata says about one kernel.
///
/// Numeric fields missing from the metadata read as 0, because older or
/// different compilers omit keys they consider default (e.g. `.agpr_count`
/// on targets without AGPRs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelInfo {
    /// The kernel's (possibly mangled) symbol name without `.kd` (`.name`).
    pub name: String,
    /// Explicit parameters in declaration order (`.args`), without the
    /// `hidden_*` ones the runtime appends itself, so it lines up with what
    /// the caller passes.
    pub args: Vec<Arg>,
    /// Scalar registers used (`.sgpr_count`).
    pub sgpr_count: u32,
    /// Vector registers used (`.vgpr_count`); limits occupancy.
    pub vgpr_count: u32,
    /// Accumulation registers used (`.agpr_count`, CDNA only).
    pub agpr_count: u32,
    /// Scalar registers spilled (`.sgpr_spill_count`); should be 0.
    pub sgpr_spill_count: u32,
    /// Vector registers spilled to scratch (`.vgpr_spill_count`); should be 0.
    pub vgpr_spill_count: u32,
    /// Scratch bytes per lane (`.private_segment_fixed_size`): > 0 means the
    /// kernel uses a stack or scratch memory, which is slow.
    pub private_segment_fixed_size: u32,
    /// Static LDS (shared memory) bytes (`.group_segment_fixed_size`).
    pub group_segment_fixed_size: u32,
    /// Lanes per wavefront (`.wavefront_size`): 64 on CDNA, usually 32 on RDNA.
    pub wavefront_size: u32,
    /// Largest workgroup the kernel was compiled for
    /// (`.max_flat_workgroup_size`); launching more fails.
    pub max_flat_workgroup_size: u32,
}

/// Kernels of a code object. Accepts a raw ELF or a clang offload bundle
/// (magic `__CLANG_OFFLOAD_BUNDLE__`: the first entry whose triple starts
/// with `hipv4-amdgcn` or `hip-amdgcn` and that is an ELF is used), since
/// both shapes come out of the HIP toolchain depending on flags.
pub fn kernels(image: &[u8]) -> Result<Vec<KernelInfo>, String> {
    let meta = metadata(image)?;
    let top = meta.as_map().ok_or("metadata: top level is not a map")?;
    // An object without kernels may leave the key out; that is not an error.
    let Some(list) = lookup(top, "amdhsa.kernels") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or("metadata: amdhsa.kernels is not an array")?;
    list.iter()
        .enumerate()
        .map(|(i, k)| kernel_info(i, k))
        .collect()
}

/// The target the object was built for, e.g. `amdgcn-amd-amdhsa--gfx90a`
/// (metadata key `amdhsa.target`), if present. Lets callers label results
/// and refuse objects built for another GPU.
pub fn target(image: &[u8]) -> Result<Option<String>, String> {
    let meta = metadata(image)?;
    let top = meta.as_map().ok_or("metadata: top level is not a map")?;
    match lookup(top, "amdhsa.target") {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| "metadata: amdhsa.target is not a UTF-8 string".to_string()),
    }
}

/// Turns one entry of `amdhsa.kernels` into a `KernelInfo`.
fn kernel_info(index: usize, kernel: &Value) -> Result<KernelInfo, String> {
    let map = kernel
        .as_map()
        .ok_or_else(|| format!("metadata: kernel {index} is not a map"))?;
    let name = match lookup(map, ".name") {
        None => return Err(format!("metadata: kernel {index} has no .name")),
        Some(v) => v
            .as_str()
            .ok_or_else(|| format!("metadata: kernel {index}: .name is not a UTF-8 string"))?
            .to_string(),
    };
    let num = |key: &str| u32_field(map, key).map_err(|e| format!("metadata: kernel {name}: {e}"));

    let mut args = Vec::new();
    if let Some(list) = lookup(map, ".args") {
        let list = list
            .as_array()
            .ok_or_else(|| format!("metadata: kernel {name}: .args is not an array"))?;
        for (i, arg) in list.iter().enumerate() {
            let arg = arg
                .as_map()
                .ok_or_else(|| format!("metadata: kernel {name}: arg {i} is not a map"))?;
            // Without the kind we cannot tell a hidden arg from a real one,
            // so guessing would make the launch check wrong.
            let kind = lookup(arg, ".value_kind")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("metadata: kernel {name}: arg {i} has no .value_kind"))?;
            if kind.starts_with("hidden_") {
                continue;
            }
            let size = u32_field(arg, ".size")
                .map_err(|e| format!("metadata: kernel {name}: arg {i}: {e}"))?;
            let pointer = kind.ends_with("_buffer") || kind == "dynamic_shared_pointer";
            args.push(Arg { size, pointer });
        }
    }

    Ok(KernelInfo {
        args,
        sgpr_count: num(".sgpr_count")?,
        vgpr_count: num(".vgpr_count")?,
        agpr_count: num(".agpr_count")?,
        sgpr_spill_count: num(".sgpr_spill_count")?,
        vgpr_spill_count: num(".vgpr_spill_count")?,
        private_segment_fixed_size: num(".private_segment_fixed_size")?,
        group_segment_fixed_size: num(".group_segment_fixed_size")?,
        wavefront_size: num(".wavefront_size")?,
        max_flat_workgroup_size: num(".max_flat_workgroup_size")?,
        name,
    })
}

/// A numeric metadata field: 0 when missing, an error when present but not
/// a u32 (a wrong value must not pass silently as a plausible one).
fn u32_field(map: &[(Value, Value)], key: &str) -> Result<u32, String> {
    match lookup(map, key) {
        None => Ok(0),
        Some(Value::Int(n)) => {
            u32::try_from(*n).map_err(|_| format!("{key} = {n} does not fit in u32"))
        }
        Some(_) => Err(format!("{key} is not an integer")),
    }
}

// ---------------------------------------------------------------------------
// Container formats: offload bundle and ELF.
// ---------------------------------------------------------------------------

const BUNDLE_MAGIC: &[u8] = b"__CLANG_OFFLOAD_BUNDLE__";
const ELF_MAGIC: &[u8] = b"\x7fELF";
const EM_AMDGPU: u16 = 0xE0;
const SHT_NOTE: u32 = 7;
const NT_AMDGPU_METADATA: u32 = 32;

/// Finds and decodes the metadata note of `image` (ELF or offload bundle).
fn metadata(image: &[u8]) -> Result<Value<'_>, String> {
    let elf = unbundle(image)?;
    let desc = find_metadata_note(elf)?;
    decode(desc)
}

/// Returns the AMDGPU ELF inside an offload bundle, or `image` itself when
/// it is not a bundle.
///
/// Bundle layout: magic, u64 entry count, then per entry u64 offset (from
/// the start of the bundle), u64 size, u64 triple length, triple bytes.
fn unbundle(image: &[u8]) -> Result<&[u8], String> {
    if image.starts_with(b"CCOB") {
        return Err("compressed offload bundle (CCOB) is not supported".into());
    }
    if !image.starts_with(BUNDLE_MAGIC) {
        return Ok(image);
    }
    let truncated = || {
        format!(
            "offload bundle header runs past the end ({} bytes)",
            image.len()
        )
    };
    let count = read_u64(image, BUNDLE_MAGIC.len()).ok_or_else(truncated)?;
    let mut pos = BUNDLE_MAGIC.len() + 8;
    // Each entry header takes at least 24 bytes, so a corrupt count hits the
    // end of the buffer within len / 24 rounds.
    for _ in 0..count {
        let offset = read_u64(image, pos).ok_or_else(truncated)?;
        let size = read_u64(image, pos + 8).ok_or_else(truncated)?;
        let triple_len = read_u64(image, pos + 16).ok_or_else(truncated)?;
        let triple = slice(image, (pos + 24) as u64, triple_len).ok_or_else(truncated)?;
        pos = pos + 24 + triple.len();

        let is_amdgcn = triple.starts_with(b"hipv4-amdgcn") || triple.starts_with(b"hip-amdgcn");
        if !is_amdgcn {
            continue;
        }
        let body = slice(image, offset, size).ok_or_else(|| {
            format!(
                "offload bundle entry {} runs past the end ({} bytes)",
                String::from_utf8_lossy(triple),
                image.len()
            )
        })?;
        if body.starts_with(ELF_MAGIC) {
            return Ok(body);
        }
    }
    Err("offload bundle has no hip amdgcn ELF entry".into())
}

/// Returns the desc bytes of the first `AMDGPU` / `NT_AMDGPU_METADATA` note
/// found in the ELF's `SHT_NOTE` sections.
fn find_metadata_note(elf: &[u8]) -> Result<&[u8], String> {
    let len = elf.len();
    if !elf.starts_with(ELF_MAGIC) {
        return Err("not an ELF file".into());
    }
    if elf.len() < 64 {
        return Err(format!("ELF header runs past the end ({len} bytes)"));
    }
    // e_ident: EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let machine = read_u16(elf, 0x12).unwrap_or(0);
    if machine != EM_AMDGPU {
        return Err(format!("not an AMDGPU ELF (e_machine {machine:#x})"));
    }

    let table_err = || format!("ELF section table runs past the end ({len} bytes)");
    let shoff = read_u64(elf, 0x28).unwrap_or(0);
    let shentsize = u64::from(read_u16(elf, 0x3A).unwrap_or(0));
    let mut shnum = u64::from(read_u16(elf, 0x3C).unwrap_or(0));
    if shoff == 0 {
        return Err("ELF has no section table".into());
    }
    if shentsize < 64 {
        return Err(format!("ELF section header size {shentsize} is below 64"));
    }
    // With 0xff00 or more sections, e_shnum is 0 and the real count is the
    // sh_size of section 0.
    if shnum == 0 {
        let first = slice(elf, shoff, 64).ok_or_else(table_err)?;
        shnum = read_u64(first, 0x20).unwrap_or(0);
    }
    let table_len = shnum.checked_mul(shentsize).ok_or_else(table_err)?;
    let table = slice(elf, shoff, table_len).ok_or_else(table_err)?;

    // entsize >= 64 (checked above): chunks_exact would panic on 0.
    let entsize = usize::try_from(shentsize).map_err(|_| table_err())?;
    for (index, header) in table.chunks_exact(entsize).enumerate() {
        if read_u32(header, 4) != Some(SHT_NOTE) {
            continue;
        }
        let offset = read_u64(header, 0x18).unwrap_or(0);
        let size = read_u64(header, 0x20).unwrap_or(0);
        let align = read_u64(header, 0x30).unwrap_or(0);
        let notes = slice(elf, offset, size)
            .ok_or_else(|| format!("ELF note section {index} runs past the end ({len} bytes)"))?;
        // Notes are 4-byte aligned; producers that align the section to 8
        // also pad each entry to 8.
        let pad = if align == 8 { 8 } else { 4 };
        if let Some(desc) = scan_notes(notes, pad, index)? {
            return Ok(desc);
        }
    }
    Err("no NT_AMDGPU_METADATA note".into())
}

/// Walks the note entries of one note section: namesz, descsz, type (u32
/// each), then the name and the desc, each padded to `pad` bytes.
fn scan_notes(notes: &[u8], pad: usize, section: usize) -> Result<Option<&[u8]>, String> {
    let bad = || format!("ELF note in section {section} runs past the end of the section");
    let mut pos = 0usize;
    // Fewer than 12 bytes left can only be trailing padding.
    while notes.len().saturating_sub(pos) >= 12 {
        let namesz = read_u32(notes, pos).ok_or_else(bad)? as usize;
        let descsz = read_u32(notes, pos + 4).ok_or_else(bad)? as usize;
        let kind = read_u32(notes, pos + 8).ok_or_else(bad)?;
        let name_start = pos + 12;
        let name_end = name_start.checked_add(namesz).ok_or_else(bad)?;
        let desc_start = align_up(name_end, pad).ok_or_else(bad)?;
        let desc_end = desc_start.checked_add(descsz).ok_or_else(bad)?;
        let name = notes.get(name_start..name_end).ok_or_else(bad)?;
        let desc = notes.get(desc_start..desc_end).ok_or_else(bad)?;
        // The name is NUL-terminated in practice; tolerate it missing.
        let owner = name.strip_suffix(b"\0").unwrap_or(name);
        if owner == b"AMDGPU" && kind == NT_AMDGPU_METADATA {
            return Ok(Some(desc));
        }
        // The last entry's trailing padding may be cut off by the section
        // size; the loop condition then ends the walk.
        pos = align_up(desc_end, pad).ok_or_else(bad)?;
    }
    Ok(None)
}

fn align_up(n: usize, to: usize) -> Option<usize> {
    Some(n.checked_add(to - 1)? / to * to)
}

/// `len` bytes of `buf` at `offset`, with file-supplied u64s that may be
/// anything.
fn slice(buf: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    buf.get(start..end)
}

fn read_bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    read_bytes(buf, at).map(u16::from_le_bytes)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    read_bytes(buf, at).map(u32::from_le_bytes)
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    read_bytes(buf, at).map(u64::from_le_bytes)
}

// ---------------------------------------------------------------------------
// MessagePack: just the types LLVM's metadata writer can produce.
// ---------------------------------------------------------------------------

/// A decoded MessagePack value borrowing strings from the input.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Nil,
    Bool(bool),
    /// Every integer form; i128 holds both u64 and i64 without loss.
    Int(i128),
    Float(f64),
    /// Raw bytes: MessagePack does not promise valid UTF-8.
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
}

impl<'a> Value<'a> {
    fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::Str(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    fn as_map(&self) -> Option<&[(Value<'a>, Value<'a>)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
}

/// The value stored under string key `key` in a map.
fn lookup<'v, 'a>(map: &'v [(Value<'a>, Value<'a>)], key: &str) -> Option<&'v Value<'a>> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if *s == key.as_bytes()))
        .map(|(_, v)| v)
}

/// Deep enough for the metadata (about 4 levels), shallow enough that a
/// corrupt run of array headers cannot overflow the stack.
const MAX_DEPTH: usize = 64;

/// Decodes one MessagePack value from the start of `buf`. Trailing bytes
/// (note padding) are ignored.
fn decode(buf: &[u8]) -> Result<Value<'_>, String> {
    Reader { buf, pos: 0 }.value(0)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let truncated = || format!("metadata: truncated msgpack at byte {}", self.pos);
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let at = self.pos;
        self.take(N)?
            .try_into()
            .map_err(|_| format!("metadata: truncated msgpack at byte {at}"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.be::<1>()?[0])
    }

    fn u16(&mut self) -> Result<usize, String> {
        Ok(u16::from_be_bytes(self.be()?).into())
    }

    fn u32(&mut self) -> Result<usize, String> {
        let n = u32::from_be_bytes(self.be()?);
        usize::try_from(n)
            .map_err(|_| format!("metadata: length {n} too large at byte {}", self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "metadata: msgpack nested deeper than {MAX_DEPTH} at byte {}",
                self.pos
            ));
        }
        let at = self.pos;
        let tag = self.u8()?;
        let v = match tag {
            0x00..=0x7f => Value::Int(tag.into()),
            0x80..=0x8f => self.map(usize::from(tag & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(tag & 0x0f), depth)?,
            0xa0..=0xbf => Value::Str(self.take(usize::from(tag & 0x1f))?),
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = usize::from(self.u8()?);
                Value::Bin(self.take(n)?)
            }
            0xc5 => {
                let n = self.u16()?;
                Value::Bin(self.take(n)?)
            }
            0xc6 => {
                let n = self.u32()?;
                Value::Bin(self.take(n)?)
            }
            0xca => Value::Float(f32::from_be_bytes(self.be()?).into()),
            0xcb => Value::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Value::Int(self.u8()?.into()),
            0xcd => Value::Int(u16::from_be_bytes(self.be()?).into()),
            0xce => Value::Int(u32::from_be_bytes(self.be()?).into()),
            0xcf => Value::Int(u64::from_be_bytes(self.be()?).into()),
            0xd0 => Value::Int(i8::from_be_bytes(self.be()?).into()),
            0xd1 => Value::Int(i16::from_be_bytes(self.be()?).into()),
            0xd2 => Value::Int(i32::from_be_bytes(self.be()?).into()),
            0xd3 => Value::Int(i64::from_be_bytes(self.be()?).into()),
            0xd9 => {
                let n = usize::from(self.u8()?);
                Value::Str(self.take(n)?)
            }
            0xda => {
                let n = self.u16()?;
                Value::Str(self.take(n)?)
            }
            0xdb => {
                let n = self.u32()?;
                Value::Str(self.take(n)?)
            }
            0xdc => {
                let n = self.u16()?;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.u32()?;
                self.array(n, depth)?
            }
            0xde => {
                let n = self.u16()?;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.u32()?;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::Int(i8::from_be_bytes([tag]).into()),
            // 0xc1 (never used) and the ext types, which LLVM never writes.
            _ => {
                return Err(format!(
                    "metadata: unsupported msgpack type {tag:#04x} at byte {at}"
                ))
            }
        };
        Ok(v)
    }

    /// Every element takes at least one byte, so capping the reservation by
    /// the bytes left keeps a corrupt length from allocating gigabytes.
    fn room(&self, n: usize) -> usize {
        n.min(self.buf.len().saturating_sub(self.pos))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value<'a>, String> {
        let mut items = Vec::with_capacity(self.room(n));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value<'a>, String> {
        let mut entries = Vec::with_capacity(self.room(n) / 2);
        for _ in 0..n {
            let key = self.value(depth + 1)?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the test encoder can write; mirrors the metadata's shape.
    enum M {
        Nil,
        Bool(bool),
        Int(i64),
        F64(f64),
        Str(String),
        Arr(Vec<M>),
        Map(Vec<(String, M)>),
    }

    fn s(x: &str) -> M {
        M::Str(x.to_string())
    }

    fn map(pairs: Vec<(&str, M)>) -> M {
        M::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// Writes a length with the smallest header, as LLVM does, so the
    /// decoder sees fix, 8/16 and 32-bit forms.
    fn enc_len(out: &mut Vec<u8>, n: usize, fix: u8, fix_max: usize, wide: [Option<u8>; 3]) {
        if n <= fix_max {
            out.push(fix | n as u8);
        } else if let (Some(tag), true) = (wide[0], n <= 0xff) {
            out.push(tag);
            out.push(n as u8);
        } else if n <= 0xffff {
            out.push(wide[1].unwrap());
            out.extend((n as u16).to_be_bytes());
        } else {
            out.push(wide[2].unwrap());
            out.extend((n as u32).to_be_bytes());
        }
    }

    fn enc(v: &M, out: &mut Vec<u8>) {
        match v {
            M::Nil => out.push(0xc0),
            M::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            M::F64(f) => {
                out.push(0xcb);
                out.extend(f.to_be_bytes());
            }
            M::Int(n) => {
                let n = *n;
                match n {
                    0..=0x7f => out.push(n as u8),
                    -32..=-1 => out.push(n as i8 as u8),
                    0x80..=0xff => out.extend([0xcc, n as u8]),
                    0x100..=0xffff => {
                        out.push(0xcd);
                        out.extend((n as u16).to_be_bytes());
                    }
                    0x1_0000..=0xffff_ffff => {
                        out.push(0xce);
                        out.extend((n as u32).to_be_bytes());
                    }
                    -128..=-33 => out.extend([0xd0, n as i8 as u8]),
                    -32768..=-129 => {
                        out.push(0xd1);
                        out.extend((n as i16).to_be_bytes());
                    }
                    _ if n > 0 => {
                        out.push(0xcf);
                        out.extend((n as u64).to_be_bytes());
                    }
                    _ => {
                        out.push(0xd3);
                        out.extend(n.to_be_bytes());
                    }
                }
            }
            M::Str(x) => {
                enc_len(out, x.len(), 0xa0, 31, [Some(0xd9), Some(0xda), Some(0xdb)]);
                out.extend(x.as_bytes());
            }
            M::Arr(items) => {
                enc_len(out, items.len(), 0x90, 15, [None, Some(0xdc), Some(0xdd)]);
                items.iter().for_each(|i| enc(i, out));
            }
            M::Map(pairs) => {
                enc_len(out, pairs.len(), 0x80, 15, [None, Some(0xde), Some(0xdf)]);
                for (k, v) in pairs {
                    enc(&M::Str(k.clone()), out);
                    enc(v, out);
                }
            }
        }
    }

    fn msgpack(v: &M) -> Vec<u8> {
        let mut out = Vec::new();
        enc(v, &mut out);
        out
    }

    fn pad4(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }

    fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(name);
        pad4(out);
        out.extend(desc);
        pad4(out);
    }

    /// A minimal AMDGPU ELF64: header, one SHT_NOTE section holding an
    /// unrelated note and then the metadata note, and a section header
    /// table (null section + note section) at the end.
    fn elf_with_desc(desc: &[u8]) -> Vec<u8> {
        let mut notes = Vec::new();
        note(&mut notes, b"GNU\0", 3, b"build-id");
        note(&mut notes, b"AMDGPU\0", NT_AMDGPU_METADATA, desc);

        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // EV_CURRENT
        elf[7] = 64; // ELFOSABI_AMDGPU_HSA
        elf[0x10..0x12].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        elf[0x12..0x14].copy_from_slice(&EM_AMDGPU.to_le_bytes());
        elf[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf[0x3C..0x3E].copy_from_slice(&2u16.to_le_bytes()); // e_shnum

        let note_off = elf.len() as u64;
        elf.extend(&notes);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len() as u64;
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());

        elf.extend([0u8; 64]); // null section
        let mut sh = [0u8; 64];
        sh[4..8].copy_from_slice(&SHT_NOTE.to_le_bytes());
        sh[0x18..0x20].copy_from_slice(&note_off.to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        sh[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        elf.extend(sh);
        elf
    }

    fn elf(meta: &M) -> Vec<u8> {
        elf_with_desc(&msgpack(meta))
    }

    fn arg(kind: &str, size: i64, offset: i64) -> M {
        map(vec![
            (".offset", M::Int(offset)),
            (".size", M::Int(size)),
            (".value_kind", s(kind)),
        ])
    }

    /// Metadata shaped like hipRTC's: rms_norm_f32 as in a real gfx90a
    /// object, plus a kernel that has only the keys that must be there.
    fn sample() -> M {
        let mut args: Vec<M> = (0..3).map(|i| arg("global_buffer", 8, i * 8)).collect();
        args.extend((0..3).map(|i| arg("by_value", 4, 24 + i * 4)));
        args.push(arg("hidden_block_count_x", 4, 40));
        args.push(arg("hidden_multigrid_sync_arg", 8, 48));
        let rms = map(vec![
            (".args", M::Arr(args)),
            (".group_segment_fixed_size", M::Int(128)),
            (".kernarg_segment_align", M::Int(8)),
            (".language", s("OpenCL C")),
            (".language_version", M::Arr(vec![M::Int(2), M::Int(0)])),
            (".max_flat_workgroup_size", M::Int(1024)),
            (".name", s("rms_norm_f32")),
            (".private_segment_fixed_size", M::Int(0)),
            (".sgpr_count", M::Int(23)),
            (".sgpr_spill_count", M::Int(0)),
            (".symbol", s("rms_norm_f32.kd")),
            (".uses_dynamic_stack", M::Bool(false)),
            (".vgpr_count", M::Int(42)),
            (".agpr_count", M::Int(300)),
            (".vgpr_spill_count", M::Int(70_000)),
            (".wavefront_size", M::Int(64)),
            (".unknown_float", M::F64(1.5)),
            (".unknown_nil", M::Nil),
        ]);
        // A 40-character name and 20 args exercise str8 and array16.
        let long = "x".repeat(40);
        let many = (0..20).map(|i| arg("by_value", 2, i * 2)).collect();
        let bare = map(vec![(".name", s(&long)), (".args", M::Arr(many))]);
        map(vec![
            ("amdhsa.kernels", M::Arr(vec![rms, bare])),
            ("amdhsa.target", s("amdgcn-amd-amdhsa--gfx90a")),
            ("amdhsa.version", M::Arr(vec![M::Int(1), M::Int(2)])),
        ])
    }

    #[test]
    fn reads_args_and_counts() {
        let ks = kernels(&elf(&sample())).unwrap();
        assert_eq!(ks.len(), 2);
        let k = &ks[0];
        assert_eq!(k.name, "rms_norm_f32");
        let ptr = Arg {
            size: 8,
            pointer: true,
        };
        let val = Arg {
            size: 4,
            pointer: false,
        };
        // Hidden args are dropped: 6 explicit of 8 listed.
        assert_eq!(
            k.args,
            vec![ptr.clone(), ptr.clone(), ptr, val.clone(), val.clone(), val]
        );
        assert_eq!(k.sgpr_count, 23);
        assert_eq!(k.vgpr_count, 42);
        assert_eq!(k.agpr_count, 300);
        assert_eq!(k.vgpr_spill_count, 70_000);
        assert_eq!(k.group_segment_fixed_size, 128);
        assert_eq!(k.wavefront_size, 64);
        assert_eq!(k.max_flat_workgroup_size, 1024);
    }

    #[test]
    fn missing_numeric_keys_default_to_zero() {
        let ks = kernels(&elf(&sample())).unwrap();
        let k = &ks[1];
        assert_eq!(k.name, "x".repeat(40));
        assert_eq!(
            k.args,
            vec![
                Arg {
                    size: 2,
                    pointer: false
                };
                20
            ]
        );
        let expected = KernelInfo {
            name: k.name.clone(),
            args: k.args.clone(),
            ..KernelInfo::default()
        };
        assert_eq!(*k, expected);
    }

    #[test]
    fn pointer_kinds() {
        let kinds = [
            ("global_buffer", true),
            ("dynamic_shared_pointer", true),
            ("image_buffer", true),
            ("by_value", false),
            ("sampler", false),
        ];
        let args = kinds.iter().map(|(k, _)| arg(k, 8, 0)).collect();
        let meta = map(vec![(
            "amdhsa.kernels",
            M::Arr(vec![map(vec![(".name", s("k")), (".args", M::Arr(args))])]),
        )]);
        let ks = kernels(&elf(&meta)).unwrap();
        let got: Vec<bool> = ks[0].args.iter().map(|a| a.pointer).collect();
        let want: Vec<bool> = kinds.iter().map(|(_, p)| *p).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reads_target() {
        let image = elf(&sample());
        assert_eq!(
            target(&image).unwrap().as_deref(),
            Some("amdgcn-amd-amdhsa--gfx90a")
        );
        let bare = elf(&map(vec![("amdhsa.kernels", M::Arr(vec![]))]));
        assert_eq!(target(&bare).unwrap(), None);
        assert_eq!(kernels(&bare).unwrap(), vec![]);
        // No kernels key at all is an empty object, not an error.
        assert_eq!(kernels(&elf(&map(vec![]))).unwrap(), vec![]);
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let one = |k: M| elf(&map(vec![("amdhsa.kernels", M::Arr(vec![k]))]));
        let err = kernels(&one(map(vec![(".sgpr_count", M::Int(1))]))).unwrap_err();
        assert!(err.contains("no .name"), "{err}");

        let no_kind = map(vec![
            (".name", s("k")),
            (".args", M::Arr(vec![map(vec![(".size", M::Int(4))])])),
        ]);
        let err = kernels(&one(no_kind)).unwrap_err();
        assert!(err.contains(".value_kind"), "{err}");

        for bad in [M::Int(-1), M::Int(1 << 32), s("12")] {
            let k = map(vec![(".name", s("k")), (".vgpr_count", bad)]);
            let err = kernels(&one(k)).unwrap_err();
            assert!(err.contains("kernel k: .vgpr_count"), "{err}");
        }

        let err = kernels(&elf(&M::Arr(vec![]))).unwrap_err();
        assert!(err.contains("not a map"), "{err}");
        let err = kernels(&elf(&map(vec![("amdhsa.kernels", M::Int(3))]))).unwrap_err();
        assert!(err.contains("not an array"), "{err}");
        let err = kernels(&elf_with_desc(&[0x82, 0xa1])).unwrap_err();
        assert!(err.contains("truncated msgpack at byte 2"), "{err}");
        let err = kernels(&elf_with_desc(&[0xc1])).unwrap_err();
        assert!(err.contains("unsupported msgpack type 0xc1"), "{err}");
    }

    #[test]
    fn decodes_every_msgpack_form() {
        let cases: Vec<(Vec<u8>, Value)> = vec![
            (vec![0xc0], Value::Nil),
            (vec![0xc3], Value::Bool(true)),
            (vec![0x7f], Value::Int(127)),
            (vec![0xe0], Value::Int(-32)),
            (vec![0xcc, 0xff], Value::Int(255)),
            (vec![0xcd, 0x01, 0x00], Value::Int(256)),
            (vec![0xce, 0, 1, 0, 0], Value::Int(65536)),
            (
                vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Value::Int(u64::MAX.into()),
            ),
            (vec![0xd0, 0x80], Value::Int(-128)),
            (vec![0xd1, 0xff, 0x00], Value::Int(-256)),
            (vec![0xd2, 0xff, 0xff, 0xff, 0xfe], Value::Int(-2)),
            (
                vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
                Value::Int(i64::MIN.into()),
            ),
            (vec![0xca, 0x3f, 0xc0, 0, 0], Value::Float(1.5)),
            (vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], Value::Float(1.5)),
            (vec![0xa2, b'h', b'i'], Value::Str(b"hi")),
            (vec![0xd9, 1, b'a'], Value::Str(b"a")),
            (vec![0xda, 0, 1, b'a'], Value::Str(b"a")),
            (vec![0xdb, 0, 0, 0, 1, b'a'], Value::Str(b"a")),
            (vec![0xc4, 1, 7], Value::Bin(&[7])),
            (vec![0xc5, 0, 1, 7], Value::Bin(&[7])),
            (vec![0xc6, 0, 0, 0, 1, 7], Value::Bin(&[7])),
            (
                vec![0x92, 1, 2],
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
            ),
            (vec![0xdc, 0, 1, 1], Value::Array(vec![Value::Int(1)])),
            (vec![0xdd, 0, 0, 0, 1, 1], Value::Array(vec![Value::Int(1)])),
            (
                vec![0x81, 1, 2],
                Value::Map(vec![(Value::Int(1), Value::Int(2))]),
            ),
            (
                vec![0xde, 0, 1, 1, 2],
                Value::Map(vec![(Value::Int(1), Value::Int(2))]),
            ),
            (
                vec![0xdf, 0, 0, 0, 1, 1, 2],
                Value::Map(vec![(Value::Int(1), Value::Int(2))]),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(&bytes).unwrap(), want, "{bytes:x?}");
        }
        // The encoder's wide forms round-trip too: str16, map16 and big ints.
        let name = "n".repeat(300);
        let keys: Vec<(&str, M)> = vec![(".name", s(&name)), (".sgpr_count", M::Int(0xffff_ffff))];
        let mut kernel = keys;
        let pad: Vec<String> = (0..20).map(|i| format!("pad{i}")).collect();
        kernel.extend(pad.iter().map(|p| (p.as_str(), M::Int(-40_000))));
        let ks = kernels(&elf(&map(vec![(
            "amdhsa.kernels",
            M::Arr(vec![map(kernel)]),
        )])))
        .unwrap();
        assert_eq!(ks[0].name, name);
        assert_eq!(ks[0].sgpr_count, u32::MAX);
    }

    #[test]
    fn hostile_msgpack_is_rejected_cheaply() {
        // Deep nesting must not overflow the stack.
        let err = decode(&[0x91; 10_000]).unwrap_err();
        assert!(err.contains("deeper"), "{err}");
        // Huge declared lengths must not allocate.
        assert!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(decode(&[0xdb, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[]).is_err());
    }

    /// Layout of a clang offload bundle with the given (triple, body) entries.
    fn bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header_len: usize =
            BUNDLE_MAGIC.len() + 8 + entries.iter().map(|(t, _)| 24 + t.len()).sum::<usize>();
        let mut out = BUNDLE_MAGIC.to_vec();
        out.extend((entries.len() as u64).to_le_bytes());
        let mut offset = header_len.next_multiple_of(8);
        for (triple, body) in entries {
            out.extend((offset as u64).to_le_bytes());
            out.extend((body.len() as u64).to_le_bytes());
            out.extend((triple.len() as u64).to_le_bytes());
            out.extend(triple.as_bytes());
            offset = (offset + body.len()).next_multiple_of(8);
        }
        for (_, body) in entries {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            out.extend(*body);
        }
        out
    }

    #[test]
    fn offload_bundle() {
        let image = elf(&sample());
        let other = elf(&map(vec![(
            "amdhsa.target",
            s("amdgcn-amd-amdhsa--gfx1030"),
        )]));
        let b = bundle(&[
            ("host-x86_64-unknown-linux-gnu", b""),
            ("hipv4-amdgcn-amd-amdhsa--gfx90a", b"not an elf"),
            ("hipv4-amdgcn-amd-amdhsa--gfx90a", &image),
            ("hipv4-amdgcn-amd-amdhsa--gfx1030", &other),
        ]);
        assert_eq!(kernels(&b).unwrap(), kernels(&image).unwrap());
        assert_eq!(
            target(&b).unwrap().as_deref(),
            Some("amdgcn-amd-amdhsa--gfx90a")
        );

        let old = bundle(&[("hip-amdgcn-amd-amdhsa-gfx906", &other)]);
        assert_eq!(
            target(&old).unwrap().as_deref(),
            Some("amdgcn-amd-amdhsa--gfx1030")
        );

        let host_only = bundle(&[("host-x86_64-unknown-linux-gnu", &image)]);
        assert!(kernels(&host_only)
            .unwrap_err()
            .contains("no hip amdgcn ELF"));
        for cut in 0..b.len() {
            let _ = kernels(&b[..cut]);
        }
    }

    #[test]
    fn container_errors() {
        assert_eq!(kernels(b"hello").unwrap_err(), "not an ELF file");
        assert_eq!(kernels(b"").unwrap_err(), "not an ELF file");

        let image = elf(&sample());
        let mut wrong = image.clone();
        wrong[0x12] = 0x3e; // x86-64
        assert!(kernels(&wrong).unwrap_err().contains("not an AMDGPU ELF"));

        let mut short_table = image.clone();
        short_table[0x3C] = 9;
        let err = kernels(&short_table).unwrap_err();
        assert_eq!(
            err,
            format!(
                "ELF section table runs past the end ({} bytes)",
                image.len()
            )
        );

        let no_note = elf_with_desc(b"");
        let mut no_note_type = no_note.clone();
        let type_at = no_note_type.len() - 64 + 4;
        no_note_type[type_at] = 1; // SHT_PROGBITS
        assert_eq!(
            kernels(&no_note_type).unwrap_err(),
            "no NT_AMDGPU_METADATA note"
        );
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let image = elf(&sample());
        for cut in 0..image.len() {
            assert!(kernels(&image[..cut]).is_err(), "prefix {cut}");
            assert!(target(&image[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        let image = elf(&sample());
        let desc_start = 64 + 12 + 4 + 8 + 12 + 8;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..600 {
            let mut bad = image.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                // Half the rounds hit only the metadata, to reach deep into
                // the decoder instead of failing at the ELF header.
                let at = if round % 2 == 0 {
                    next() as usize % bad.len()
                } else {
                    desc_start + next() as usize % (bad.len() - 128 - desc_start)
                };
                bad[at] = next() as u8;
            }
            let _ = kernels(&bad);
            let _ = target(&bad);
        }
    }
}
