//! An open VDI image: the block map in memory, guest reads and writes, allocation of new
//! blocks, block status, and the flush order that keeps the file consistent.
//!
//! Each 1 MiB guest block maps through one block-map entry: an index into the data area
//! (data block `i` starts at `offset_data + i MiB`), [`UNALLOCATED`] (the parent's data for
//! undo and differencing images, zeros otherwise) or [`DISCARDED`] (zeros).
//!
//! Allocation appends a whole block at the next free index: the guest bytes, with the
//! rest of the block taken from the parent (or zeros). The block map and the header's
//! allocated-block count change only in memory until [`BlockDevice::flush`], which writes
//! in this order: sync the data blocks; write the header (the new count), sync; write the
//! changed block-map sectors, sync. A power cut before the header leaves unreferenced data
//! past the end of the used blocks; between header and block map, a count one block too
//! high (QEMU's check reports the mismatch; nothing is lost and no block is handed out
//! twice, because the next free index is taken as the larger of the count and the block
//! map's highest index plus one; the next writable open corrects the count).

use super::header::{Header, ImageType, DISCARDED, HEADER_LEN, SECTOR, UNALLOCATED};
use crate::device::{check_range, BlockDevice, Extent, ExtentKind, MapStatus};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{ByteOrder, LittleEndian as LE};
use std::collections::BTreeSet;

/// An open VDI image over any storage.
pub struct Vdi<S: Storage> {
    storage: S,
    header: Header,
    bmap: Vec<u32>,
    read_only: bool,
    parent: Option<Box<dyn BlockDevice>>,
    next_index: u32,
    /// Block-map sectors changed since the last flush.
    dirty_sectors: BTreeSet<u64>,
}

fn ioerr(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(format!("vdi: {what}"), e)
}

impl<S: Storage> Vdi<S> {
    /// Open the image in `storage`: check the header (QEMU's checks and the layout), then
    /// read the block map.
    pub fn open(storage: S, read_only: bool) -> Result<Self> {
        let file_len = storage.len().map_err(ioerr("reading the file length"))?;
        let mut first = [0u8; HEADER_LEN];
        storage
            .read_at(&mut first, 0)
            .map_err(ioerr("reading the header"))?;
        if file_len < HEADER_LEN as u64 {
            return Err(Error::corrupt(
                "VDI header",
                0,
                "the file is shorter than one sector",
            ));
        }
        let header = Header::parse(&first)?;
        header.validate(file_len)?;
        let mut raw = vec![0u8; header.bmap_bytes() as usize];
        storage
            .read_at(&mut raw, u64::from(header.offset_bmap))
            .map_err(ioerr("reading the block map"))?;
        let mut bmap = vec![0u32; header.blocks_in_image as usize];
        LE::read_u32_into(&raw[..bmap.len() * 4], &mut bmap);
        let next_index = next_free_index(&header, &bmap, read_only);
        Ok(Vdi {
            storage,
            header,
            bmap,
            read_only,
            parent: None,
            next_index,
            dirty_sectors: BTreeSet::new(),
        })
    }

