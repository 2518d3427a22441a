//! Disk I/O: one trait, two back ends.
//!
//! * [`DirectDisk`]: `O_DIRECT | O_DSYNC`, aligned bounce buffers, `pread`/`pwrite`. Every read
//!   goes to the device and every write is on it when the call returns, so hosts that share a
//!   block device see each other's writes. The default for block devices.
//! * [`MmapDisk`]: a shared memory map of a regular file. Coherent between processes of one
//!   host (they share the page cache), not between hosts. Writes are flushed with `msync`
//!   before they return, so an acknowledged write survives a crash. The default for files.
//!
//! [`open_disk`] picks the back end (`IoMode::Auto`) or takes the one asked for.

use crate::error::DbError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A shared disk: byte-addressed, sector-aligned reads and writes.
pub trait Disk: Send + Sync {
    /// Reads `buf.len()` bytes at `offset`. Offset and length are multiples of the sector size.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError>;
    /// Writes `data` at `offset`; durable when this returns.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError>;
    /// Writes a record whose loss in a host crash is harmless (a heartbeat: it is rewritten
    /// every interval, and stale after any crash): visible to the other nodes when this returns,
    /// but a back end may skip making it durable.
    fn write_visible_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
        self.write_at(offset, data)
    }
    /// Size in bytes.
    fn len_bytes(&self) -> u64;
    /// Logical sector size: the unit of atomic, aligned I/O.
    fn sector_bytes(&self) -> u32;
    /// For messages: the back end and the path.
    fn describe(&self) -> String;
}

/// Which back end to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Direct I/O for a block device, mmap for a regular file.
    Auto,
    Direct,
    Mmap,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "direct" => Ok(IoMode::Direct),
            "mmap" => Ok(IoMode::Mmap),
            _ => Err(format!("unknown I/O mode {s:?}: use direct or mmap")),
        }
    }
}

