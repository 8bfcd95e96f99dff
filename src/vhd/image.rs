//! An open VHD image: finding and checking the footer, the BAT and the sector bitmaps in
//! memory, guest reads and writes, allocation of new blocks, block status, and the flush
//! order that keeps the file consistent.
//!
//! A fixed disk is its data followed by the footer. A dynamic or differencing disk maps
//! each block through one BAT entry: the sector where the block's bitmap starts (its data
//! follows the bitmap) or [`UNALLOCATED`]. In a differencing disk a set bitmap bit means
//! the sector is in this file and a clear one that it reads from the parent; a dynamic
//! disk is read as QEMU reads it, whole blocks from the file whatever their bits say.
//!
//! Allocation puts a block where the footer was: the footer is first written at the new
//! end of the file, then the block's data, so the file ends in a valid footer at every
//! step. New bitmaps (all ones in a dynamic disk, as QEMU writes them; the written sectors
//! in a differencing one), changed bitmaps and BAT entries stay in memory until
//! [`BlockDevice::flush`], which writes in this order: sync the data (and the moved
//! footer); write the bitmaps, sync; write the changed BAT sectors, sync. A power cut thus
//! leaves at worst a block that no BAT entry names yet (space QEMU and vdisk reuse), and a
//! bitmap never marks a sector whose data is not durable.

use super::dynamic::{validate_blocks, DynamicHeader, Region, HEADER_LEN, UNALLOCATED};
use super::footer::{DiskType, Footer, FOOTER_LEN, SECTOR};
use crate::device::{check_range, BlockDevice, Extent, ExtentKind, MapStatus};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian as BE, ByteOrder};
use std::collections::BTreeMap;

/// Dirty bitmaps kept before a write flushes them on its own.
const MAX_DIRTY_BITMAPS: usize = 1024;
/// Clean bitmaps kept for reads of a differencing disk.
const MAX_CLEAN_BITMAPS: usize = 256;
/// The unit in which writes of zeros to a new block are skipped.
const PAGE: u64 = 4096;
/// New blocks whose written pages are tracked (past these, zeros are written).
const MAX_FRESH_BLOCKS: usize = 1 << 16;
/// Largest buffer a zero write uses.
const ZERO_CHUNK: u64 = 1 << 20;

/// The dynamic part of an open image.
struct Dynamic {
    header: DynamicHeader,
    bat: Vec<u32>,
    /// Where the next block's bitmap goes (where the footer is).
    next_block: u64,
    /// The file length as vdisk left it.
    file_len: u64,
    /// Bitmaps read or changed, by block; `true` marks a changed one.
    bitmaps: BTreeMap<u64, (Vec<u8>, bool)>,
    /// BAT sectors changed since the last flush.
    dirty_bat: std::collections::BTreeSet<u64>,
    /// Blocks of a dynamic disk allocated since the image was opened, with the pages
    /// written to each: an unwritten page reads as zeros, so zeros need not be written
    /// there (a converted image keeps its holes).
    fresh: BTreeMap<u64, Vec<u64>>,
}

/// An open VHD image over any storage.
pub struct Vhd<S: Storage> {
    storage: S,
    footer: Footer,
    dynamic: Option<Dynamic>,
    size: u64,
    read_only: bool,
    parent: Option<Box<dyn BlockDevice>>,
}

fn ioerr(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(format!("vhd: {what}"), e)
}