    /// The header as read (with the allocated count as of the last flush).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The block map.
    pub fn block_map(&self) -> &[u32] {
        &self.bmap
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    fn block_size(&self) -> u64 {
        u64::from(self.header.block_size)
    }

    /// The data block behind guest block `bi`, checked against the image's block count.
    fn entry(&self, bi: u64) -> Result<u32> {
        let e = self.bmap.get(bi as usize).copied().unwrap_or(UNALLOCATED);
        if e < DISCARDED && e >= self.header.blocks_in_image {
            return Err(Error::corrupt(
                "VDI block map",
                u64::from(self.header.offset_bmap) + bi * 4,
                format!(
                    "entry {bi} names data block {e}, past the {} blocks of the image",
                    self.header.blocks_in_image
                ),
            ));
        }
        Ok(e)
    }

    /// Read from the parent (or zeros past its end, or without one).
    fn read_parent(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        buf.fill(0);
        if let Some(p) = self.parent.as_mut() {
            let size = p.virtual_size();
            if offset < size {
                let n = buf.len().min((size - offset) as usize);
                p.read_at(&mut buf[..n], offset)?;
            }
        }
        Ok(())
    }

    /// Append a new data block for guest block `bi` holding what the guest reads there now
    /// with `data` written at `within`.
    fn allocate(&mut self, bi: u64, within: usize, data: &[u8]) -> Result<()> {
        if self.next_index >= self.header.blocks_in_image {
            return Err(Error::corrupt(
                "VDI header",
                0x184,
                format!(
                    "no free data block: {} of {} are in use",
                    self.next_index, self.header.blocks_in_image
                ),
            ));
        }
        let bs = self.block_size() as usize;
        let mut block = vec![0u8; bs];
        let old = self.entry(bi)?;
        if old == UNALLOCATED && data.len() < bs && self.header.image_type.has_parent() {
            self.read_parent(&mut block, bi * bs as u64)?;
        }
        block[within..within + data.len()].copy_from_slice(data);
        let index = self.next_index;
        self.storage
            .write_at(&block, self.header.block_offset(index))
            .map_err(ioerr("writing a new data block"))?;
        self.next_index += 1;
        self.bmap[bi as usize] = index;
        self.dirty_sectors.insert(bi * 4 / SECTOR);
        Ok(())
    }

    /// Set the block-map entry of guest block `bi` (kept in memory until the flush).
    fn set_entry(&mut self, bi: u64, value: u32) {
        self.bmap[bi as usize] = value;
        self.dirty_sectors.insert(bi * 4 / SECTOR);
    }

    /// What guest block `bi` holds, for block status.
    fn kind(&self, bi: u64) -> Result<(ExtentKind, Option<u64>)> {
        Ok(match self.entry(bi)? {
            DISCARDED => (ExtentKind::Zero, None),
            UNALLOCATED if self.header.image_type.has_parent() => (ExtentKind::Unallocated, None),
            UNALLOCATED => (ExtentKind::Zero, None),
            i => (ExtentKind::Data, Some(self.header.block_offset(i))),
        })
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("the VDI image is open read-only".into()));
        }
        Ok(())
    }

    /// Write the changed block map and header in the crash-safe order (see the module
    /// documentation).
    fn write_metadata(&mut self) -> Result<()> {
        self.storage
            .flush()
            .map_err(ioerr("flushing data blocks"))?;
        if self.next_index != self.header.blocks_allocated {
            self.header.blocks_allocated = self.next_index;
            self.storage
                .write_at(&self.header.write(), 0)
                .map_err(ioerr("writing the header"))?;
            self.storage.flush().map_err(ioerr("flushing the header"))?;
        }
        let sectors: Vec<u64> = std::mem::take(&mut self.dirty_sectors)
            .into_iter()
            .collect();
        for s in sectors {
            let first = (s * SECTOR / 4) as usize;
            let last = (first + (SECTOR / 4) as usize).min(self.bmap.len());
            let mut buf = vec![0u8; (last - first) * 4];
            LE::write_u32_into(&self.bmap[first..last], &mut buf);
            self.storage
                .write_at(&buf, u64::from(self.header.offset_bmap) + s * SECTOR)
                .map_err(ioerr("writing the block map"))?;
        }
        self.storage
            .flush()
            .map_err(ioerr("flushing the block map"))
    }
}

/// The data block the next allocation takes: past every block the map names and every
/// block the header counts. A writable open also takes back what a power cut between the
/// header and the block map left counted but unused (the count is then one or more blocks
/// too high while the map's blocks are dense from 0): the next flush writes the corrected
/// count, so QEMU's check passes again.
fn next_free_index(header: &Header, bmap: &[u32], read_only: bool) -> u32 {
    let used: Vec<u32> = bmap.iter().copied().filter(|&e| e < DISCARDED).collect();
    let highest = used.iter().max().map_or(0, |&e| e + 1);
    let dense = used.len() as u64 == u64::from(highest);
    if !read_only && dense && header.blocks_allocated > highest {
        highest
    } else {
        header.blocks_allocated.max(highest)
    }
}

