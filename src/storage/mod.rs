//! Positioned I/O: the bottom layer every format driver sits on.
//!
//! A [`Storage`] is a byte array with a length that can be read and written at any offset,
//! flushed to stable storage, and resized. These implementations live here:
//!
//! * [`FileStorage`]: a host file, using `pread`/`pwrite`, `fdatasync`, `fallocate` and
//!   `SEEK_DATA`/`SEEK_HOLE` where the platform has them;
//! * [`MemStorage`]: a growable in-memory buffer, for tests and scratch images;
//! * [`FaultStorage`]: an in-memory buffer that models power loss. It remembers which bytes
//!   reached "stable storage" (the state at the last completed flush) and can be told to stop
//!   after the Nth write or flush, so tests can replay every cut point of an operation;
//! * [`SequentialCheck`]: a wrapper that refuses whatever an upload stream could not do
//!   (see [`Storage::sequential`]), to test writers of sequential output.
//!
//! A [`Namespace`] opens and creates storages by name: [`HostFiles`] for the host's files
//! (and, through [`rbd`], images on Ceph RBD named `rbd:...`; through [`s3`], objects in
//! S3-compatible storage named `s3://BUCKET/KEY`), [`MemFiles`] for in-memory ones.
//!
//! Reads past the end of the storage return zeros, as QEMU's file driver does; format
//! drivers that care about the file length check it themselves before reading.

pub mod attrs;
mod fault;
mod file;
pub mod lock;
mod memory;
mod namespace;
pub mod rbd;
pub mod s3;
mod sequential_check;

pub use fault::{FaultState, FaultStorage, PowerSupply};
pub use file::{FileStorage, OpenOptions};
pub use memory::MemStorage;
pub use namespace::{HostFiles, MemFiles, Namespace};
pub use sequential_check::SequentialCheck;

use std::io;
use std::path::{Path, PathBuf};

/// The name that identifies the file or image `path` points at: the canonical host path,
/// for an RBD name its pool, image and snapshot (see [`rbd::identity`]), for an S3 name
/// its bucket and key.
pub fn canonical_name(path: &Path) -> io::Result<PathBuf> {
    match rbd::identity(path).or_else(|| s3::identity(path)) {
        Some(id) => Ok(PathBuf::from(id)),
        None => std::fs::canonicalize(path),
    }
}

/// `path` as messages show it: an RBD name with any `key=` value redacted (see
/// [`rbd::name::redacted`]), any other name as it is.
pub fn display_name(path: &Path) -> String {
    rbd::name::redacted(&path.to_string_lossy())
}

/// Whether `path` names something other than a host file (an `rbd:` image, an `s3://`
/// object): host-file steps (attributes, existence checks, removal on failure) do not
/// apply to it.
pub fn is_remote(path: &Path) -> bool {
    rbd::is_rbd_name(path) || s3::is_s3_name(path)
}

/// Positioned byte storage. Methods take `&self` so one storage can be shared between
/// threads (the parallel convert engine writes from a pool of workers).
pub trait Storage: Send + Sync {
    /// Fill `buf` from `offset`. Bytes past the end of the storage read as zero.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Write all of `buf` at `offset`, growing the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// The end of writing: nothing is written after it. The default flushes; a
    /// [`sequential`](Self::sequential) storage completes its upload here (before, the
    /// result does not exist), so a format writer's `close` calls it last.
    fn finish(&self) -> io::Result<()> {
        self.flush()
    }

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncate or extend to `len` bytes (new bytes read as zero).
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Deallocate `[offset, offset+len)` so that it reads as zeros. The default writes zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zero_bytes(self, offset, len)
    }

    /// Reserve host space for `[offset, offset+len)` without changing what it reads as.
    /// The default only extends the length.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len);
        if end > self.len()? {
            self.set_len(end)?;
        }
        Ok(())
    }

    /// Whether `offset` lies in allocated data, and how many bytes from `offset` share that
    /// state. The default reports everything up to the end as data.
    fn data_extent(&self, offset: u64) -> io::Result<(bool, u64)> {
        let len = self.len()?;
        Ok((true, len.saturating_sub(offset)))
    }

    /// Bytes of host storage actually used (for `info`'s actual-size); an error of kind
    /// `Unsupported` when the storage cannot tell (info then says "unavailable").
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.len()
    }

    /// The protocol name qemu-img's info gives this kind of storage (`file`, `rbd`).
    fn protocol(&self) -> &'static str {
        "file"
    }

    /// The storage's own allocation unit where qemu-img's info reports one as the
    /// protocol's cluster size (an RBD image's object size); `None` for host files.
    fn cluster_size(&self) -> Option<u64> {
        None
    }

    /// Whether this storage takes writes only in order: each `write_at` must start at or
    /// past the end of every earlier write (bytes skipped over read as zeros), and nothing
    /// written can be read back or rewritten. An upload stream (an S3 multipart upload) is
    /// such a storage. A format writer that sees `true` lays its output out sequentially
    /// (all metadata computed before the data it describes is written), or refuses.
    fn sequential(&self) -> bool {
        false
    }
}