/// Read the footer QEMU reads: the copy at offset 0 when the file starts with the
/// cookie, else the last 512 bytes, which must then describe a fixed disk.
pub fn read_footer<S: Storage + ?Sized>(storage: &S) -> Result<Footer> {
    let file_len = storage.len().map_err(ioerr("reading the file length"))?;
    if file_len < FOOTER_LEN as u64 {
        return Err(Error::invalid("File too small for a VHD header"));
    }
    let mut b = [0u8; FOOTER_LEN];
    storage
        .read_at(&mut b, 0)
        .map_err(ioerr("reading the footer copy"))?;
    // A fixed disk of no data has its one footer at 0; any other fixed footer found there
    // is guest data that happens to look like one, and the end footer counts.
    let front = Footer::parse(&b).ok();
    if front.is_none_or(|f| f.disk_type == DiskType::Fixed) {
        storage
            .read_at(&mut b, file_len - FOOTER_LEN as u64)
            .map_err(ioerr("reading the footer"))?;
        let f = Footer::parse(&b)?;
        if f.disk_type != DiskType::Fixed {
            return Err(Error::invalid("invalid VPC image"));
        }
        f.verify_checksum()?;
        return Ok(f);
    }
    let f = Footer::parse(&b)?;
    f.verify_checksum()?;
    Ok(f)
}

impl<S: Storage> Vhd<S> {
    /// Open the image in `storage`: the footer (QEMU's checks), and for dynamic and
    /// differencing disks the dynamic header and the BAT, checked before use.
    pub fn open(storage: S, read_only: bool) -> Result<Self> {
        let footer = read_footer(&storage)?;
        footer.validate_size()?;
        let size = footer.virtual_size();
        let file_len = storage.len().map_err(ioerr("reading the file length"))?;
        let dynamic = if footer.disk_type == DiskType::Fixed {
            if size > file_len - FOOTER_LEN as u64 {
                return Err(Error::corrupt(
                    "VHD footer",
                    file_len - FOOTER_LEN as u64,
                    format!(
                        "the disk size {size} is larger than the {} data bytes of the file",
                        file_len - FOOTER_LEN as u64
                    ),
                ));
            }
            None
        } else {
            Some(open_dynamic(&storage, &footer, size, file_len)?)
        };
        Ok(Vhd {
            storage,
            footer,
            dynamic,
            size,
            read_only,
            parent: None,
        })
    }

