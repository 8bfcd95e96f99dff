//! Flat extents: guest bytes stored as they are in a file (FLAT, VMFS and VMFSRDM extent
//! lines), starting at a sector offset given on the extent line.

use crate::error::{Error, Result};
use crate::storage::Storage;
use std::sync::Arc;

/// An open flat extent file.
pub struct FlatExtent {
    storage: Arc<dyn Storage>,
    /// Byte offset of the extent's first guest byte in the file.
    start: u64,
}

impl FlatExtent {
    /// A flat extent whose guest data starts at byte `start` of `storage`.
    pub fn new(storage: Arc<dyn Storage>, start: u64) -> FlatExtent {
        FlatExtent { storage, start }
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Byte offset of extent-relative `rel` in the file.
    pub fn host_offset(&self, rel: u64) -> u64 {
        self.start + rel
    }

    /// Read at extent-relative `rel` (bytes past the end of the file read as zeros).
    pub fn read(&self, buf: &mut [u8], rel: u64) -> Result<()> {
        self.storage.read_at(buf, self.start + rel).map_err(|e| {
            Error::io(
                format!("VMDK flat extent: reading at {:#x}", self.start + rel),
                e,
            )
        })
    }

    /// Write at extent-relative `rel`.
    pub fn write(&self, buf: &[u8], rel: u64) -> Result<()> {
        self.storage.write_at(buf, self.start + rel).map_err(|e| {
            Error::io(
                format!("VMDK flat extent: writing at {:#x}", self.start + rel),
                e,
            )
        })
    }

    /// Make `[rel, rel+len)` read as zeros.
    pub fn write_zeroes(&self, rel: u64, len: u64) -> Result<()> {
        let at = self.start + rel;
        let file_len = self
            .storage
            .len()
            .map_err(|e| Error::io("VMDK flat extent: reading the file length", e))?;
        if at >= file_len {
            return Ok(());
        }
        self.storage
            .punch_hole(at, len.min(file_len - at))
            .map_err(|e| Error::io(format!("VMDK flat extent: zeroing at {at:#x}"), e))
    }

    /// Whether extent-relative `rel` holds data (`true`) or a hole, and for how many bytes.
    pub fn data_extent(&self, rel: u64) -> Result<(bool, u64)> {
        self.storage
            .data_extent(self.start + rel)
            .map_err(|e| Error::io("VMDK flat extent: querying holes", e))
    }

    /// Make writes durable.
    pub fn flush(&self) -> Result<()> {
        self.storage
            .flush()
            .map_err(|e| Error::io("VMDK flat extent: flushing", e))
    }
}
