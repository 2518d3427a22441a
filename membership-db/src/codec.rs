//! Little-endian field encoding and the record frame shared by every on-disk record.
//!
//! Every record starts with a 4-byte magic and a 2-byte record version, and ends with the
//! crc32 (IEEE) of all the bytes before it, in its last four bytes. Those three positions are
//! fixed for all versions, so a newer record is recognised as newer rather than as corrupt.

use crate::error::{CorruptRecord, Problem, RecordKind};

/// Declares an enum stored on the disk as one byte: its values, the names people and JSON see,
/// and the decoding of the byte (`None` for a byte no value has).
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant = $value,)+
        }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            pub(crate) fn from_u8(v: u8) -> Option<$name> {
                Self::ALL.iter().copied().find(|k| *k as u8 == v)
            }
            /// The name people and JSON see.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}
pub(crate) use wire_enum;

/// Writes fields at increasing positions in a fixed-size record buffer.
pub(crate) struct Encoder<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Encoder<'a> {
    /// Starts a record: zeroes the buffer and writes the magic and version.
    pub(crate) fn record(buf: &'a mut [u8], magic: u32, version: u16) -> Self {
        buf.fill(0);
        let mut enc = Encoder { buf, pos: 0 };
        enc.u32(magic);
        enc.u16(version);
        enc
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        // The record layouts are constants sized well inside their buffers; overrunning one is a
        // programming error that must stop the process before it writes a malformed record.
        assert!(end + 4 <= self.buf.len(), "record field overruns the record");
        self.buf[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// A string in a fixed field: one length byte, then `capacity` bytes.
    pub(crate) fn text(&mut self, s: &str, capacity: usize) {
        assert!(s.len() <= capacity && capacity <= 255, "text field too long");
        self.u8(s.len() as u8);
        let mut field = vec![0u8; capacity];
        field[..s.len()].copy_from_slice(s.as_bytes());
        self.bytes(&field);
    }
    /// A longer string: two length bytes, then `capacity` bytes.
    pub(crate) fn long_text(&mut self, s: &str, capacity: usize) {
        assert!(s.len() <= capacity && capacity <= u16::MAX as usize, "text field too long");
        self.u16(s.len() as u16);
        let mut field = vec![0u8; capacity];
        field[..s.len()].copy_from_slice(s.as_bytes());
        self.bytes(&field);
    }

    /// Finishes the record: writes the crc32 of everything before the last four bytes.
    pub(crate) fn seal(self) {
        let n = self.buf.len();
        let crc = crc32fast::hash(&self.buf[..n - 4]);
        self.buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Reads fields from a record whose frame has been checked by [`Decoder::record`].
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: RecordKind,
    offset: u64,
}

impl<'a> Decoder<'a> {
    /// Checks the frame (blank, magic, version, checksum) and returns a decoder positioned after
    /// the version. Only `version` is read: a record of another version is named as newer or
    /// older, never decoded.
    pub(crate) fn record(
        buf: &'a [u8],
        kind: RecordKind,
        offset: u64,
        magic: u32,
        version: u16,
    ) -> Result<Self, CorruptRecord> {
        let corrupt = |problem| CorruptRecord { kind, offset, problem };
        if buf.len() < 16 {
            return Err(corrupt(Problem::Truncated));
        }
        if buf.iter().all(|&b| b == 0) {
            return Err(corrupt(Problem::Blank));
        }
        let found_magic = u32::from_le_bytes(buf[0..4].try_into().expect("fixed width"));
        if found_magic != magic {
            return Err(corrupt(Problem::BadMagic { found: found_magic, expected: magic }));
        }
        let found = u16::from_le_bytes(buf[4..6].try_into().expect("2 bytes"));
        let n = buf.len();
        let stored = u32::from_le_bytes(buf[n - 4..].try_into().expect("fixed width"));
        let computed = crc32fast::hash(&buf[..n - 4]);
        if stored != computed {
            return Err(corrupt(Problem::Checksum { stored, computed }));
        }
        if found == 0 {
            return Err(corrupt(Problem::Invalid("record version 0".into())));
        }
        if found > version {
            return Err(corrupt(Problem::NewerVersion { found, supported: version }));
        }
        if found < version {
            return Err(corrupt(Problem::OlderVersion { found, supported: version }));
        }
        Ok(Decoder { buf, pos: 6, kind, offset })
    }

    pub(crate) fn invalid(&self, what: impl Into<String>) -> CorruptRecord {
        CorruptRecord { kind: self.kind, offset: self.offset, problem: Problem::Invalid(what.into()) }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        let end = self.pos + n;
        if end + 4 > self.buf.len() {
            return Err(CorruptRecord { kind: self.kind, offset: self.offset, problem: Problem::Truncated });
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptRecord> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }
    pub(crate) fn u8(&mut self) -> Result<u8, CorruptRecord> {
        Ok(self.bytes(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, CorruptRecord> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("fixed width")))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, CorruptRecord> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("fixed width")))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, CorruptRecord> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("fixed width")))
    }
    pub(crate) fn text(&mut self, capacity: usize, field: &str) -> Result<String, CorruptRecord> {
        let len = self.u8()? as usize;
        self.text_body(len, capacity, field)
    }
    pub(crate) fn long_text(&mut self, capacity: usize, field: &str) -> Result<String, CorruptRecord> {
        let len = self.u16()? as usize;
        self.text_body(len, capacity, field)
    }
    /// A string in a fixed field, borrowed from the record (no allocation).
    pub(crate) fn text_ref(&mut self, capacity: usize, field: &str) -> Result<&'a str, CorruptRecord> {
        let len = self.u8()? as usize;
        let raw = self.bytes(capacity)?;
        if len > capacity {
            return Err(self.invalid(format!("{field} length {len} exceeds {capacity}")));
        }
        std::str::from_utf8(&raw[..len]).map_err(|_| self.invalid(format!("{field} is not UTF-8")))
    }
    fn text_body(&mut self, len: usize, capacity: usize, field: &str) -> Result<String, CorruptRecord> {
        let raw = self.bytes(capacity)?;
        if len > capacity {
            return Err(self.invalid(format!("{field} length {len} exceeds {capacity}")));
        }
        String::from_utf8(raw[..len].to_vec()).map_err(|_| self.invalid(format!("{field} is not UTF-8")))
    }
}
