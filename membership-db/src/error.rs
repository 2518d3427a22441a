//! Typed errors of the membership database. Every variant says what is wrong and, where there
//! is one, what the operator can do about it.

use std::fmt;
use std::path::PathBuf;

/// The kinds of record on the disk, for naming a record in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    Superblock,
    NodeEntry,
    ConfigStamp,
    Heartbeat,
    Claim,
    ClusterState,
    NodeRequest,
    Acks,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Superblock => "superblock",
            RecordKind::NodeEntry => "node table entry",
            RecordKind::ConfigStamp => "config stamp",
            RecordKind::Heartbeat => "heartbeat record",
            RecordKind::Claim => "claim record",
            RecordKind::ClusterState => "cluster state record",
            RecordKind::NodeRequest => "node request record",
            RecordKind::Acks => "acknowledgement record",
        })
    }
}

/// What is wrong with a record that did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// All zeros: never written, or wiped.
    Blank,
    BadMagic {
        found: u32,
        expected: u32,
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
    NewerVersion {
        found: u16,
        supported: u16,
    },
    OlderVersion {
        found: u16,
        supported: u16,
    },
    Truncated,
    /// The frame is intact but a field holds an impossible value.
    Invalid(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Blank => write!(f, "blank (all zeros)"),
            Problem::BadMagic { found, expected } => {
                write!(f, "bad magic {found:#010x} (expected {expected:#010x})")
            }
            Problem::Checksum { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Problem::NewerVersion { found, supported } => {
                write!(f, "record version {found} is newer than this sdc supports ({supported})")
            }
            Problem::OlderVersion { found, supported } => {
                write!(f, "record version {found} is older than this sdc reads ({supported})")
            }
            Problem::Truncated => write!(f, "truncated"),
            Problem::Invalid(what) => write!(f, "invalid: {what}"),
        }
    }
}

/// A record that failed to decode: never used as data, always named with its offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {kind} at offset {offset}: {problem}")]
pub struct CorruptRecord {
    pub kind: RecordKind,
    pub offset: u64,
    pub problem: Problem,
}

/// Errors of opening, formatting and updating the membership database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is neither a block device nor a regular file")]
    NotADisk { path: PathBuf },
    #[error("{path}: the file system does not support direct I/O (O_DIRECT); use --io mmap for a one-host cluster")]
    DirectIoUnsupported { path: PathBuf },
    #[error("I/O error {op} {len} bytes at offset {offset}: {source}")]
    Io { op: &'static str, offset: u64, len: usize, source: std::io::Error },
    #[error("not a cluster disk: no valid superblock ({0}); format it with `sdc format`")]
    NotFormatted(String),
    #[error("disk format version {found} is newer than this sdc supports ({supported}); upgrade sdc")]
    NewerFormat { found: u16, supported: u16 },
    #[error("disk format version {found} is older than this sdc reads ({supported}); stop every node and reformat it with `sdc format --force` (its node table must be entered again)")]
    OlderFormat { found: u16, supported: u16 },
    #[error("disk is truncated: it has {actual} bytes but the cluster was formatted for {expected}")]
    Truncated { actual: u64, expected: u64 },
    #[error("disk sector size {device} does not fit: the cluster was formatted with {slot}-byte slots; reformat on this device")]
    SectorSizeMismatch { device: u32, slot: u32 },
    #[error("unsupported sector size {0}: must be a power of two from 512 to 4096")]
    UnsupportedSectorSize(u32),
    #[error("disk too small: {actual} bytes; {max_nodes} nodes need at least {minimum} bytes ({minimum_human})")]
    TooSmall { actual: u64, minimum: u64, minimum_human: String, max_nodes: u16 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
}

impl DbError {
    pub(crate) fn io(op: &'static str, offset: u64, len: usize, source: std::io::Error) -> Self {
        DbError::Io { op, offset, len, source }
    }
}