impl<S: Storage> BlockDevice for Vdi<S> {
    fn format_name(&self) -> &'static str {
        "vdi"
    }

    fn virtual_size(&self) -> u64 {
        self.header.virtual_size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.virtual_size(), offset, buf.len() as u64)?;
        let bs = self.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (bi, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match self.entry(bi)? {
                DISCARDED => part.fill(0),
                UNALLOCATED => self.read_parent(part, pos)?,
                i => self
                    .storage
                    .read_at(part, self.header.block_offset(i) + within)
                    .map_err(ioerr("reading a data block"))?,
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.virtual_size(), offset, buf.len() as u64)?;
        let bs = self.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (bi, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            let part = &buf[done..done + n];
            match self.entry(bi)? {
                UNALLOCATED | DISCARDED => self.allocate(bi, within as usize, part)?,
                i => self
                    .storage
                    .write_at(part, self.header.block_offset(i) + within)
                    .map_err(ioerr("writing a data block"))?,
            }
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.virtual_size(), offset, len)?;
        let bs = self.block_size();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (bi, within) = (pos / bs, pos % bs);
            let n = (bs - within).min(end - pos);
            let e = self.entry(bi)?;
            let reads_zero =
                e == DISCARDED || (e == UNALLOCATED && !self.header.image_type.has_parent());
            if reads_zero {
                // Nothing to do.
            } else if n == bs && e == UNALLOCATED {
                self.set_entry(bi, DISCARDED);
            } else {
                // Allocated blocks are zeroed in place: the block map and the allocated
                // count stay consistent, as QEMU's check wants them.
                let zeros = vec![0u8; n as usize];
                self.write_at(&zeros, pos)?;
            }
            pos += n;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        // A discard may leave data as it is; VDI cannot give a block back without
        // moving other blocks, and QEMU does not either.
        self.check_writable()?;
        check_range(self.virtual_size(), offset, len)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.dirty_sectors.is_empty() && self.next_index == self.header.blocks_allocated {
            return self.storage.flush().map_err(ioerr("flushing"));
        }
        self.write_metadata()
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        let size = self.virtual_size();
        check_range(size, offset, 1)?;
        let bs = self.block_size();
        let end = offset.saturating_add(max_len.max(1)).min(size);
        let (kind, host) = self.kind(offset / bs)?;
        let host_offset = host.map(|h| h + offset % bs);
        let mut pos = (offset / bs + 1) * bs;
        while pos < end {
            let (k, h) = self.kind(pos / bs)?;
            let contiguous = match (host_offset, h) {
                (Some(first), Some(here)) => first + (pos - offset) == here,
                (None, None) => true,
                _ => false,
            };
            if k != kind || !contiguous {
                break;
            }
            pos += bs;
        }
        let length = pos.min(end) - offset;
        if kind == ExtentKind::Unallocated {
            if let Some(p) = self.parent.as_mut() {
                // Resolve through the parent; past its end the guest sees zeros.
                let psize = p.virtual_size();
                if offset < psize {
                    let mut sub = p.block_status(offset, length.min(psize - offset))?;
                    sub.depth += 1;
                    return Ok(sub);
                }
            }
        }
        Ok(Extent {
            start: offset,
            length,
            kind,
            host_offset,
            compressed: false,
            depth: 0,
        })
    }

    /// As QEMU: the data of a static image is refined by the host file (a hole in it
    /// reads zeros, and the run keeps its offset); a dynamic image's blocks are not.
    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<MapStatus> {
        let extent = self.block_status(offset, max_len)?;
        if self.header.image_type != ImageType::Static {
            return Ok(MapStatus::from_extent(extent));
        }
        MapStatus::over_file(extent, &self.storage).map_err(ioerr("querying holes"))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.block_size())
    }

    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        if !self.header.image_type.has_parent() {
            return Err(Error::unsupported(
                "a parent for a VDI image that is not differencing",
            ));
        }
        self.parent = Some(backing);
        Ok(())
    }
}

impl<S: Storage> Drop for Vdi<S> {
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.flush();
        }
    }
}
