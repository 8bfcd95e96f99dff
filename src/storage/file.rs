//! [`FileStorage`]: a host file accessed with positioned I/O.

use super::Storage;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// How to open a file for [`FileStorage::open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open for writing as well as reading.
    pub write: bool,
    /// Skip `fdatasync` on flush (qemu-img's `cache=unsafe`, its default for convert output).
    pub unsafe_cache: bool,
}

/// A host file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    unsafe_cache: bool,
}

impl FileStorage {
    /// Open an existing file.
    pub fn open(path: &Path, opts: OpenOptions) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(opts.write)
            .open(path)?;
        Ok(FileStorage {
            file,
            unsafe_cache: opts.unsafe_cache,
        })
    }

    /// Create (or truncate) a file for writing.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // Truncate only a file that has contents: truncating an empty file to zero makes
        // ext4 flush the whole file when it is closed (its replace-by-truncate heuristic).
        if file.metadata()?.len() > 0 {
            file.set_len(0)?;
        }
        Ok(FileStorage {
            file,
            unsafe_cache: false,
        })
    }

    /// Wrap an open file.
    pub fn from_file(file: File) -> Self {
        FileStorage {
            file,
            unsafe_cache: false,
        }
    }

    /// Turn `fdatasync` on flush off (`true`) or on.
    pub fn set_unsafe_cache(&mut self, unsafe_cache: bool) {
        self.unsafe_cache = unsafe_cache;
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.unsafe_cache {
            Ok(())
        } else {
            self.file.sync_data()
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let flags = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a valid descriptor with in-range arguments has no memory effects.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                flags,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            super::write_zero_bytes(self, offset, len)
        }
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: as above.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let end = offset.saturating_add(len);
        if end > self.len()? {
            self.set_len(end)?;
        }
        Ok(())
    }

    fn data_extent(&self, offset: u64) -> io::Result<(bool, u64)> {
        let len = self.len()?;
        if offset >= len {
            return Ok((false, 0));
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek only moves this descriptor's offset; we never use that offset since
        // all I/O here is positioned.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // ENXIO: no data after offset, the rest is a hole.
                Some(libc::ENXIO) => Ok((false, len - offset)),
                _ => Ok((true, len - offset)),
            };
        }
        let data = data as u64;
        if data > offset {
            return Ok((false, data - offset));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Ok((true, len - offset));
        }
        Ok((true, (hole as u64).min(len).saturating_sub(offset).max(1)))
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
}