fn check_aligned(offset: u64, len: usize, sector: u32, op: &'static str) -> Result<(), DbError> {
    if !offset.is_multiple_of(sector as u64) || !len.is_multiple_of(sector as usize) {
        return Err(DbError::io(op, offset, len, std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    Ok(())
}

fn check_bounds(offset: u64, len: usize, disk_len: u64, op: &'static str) -> Result<(), DbError> {
    if offset.checked_add(len as u64).is_none_or(|end| end > disk_len) {
        return Err(DbError::io(
            op,
            offset,
            len,
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "beyond the end of the disk"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(align), align).expect("valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }
    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: ptr is valid for layout.size() bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// `O_DIRECT | O_DSYNC` I/O with `pread`/`pwrite`.
pub struct DirectDisk {
    file: File,
    path: PathBuf,
    len: u64,
    sector: u32,
    block_device: bool,
}

/// Buffers are aligned to a page whatever the sector size: that satisfies every device.
const DIRECT_ALIGN: usize = 4096;

impl DirectDisk {
    pub fn open(path: &Path, writable: bool) -> Result<DirectDisk, DbError> {
        let meta = std::fs::metadata(path).map_err(|source| DbError::Open { path: path.into(), source })?;
        let block_device = meta.file_type().is_block_device();
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::EINVAL) {
                    DbError::DirectIoUnsupported { path: path.into() }
                } else {
                    DbError::Open { path: path.into(), source }
                }
            })?;
        let len = file_len(&file, path)?;
        let sector =
            if block_device { block_sector_size(&file, path)? } else { probe_file_sector_size(&file, path, len)? };
        Ok(DirectDisk { file, path: path.into(), len, sector, block_device })
    }
}

/// Size of a file or block device (seeking to the end works for both).
fn file_len(file: &File, path: &Path) -> Result<u64, DbError> {
    use std::io::Seek;
    let mut f = file;
    f.seek(std::io::SeekFrom::End(0)).map_err(|source| DbError::Open { path: path.into(), source })
}

/// The logical sector size of a block device (`BLKSSZGET`).
fn block_sector_size(file: &File, path: &Path) -> Result<u32, DbError> {
    use std::os::fd::AsRawFd;
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if rc != 0 {
        return Err(DbError::Open { path: path.into(), source: std::io::Error::last_os_error() });
    }
    Ok(size as u32)
}

/// A regular file under `O_DIRECT` needs the file system's alignment: try 512, then 4096.
fn probe_file_sector_size(file: &File, path: &Path, len: u64) -> Result<u32, DbError> {
    if len < 4096 {
        return Ok(512);
    }
    let mut buf = AlignedBuf::new(4096, DIRECT_ALIGN);
    for sector in [512u32, 4096] {
        match file.read_exact_at(buf.as_mut_slice(sector as usize), 0) {
            Ok(()) => return Ok(sector),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(source) => return Err(DbError::Open { path: path.into(), source }),
        }
    }
    Err(DbError::DirectIoUnsupported { path: path.into() })
}

impl Disk for DirectDisk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError> {
        check_aligned(offset, buf.len(), self.sector, "reading")?;
        check_bounds(offset, buf.len(), self.len, "reading")?;
        let mut bounce = AlignedBuf::new(buf.len(), DIRECT_ALIGN);
        let b = bounce.as_mut_slice(buf.len());
        self.file.read_exact_at(b, offset).map_err(|e| DbError::io("reading", offset, buf.len(), e))?;
        buf.copy_from_slice(b);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
        check_aligned(offset, data.len(), self.sector, "writing")?;
        check_bounds(offset, data.len(), self.len, "writing")?;
        let mut bounce = AlignedBuf::new(data.len(), DIRECT_ALIGN);
        let b = bounce.as_mut_slice(data.len());
        b.copy_from_slice(data);
        self.file.write_all_at(b, offset).map_err(|e| DbError::io("writing", offset, data.len(), e))
    }

    fn len_bytes(&self) -> u64 {
        self.len
    }
    fn sector_bytes(&self) -> u32 {
        self.sector
    }
    fn describe(&self) -> String {
        let what = if self.block_device { "block device" } else { "file" };
        format!("direct I/O on {what} {} ({}-byte sectors)", self.path.display(), self.sector)
    }
}

// ---------------------------------------------------------------------------------------------

/// A shared memory map of a regular file (or, on request, a block device).
pub struct MmapDisk {
    map: memmap2::MmapRaw,
    path: PathBuf,
    len: u64,
    writable: bool,
    /// 512 for a file; the device's logical sector size for a block device, so that a
    /// format through mmap sizes its slots as direct I/O will need them.
    sector: u32,
}

impl MmapDisk {
    pub fn open(path: &Path, writable: bool) -> Result<MmapDisk, DbError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| DbError::Open { path: path.into(), source })?;
        let len = file_len(&file, path)?;
        if len == 0 {
            return Err(DbError::NotFormatted(format!("{} is empty (0 bytes)", path.display())));
        }
        let is_block = file
            .metadata()
            .map_err(|source| DbError::Open { path: path.into(), source })?
            .file_type()
            .is_block_device();
        let sector = if is_block { block_sector_size(&file, path)? } else { 512 };
        let opts = {
            let mut o = memmap2::MmapOptions::new();
            o.len(len as usize);
            o
        };
        let map = if writable { opts.map_raw(&file) } else { opts.map_raw_read_only(&file) }
            .map_err(|source| DbError::Open { path: path.into(), source })?;
        Ok(MmapDisk { map, path: path.into(), len, writable, sector })
    }
}

impl Disk for MmapDisk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError> {
        check_bounds(offset, buf.len(), self.len, "reading")?;
        // SAFETY: the range is inside the mapping. Other processes may write the same bytes
        // concurrently; we only copy them out through raw pointers and never hold a reference
        // into the map, and the checksum of each record catches a torn read.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset as usize), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
        self.write_visible_at(offset, data)?;
        self.map.flush_range(offset as usize, data.len()).map_err(|e| DbError::io("flushing", offset, data.len(), e))
    }

    /// The page cache is what the processes of one host share: a write is visible to them when
    /// the copy is done. Skipping the `msync` keeps heartbeats (the most frequent write) off the
    /// file system's journal, whose stalls would otherwise count against `fence_ms`.
    fn write_visible_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
        check_bounds(offset, data.len(), self.len, "writing")?;
        if !self.writable {
            return Err(DbError::io("writing", offset, data.len(), std::io::Error::from_raw_os_error(libc::EROFS)));
        }
        // SAFETY: as in read_at; the map is writable because the disk was opened for writing.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset as usize), data.len());
        }
        Ok(())
    }

    fn len_bytes(&self) -> u64 {
        self.len
    }
    fn sector_bytes(&self) -> u32 {
        self.sector
    }
    fn describe(&self) -> String {
        format!("mmap of {}", self.path.display())
    }
}

/// Opens `path` with the back end `mode` asks for (or the default for its type).
pub fn open_disk(path: &Path, mode: IoMode, writable: bool) -> Result<Box<dyn Disk>, DbError> {
    let meta = std::fs::metadata(path).map_err(|source| DbError::Open { path: path.into(), source })?;
    let ft = meta.file_type();
    if !ft.is_block_device() && !ft.is_file() {
        return Err(DbError::NotADisk { path: path.into() });
    }
    let direct = match mode {
        IoMode::Auto => ft.is_block_device(),
        IoMode::Direct => true,
        IoMode::Mmap => false,
    };
    Ok(if direct { Box::new(DirectDisk::open(path, writable)?) } else { Box::new(MmapDisk::open(path, writable)?) })
}