    /// The footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header, for dynamic and differencing disks.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.dynamic.as_ref().map(|d| &d.header)
    }

    /// The BAT (empty for fixed disks).
    pub fn bat(&self) -> &[u32] {
        self.dynamic.as_ref().map_or(&[], |d| &d.bat)
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    fn is_differencing(&self) -> bool {
        self.footer.disk_type == DiskType::Differencing
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("the VHD image is open read-only".into()));
        }
        Ok(())
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

    /// The sector bitmap of block `bi` (read once, then kept).
    fn bitmap(&mut self, bi: u64) -> Result<&mut Vec<u8>> {
        let d = dynamic_mut(&mut self.dynamic)?;
        if !d.bitmaps.contains_key(&bi) {
            let clean = d.bitmaps.values().filter(|(_, dirty)| !dirty).count();
            if clean >= MAX_CLEAN_BITMAPS {
                d.bitmaps.retain(|_, (_, dirty)| *dirty);
            }
            let mut b = vec![0u8; d.header.bitmap_size() as usize];
            let at = u64::from(d.bat[bi as usize]) * SECTOR;
            self.storage
                .read_at(&mut b, at)
                .map_err(ioerr("reading a sector bitmap"))?;
            d.bitmaps.insert(bi, (b, false));
        }
        d.bitmaps
            .get_mut(&bi)
            .map(|(b, _)| b)
            .ok_or_else(|| Error::invalid("vhd: bitmap cache"))
    }

    /// Whether sector `sector` of block `bi` is in this file, and how many sectors from
    /// it (up to `max`) share its state.
    fn sector_run(&mut self, bi: u64, sector: u64, max: u64) -> Result<(bool, u64)> {
        let bits = self.bitmap(bi)?;
        let bit = |s: u64| bits[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
        let state = bit(sector);
        let mut n = 1;
        while n < max && bit(sector + n) == state {
            n += 1;
        }
        Ok((state, n))
    }

    /// Where guest block `bi` starts in the file (its data, past the bitmap), if it is
    /// there.
    fn block_data(&self, bi: u64) -> Option<u64> {
        let d = self.dynamic.as_ref()?;
        match d.bat.get(bi as usize).copied() {
            None | Some(UNALLOCATED) => None,
            Some(e) => Some(u64::from(e) * SECTOR + d.header.bitmap_size()),
        }
    }

    fn block_size(&self) -> u64 {
        self.dynamic
            .as_ref()
            .map_or(SECTOR, |d| u64::from(d.header.block_size))
    }

    /// Read `buf` from guest block `bi`, at `within` bytes into it.
    fn read_block(&mut self, buf: &mut [u8], bi: u64, within: u64) -> Result<()> {
        let pos = bi * self.block_size() + within;
        let Some(data) = self.block_data(bi) else {
            return self.read_parent(buf, pos);
        };
        if !self.is_differencing() {
            return self
                .storage
                .read_at(buf, data + within)
                .map_err(ioerr("reading a data block"));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = within + done as u64;
            let sector = at / SECTOR;
            let last = (within + buf.len() as u64 - 1) / SECTOR;
            let (here, sectors) = self.sector_run(bi, sector, last - sector + 1)?;
            let end = ((sector + sectors) * SECTOR).min(within + buf.len() as u64);
            let part = &mut buf[done..(end - within) as usize];
            if here {
                self.storage
                    .read_at(part, data + at)
                    .map_err(ioerr("reading a data block"))?;
            } else {
                self.read_parent(part, pos + done as u64)?;
            }
            done = (end - within) as usize;
        }
        Ok(())
    }

    /// Give guest block `bi` a place in the file: the footer moves to the new end first,
    /// then the block takes its old place (see the module documentation).
    fn allocate(&mut self, bi: u64) -> Result<()> {
        let differencing = self.is_differencing();
        let footer = self.footer.write();
        let d = dynamic_mut(&mut self.dynamic)?;
        let start = d.next_block;
        let bitmap_size = d.header.bitmap_size();
        let end = start + bitmap_size + u64::from(d.header.block_size);
        let entry = u32::try_from(start / SECTOR)
            .ok()
            .filter(|&e| e != UNALLOCATED)
            .ok_or_else(|| {
                Error::unsupported("vhd: the file would grow past what a BAT entry can address")
            })?;
        self.storage
            .write_at(&footer, end)
            .map_err(ioerr("moving the footer"))?;
        // Bytes a power cut left past the old footer must not show through.
        let stale_end = d.file_len.min(end);
        if stale_end > start + bitmap_size {
            crate::storage::write_zero_bytes(
                &self.storage,
                start + bitmap_size,
                stale_end - start - bitmap_size,
            )
            .map_err(ioerr("clearing a new block"))?;
        }
        d.file_len = end + FOOTER_LEN as u64;
        d.next_block = end;
        d.bat[bi as usize] = entry;
        d.dirty_bat.insert(bi * 4 / SECTOR);
        if !differencing && d.fresh.len() < MAX_FRESH_BLOCKS {
            let pages = u64::from(d.header.block_size).div_ceil(PAGE) + 1;
            d.fresh.insert(bi, vec![0; pages.div_ceil(64) as usize]);
        }
        let fill = if differencing { 0 } else { 0xff };
        d.bitmaps
            .insert(bi, (vec![fill; bitmap_size as usize], true));
        Ok(())
    }

    /// Write `buf` into guest block `bi` at `within` bytes, allocating it if needed.
    fn write_block(&mut self, buf: &[u8], bi: u64, within: u64) -> Result<()> {
        if self.block_data(bi).is_none() {
            self.allocate(bi)?;
        }
        let data = self.block_data(bi).unwrap_or(0);
        let first = within / SECTOR;
        let last = (within + buf.len() as u64 - 1) / SECTOR;
        if !self.is_differencing() {
            self.write_dynamic(buf, bi, data, within)?;
        } else {
            // Sectors come whole from this file once their bit is set: a partly written
            // sector that reads from the parent now takes the rest from there.
            let head = first * SECTOR;
            let len = ((last + 1) * SECTOR - head) as usize;
            let mut whole = vec![0u8; len];
            let partial_head = within % SECTOR != 0;
            let partial_tail = (within + buf.len() as u64) % SECTOR != 0;
            if partial_head || partial_tail {
                self.read_block(&mut whole[..SECTOR as usize], bi, head)?;
                let tail = len - SECTOR as usize;
                self.read_block(&mut whole[tail..], bi, last * SECTOR)?;
            }
            let off = (within - head) as usize;
            whole[off..off + buf.len()].copy_from_slice(buf);
            self.storage
                .write_at(&whole, data + head)
                .map_err(ioerr("writing a data block"))?;
        }
        self.mark_sectors(bi, first, last)
    }

    /// Write `buf` at `within` bytes into block `bi` of a dynamic disk, whose data starts
    /// at `data` in the file; in a block new since the open, zero pages never written are
    /// skipped.
    fn write_dynamic(&mut self, buf: &[u8], bi: u64, data: u64, within: u64) -> Result<()> {
        let d = dynamic_mut(&mut self.dynamic)?;
        let Some(pages) = d.fresh.get_mut(&bi) else {
            return self
                .storage
                .write_at(buf, data + within)
                .map_err(ioerr("writing a data block"));
        };
        let mut run: Option<usize> = None;
        let mut at = 0usize;
        while at <= buf.len() {
            // Pages of the file (so that a skipped page is a hole the host can keep).
            let file_pos = data + within + at as u64;
            let page = file_pos / PAGE - data / PAGE;
            let next = (((file_pos / PAGE + 1) * PAGE - data - within) as usize).min(buf.len());
            let (word, bit) = ((page / 64) as usize, 1u64 << (page % 64));
            let skip = at < buf.len() && pages[word] & bit == 0 && is_zero(&buf[at..next]);
            if at == buf.len() || skip {
                if let Some(start) = run.take() {
                    self.storage
                        .write_at(&buf[start..at], data + within + start as u64)
                        .map_err(ioerr("writing a data block"))?;
                }
                if at == buf.len() {
                    break;
                }
            } else {
                pages[word] |= bit;
                run.get_or_insert(at);
            }
            at = next;
        }
        Ok(())
    }

    /// Set the bitmap bits of sectors `first..=last` of block `bi` (in memory).
    fn mark_sectors(&mut self, bi: u64, first: u64, last: u64) -> Result<()> {
        let bits = self.bitmap(bi)?;
        let mut changed = false;
        let mut s = first;
        while s <= last {
            // A whole byte of sectors at once where the range covers it.
            let (byte, whole) = ((s / 8) as usize, s % 8 == 0 && s + 7 <= last);
            let mask = if whole { 0xff } else { 0x80u8 >> (s % 8) };
            if bits[byte] & mask != mask {
                bits[byte] |= mask;
                changed = true;
            }
            s += if whole { 8 } else { 1 };
        }
        let d = dynamic_mut(&mut self.dynamic)?;
        if changed {
            if let Some(entry) = d.bitmaps.get_mut(&bi) {
                entry.1 = true;
            }
        }
        if d.bitmaps.values().filter(|(_, dirty)| *dirty).count() > MAX_DIRTY_BITMAPS {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the changed bitmaps and BAT sectors in the crash-safe order (see the module
    /// documentation).
    fn write_metadata(&mut self) -> Result<()> {
        self.storage
            .flush()
            .map_err(ioerr("flushing data blocks"))?;
        let Some(d) = self.dynamic.as_mut() else {
            return Ok(());
        };
        let mut wrote = false;
        for (&bi, (bits, dirty)) in d.bitmaps.iter_mut().filter(|(_, (_, dirty))| *dirty) {
            let at = u64::from(d.bat[bi as usize]) * SECTOR;
            self.storage
                .write_at(bits, at)
                .map_err(ioerr("writing a sector bitmap"))?;
            *dirty = false;
            wrote = true;
        }
        if wrote {
            self.storage
                .flush()
                .map_err(ioerr("flushing sector bitmaps"))?;
        }
        let sectors = std::mem::take(&mut d.dirty_bat);
        for &s in &sectors {
            let first = (s * SECTOR / 4) as usize;
            let last = (first + (SECTOR / 4) as usize).min(d.bat.len());
            let mut buf = vec![0u8; (last - first) * 4];
            BE::write_u32_into(&d.bat[first..last], &mut buf);
            self.storage
                .write_at(&buf, d.header.table_offset + s * SECTOR)
                .map_err(ioerr("writing the BAT"))?;
        }
        if !sectors.is_empty() {
            self.storage.flush().map_err(ioerr("flushing the BAT"))?;
        }
        Ok(())
    }

    /// What guest block `bi` holds from `within` on (at most `max` bytes), for block
    /// status: kind, host offset, length.
    fn status_in_block(&mut self, bi: u64, within: u64, max: u64) -> Result<Extent> {
        let pos = bi * self.block_size() + within;
        let n = (self.block_size() - within).min(max);
        let mut ext = Extent {
            start: pos,
            length: n,
            kind: ExtentKind::Data,
            host_offset: None,
            compressed: false,
            depth: 0,
        };
        match self.block_data(bi) {
            None if self.is_differencing() => ext.kind = ExtentKind::Unallocated,
            None => ext.kind = ExtentKind::Zero,
            Some(data) if !self.is_differencing() => ext.host_offset = Some(data + within),
            Some(data) => {
                let sector = within / SECTOR;
                let last = (within + n - 1) / SECTOR;
                let (here, sectors) = self.sector_run(bi, sector, last - sector + 1)?;
                ext.length = ((sector + sectors) * SECTOR - within).min(n);
                if here {
                    ext.host_offset = Some(data + within);
                } else {
                    ext.kind = ExtentKind::Unallocated;
                }
            }
        }
        Ok(ext)
    }
}

/// Whether every byte of `b` is zero (64 bytes at a time, which the compiler vectorises).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

fn dynamic_mut(d: &mut Option<Dynamic>) -> Result<&mut Dynamic> {
    d.as_mut()
        .ok_or_else(|| Error::invalid("vhd: a block operation on a fixed disk"))
}

/// Read and check the dynamic header and the BAT of a dynamic or differencing disk of
/// `size` bytes in a file of `file_len` bytes.
fn open_dynamic<S: Storage>(
    storage: &S,
    footer: &Footer,
    size: u64,
    file_len: u64,
) -> Result<Dynamic> {
    let at = footer.data_offset;
    if at
        .checked_add(HEADER_LEN as u64)
        .is_none_or(|e| e > file_len)
    {
        return Err(Error::invalid("Error reading dynamic VHD header"));
    }
    let mut b = [0u8; HEADER_LEN];
    storage
        .read_at(&mut b, at)
        .map_err(ioerr("reading the dynamic header"))?;
    let header = DynamicHeader::parse(&b)?;
    header.validate(size, file_len)?;
    let mut raw = vec![0u8; header.max_table_entries as usize * 4];
    storage
        .read_at(&mut raw, header.table_offset)
        .map_err(ioerr("reading the BAT"))?;
    let mut bat = vec![0u32; header.max_table_entries as usize];
    BE::read_u32_into(&raw, &mut bat);
    let mut regions = vec![
        Region {
            what: "footer copy",
            start: 0,
            end: FOOTER_LEN as u64,
        },
        Region {
            what: "dynamic header",
            start: at,
            end: at + HEADER_LEN as u64,
        },
        Region {
            what: "BAT",
            start: header.table_offset,
            end: header.table_offset + header.table_bytes(),
        },
    ];
    if footer.disk_type == DiskType::Differencing {
        for l in header.locators.iter().filter(|l| l.platform != 0) {
            regions.push(Region {
                what: "parent locator",
                start: l.data_offset,
                end: l.data_offset.saturating_add(l.space_bytes()),
            });
        }
    }
    let next_block = validate_blocks(
        &bat,
        header.bitmap_size(),
        u64::from(header.block_size),
        &regions,
        file_len,
    )?;
    Ok(Dynamic {
        header,
        bat,
        next_block,
        file_len,
        bitmaps: BTreeMap::new(),
        fresh: BTreeMap::new(),
        dirty_bat: Default::default(),
    })
}

impl<S: Storage> BlockDevice for Vhd<S> {
    fn format_name(&self) -> &'static str {
        "vpc"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        if self.dynamic.is_none() {
            return self
                .storage
                .read_at(buf, offset)
                .map_err(ioerr("reading data"));
        }
        let bs = self.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (bi, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            self.read_block(&mut buf[done..done + n], bi, within)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, buf.len() as u64)?;
        if self.dynamic.is_none() {
            return self
                .storage
                .write_at(buf, offset)
                .map_err(ioerr("writing data"));
        }
        let bs = self.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (bi, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            self.write_block(&buf[done..done + n], bi, within)?;
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, len)?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let bs = self.block_size().max(ZERO_CHUNK);
            let n = (bs - pos % bs).min(end - pos).min(ZERO_CHUNK);
            let ext = self.block_status(pos, n)?;
            let n = ext.length.min(n);
            // A block a dynamic disk does not have reads as zeros already.
            if ext.kind != ExtentKind::Zero {
                self.write_at(&vec![0u8; n as usize], pos)?;
            }
            pos += n;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        // A discard may leave data as it is; VHD blocks cannot be given back without
        // moving others, and QEMU does not either.
        self.check_writable()?;
        check_range(self.size, offset, len)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.write_metadata()
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(self.size, offset, 1)?;
        let max = max_len.max(1).min(self.size - offset);
        if self.dynamic.is_none() {
            let (data, len) = self
                .storage
                .data_extent(offset)
                .map_err(ioerr("querying holes"))?;
            return Ok(Extent {
                start: offset,
                length: len.min(max).max(1),
                kind: if data {
                    ExtentKind::Data
                } else {
                    ExtentKind::Zero
                },
                host_offset: Some(offset),
                compressed: false,
                depth: 0,
            });
        }
        let bs = self.block_size();
        let mut ext = self.status_in_block(offset / bs, offset % bs, max)?;
        // Runs without data continue across blocks; data stops at each block's end (the
        // next bitmap lies between).
        while ext.host_offset.is_none() && ext.length < max {
            let pos = offset + ext.length;
            let next = self.status_in_block(pos / bs, pos % bs, max - ext.length)?;
            if next.kind != ext.kind {
                break;
            }
            ext.length += next.length;
        }
        if ext.kind == ExtentKind::Unallocated {
            if let Some(p) = self.parent.as_mut() {
                // Resolve through the parent; past its end the guest sees zeros.
                let psize = p.virtual_size();
                if offset < psize {
                    let mut sub = p.block_status(offset, ext.length.min(psize - offset))?;
                    sub.depth += 1;
                    return Ok(sub);
                }
            }
        }
        Ok(ext)
    }

    /// As QEMU: a fixed disk is data throughout, refined by the host file (whose holes
    /// read zeros and keep their offset); the blocks of a dynamic disk are not refined.
    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<MapStatus> {
        let mut extent = self.block_status(offset, max_len)?;
        if self.dynamic.is_some() {
            return Ok(MapStatus::from_extent(extent));
        }
        extent.kind = ExtentKind::Data;
        MapStatus::over_file(extent, &self.storage).map_err(ioerr("querying holes"))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn cluster_size(&self) -> Option<u64> {
        self.dynamic
            .as_ref()
            .map(|d| u64::from(d.header.block_size))
    }

    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        if !self.is_differencing() {
            return Err(Error::unsupported(
                "a parent for a VHD image that is not differencing",
            ));
        }
        self.parent = Some(backing);
        Ok(())
    }
}

impl<S: Storage> Drop for Vhd<S> {
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.flush();
        }
    }
}
