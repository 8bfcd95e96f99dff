//! [`ProbedRaw`]: a raw image whose format was probed, not named, refuses writes that
//! would change what probing sees (QEMU's rule for probed raw images).
//!
//! Without it a guest could write a qcow2 or VMDK header into the first sector of its raw
//! disk; the next time the image is opened without `-f raw` it would be taken for a qcow2
//! image and its "backing file" (any host file) would be read into the guest. Only writes
//! that touch the first 512 bytes are checked: the new first sector must still probe as
//! raw. Zero writes and discards can only make it read as zeros, which probes as raw.

use crate::device::{BlockDevice, Extent};
use crate::driver::Format;
use crate::error::{Error, Result};

/// qemu-img's warning when an image whose format was probed as raw is opened for writing
/// (printed by every command that writes it: resize, commit, amend, snapshot, check -r,
/// rebase).
pub fn warning(path: &std::path::Path) -> String {
    format!(
        "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
         Specify the 'raw' format explicitly to remove the restrictions.",
        path.display()
    )
}

/// Print [`warning`] on stderr, as qemu-img does whatever `-q` says.
pub fn warn(path: &std::path::Path) {
    eprintln!("{}", warning(path));
}

/// Bytes probing looks at.
pub const PROBE_BYTES: u64 = 512;

/// A raw device opened by probing. See the module documentation.
pub struct ProbedRaw {
    inner: Box<dyn BlockDevice>,
    probe: fn(&[u8]) -> Format,
}

impl ProbedRaw {
    /// Guard `inner`, a raw device whose format was probed with `probe`.
    pub fn new(inner: Box<dyn BlockDevice>, probe: fn(&[u8]) -> Format) -> Self {
        ProbedRaw { inner, probe }
    }
}

impl BlockDevice for ProbedRaw {
    fn format_name(&self) -> &'static str {
        self.inner.format_name()
    }
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if offset < PROBE_BYTES && !buf.is_empty() {
            let n = PROBE_BYTES.min(self.inner.virtual_size()) as usize;
            let mut first = vec![0u8; n];
            self.inner.read_at(&mut first, 0)?;
            let start = offset as usize;
            let end = (start + buf.len()).min(n);
            if start < end {
                first[start..end].copy_from_slice(&buf[..end - start]);
            }
            let now = (self.probe)(&first);
            if now.name() != "raw" {
                return Err(Error::ReadOnly(format!(
                    "refusing to write to block 0 of an image probed as raw: the write would make it look like {now}; name the format (-f raw) to allow it"
                )));
            }
        }
        self.inner.write_at(buf, offset)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.inner.discard(offset, len)
    }
    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        self.inner.block_status(offset, max_len)
    }
    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<crate::device::MapStatus> {
        self.inner.map_status(offset, max_len)
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn cluster_size(&self) -> Option<u64> {
        self.inner.cluster_size()
    }
    fn resize(&mut self, new_size: u64) -> Result<()> {
        self.inner.resize(new_size)
    }
}