/// Write `len` zero bytes at `offset` in bounded chunks.
pub fn write_zero_bytes<S: Storage + ?Sized>(s: &S, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        s.write_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn finish(&self) -> io::Result<()> {
        (**self).finish()
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).allocate(offset, len)
    }
    fn data_extent(&self, offset: u64) -> io::Result<(bool, u64)> {
        (**self).data_extent(offset)
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        (**self).allocated_bytes()
    }
    fn protocol(&self) -> &'static str {
        (**self).protocol()
    }
    fn cluster_size(&self) -> Option<u64> {
        (**self).cluster_size()
    }
    fn sequential(&self) -> bool {
        (**self).sequential()
    }
}

/// Copy the part of `data` that overlaps `[offset, offset+buf.len())` into `buf`, zeroing
/// the rest. Shared by the in-memory storages.
pub(crate) fn read_from_slice(data: &[u8], buf: &mut [u8], offset: u64) {
    let len = data.len() as u64;
    if offset >= len {
        buf.fill(0);
        return;
    }
    let start = offset as usize;
    let avail = (len - offset).min(buf.len() as u64) as usize;
    buf[..avail].copy_from_slice(&data[start..start + avail]);
    buf[avail..].fill(0);
}

/// Write `buf` into `data` at `offset`, growing it with zeros as needed.
pub(crate) fn write_to_vec(data: &mut Vec<u8>, buf: &[u8], offset: u64) -> io::Result<()> {
    let end = offset
        .checked_add(buf.len() as u64)
        .filter(|&e| e <= MEM_STORAGE_LIMIT)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "in-memory storage limit"))?;
    if end as usize > data.len() {
        data.resize(end as usize, 0);
    }
    data[offset as usize..end as usize].copy_from_slice(buf);
    Ok(())
}

/// Resize an in-memory buffer, refusing sizes past [`MEM_STORAGE_LIMIT`].
pub(crate) fn resize_vec(data: &mut Vec<u8>, len: u64) -> io::Result<()> {
    if len > MEM_STORAGE_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "in-memory storage limit",
        ));
    }
    data.resize(len as usize, 0);
    Ok(())
}

/// In-memory storages refuse to grow past 4 GiB: they exist for tests.
pub const MEM_STORAGE_LIMIT: u64 = 4 << 30;

/// The text of `e` as C's `strerror` gives it (and QEMU prints it): without the
/// " (os error N)" Rust adds to errors from the system.
pub fn strerror(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map_or(text.clone(), str::to_string),
        None => text,
    }
}

#[cfg(test)]
mod strerror_tests {
    use super::strerror;
    use std::io;

    #[test]
    fn system_errors_read_as_strerror_and_others_as_they_are() {
        let enoent = io::Error::from_raw_os_error(2);
        assert_eq!(strerror(&enoent), "No such file or directory");
        let custom = io::Error::other("the PUT ended early (os error 2)");
        assert_eq!(strerror(&custom), "the PUT ended early (os error 2)");
    }
}
