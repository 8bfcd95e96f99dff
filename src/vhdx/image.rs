//! An open VHDX image: the structures read and checked at open (log replayed first), guest
//! reads and writes, allocation of payload blocks, and the order in which metadata reaches
//! the file.
//!
//! Write order: before the first write of a session, one header update gives the file new
//! write GUIDs (and an empty log). A write to a block that is not stored appends a block
//! at the next whole MiB past the end of the file, fills it (with the parent's data for a
//! differencing image) and changes the BAT entry in memory only. [`BlockDevice::flush`]
//! syncs the data, then commits the changed 4 KiB BAT pages through the log (see
//! [`super::log`]): a power cut leaves either the old BAT (the new blocks unreferenced
//! past the end of the file) or a log that the next writable open replays.

use super::bat::{BitmapState, Entry, Geometry, PayloadState, ENTRY_LEN};
use super::header::{
    choose_active, new_guid, Guid, Header, FILE_SIGNATURE, HEADER_LEN, HEADER_OFFSETS,
    HEADER_SECTION_END, MIB, ZERO_GUID,
};
use super::log::{self, SECTOR};
use super::metadata::Metadata;
use super::region::{RegionTable, Regions, TABLE_LEN, TABLE_OFFSETS};
use crate::device::{check_range, BlockDevice, Extent, ExtentKind};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{ByteOrder, LittleEndian as LE};
use std::collections::BTreeSet;

/// The most metadata-region bytes read at open.
const MAX_METADATA_READ: u64 = 8 * MIB;

/// An open VHDX image over any storage.
pub struct Vhdx<S: Storage> {
    storage: S,
    header: Header,
    slot: usize,
    regions: RegionTable,
    metadata: Metadata,
    geometry: Geometry,
    bat: Vec<Entry>,
    read_only: bool,
    parent: Option<Box<dyn BlockDevice>>,
    /// Where the next payload block goes (rounded up to a MiB when used).
    file_end: u64,
    /// A header update already gave this session its write GUIDs.
    session_started: bool,
    /// The open replayed a log.
    replayed: bool,
    /// BAT pages (4 KiB) changed since the last flush.
    dirty_pages: BTreeSet<u64>,
}

fn ioerr(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(format!("vhdx: {what}"), e)
}

/// How [`Vhdx::open`] treats the image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode<'a> {
    /// Refuse writes (and refuse to replay a log).
    pub read_only: bool,
    /// Skip the checks of BAT entries (`check` runs them itself and counts them).
    pub for_check: bool,
    /// The file name, for messages.
    pub name: &'a str,
}

impl<S: Storage> Vhdx<S> {
    /// Open the image in `storage`: headers, log (replayed on a writable open), region
    /// table, metadata and BAT, each checked before anything is sized from it.
    pub fn open(storage: S, mode: OpenMode<'_>) -> Result<Self> {
        let file_len = storage.len().map_err(ioerr("reading the file length"))?;
        let mut sig = [0u8; 8];
        storage
            .read_at(&mut sig, 0)
            .map_err(ioerr("reading the file identifier"))?;
        if &sig != FILE_SIGNATURE {
            return Err(Error::not_format("Image not in VHDX format"));
        }
        let mut buf = vec![0u8; HEADER_LEN];
        let mut read_header = |at: u64| -> Result<Option<Header>> {
            storage
                .read_at(&mut buf, at)
                .map_err(ioerr("reading a header"))?;
            Ok(Header::parse(&buf))
        };
        let (first, second) = (
            read_header(HEADER_OFFSETS[0])?,
            read_header(HEADER_OFFSETS[1])?,
        );
        let (slot, header) = choose_active(first, second)?;
        if header.log_offset < MIB || header.log_offset % MIB != 0 || header.log_version != 0 {
            return Err(Error::corrupt(
                "VHDX header",
                HEADER_OFFSETS[slot],
                "bad log offset or version",
            ));
        }
        let mut fs = Regions::default();
        fs.add(header.log_offset, u64::from(header.log_length));
        let entries = log::active_entries(&storage, &header)?;
        if !entries.is_empty() && mode.read_only {
            return Err(Error::invalid(format!(
                "Could not open '{0}': VHDX image file '{0}' opened read-only, but contains a log that needs to be replayed\nTo replay the log, run:\nqemu-img check -r all '{0}'",
                mode.name
            )));
        }
        if !entries.is_empty() {
            log::validate(&entries, file_len, header.log_offset)?;
            log::replay(&storage, &entries)?;
        }
        let mut table = vec![0u8; TABLE_LEN];
        storage
            .read_at(&mut table, TABLE_OFFSETS[0])
            .map_err(ioerr("reading the region table"))?;
        let regions = RegionTable::parse(&table, &mut fs)?;
        let md_len = u64::from(regions.metadata.length).min(MAX_METADATA_READ);
        let mut md = vec![0u8; md_len as usize];
        storage
            .read_at(&mut md, regions.metadata.offset)
            .map_err(ioerr("reading the metadata"))?;
        let metadata = Metadata::parse(&md, &regions.metadata)?;
        let geometry = Geometry::new(&metadata);
        let bat = read_bat(&storage, &regions, &geometry, file_len)?;
        let file_len = storage.len().map_err(ioerr("reading the file length"))?;
        let mut image = Vhdx {
            storage,
            header,
            slot,
            regions,
            metadata,
            geometry,
            bat,
            read_only: mode.read_only,
            parent: None,
            file_end: file_len,
            session_started: false,
            replayed: !entries.is_empty(),
            dirty_pages: BTreeSet::new(),
        };
        if !mode.for_check {
            let problems = image.bat_problems(&fs, file_len);
            if let Some(first) = problems.into_iter().next() {
                return Err(Error::invalid(first));
            }
        }
        if image.replayed {
            image.update_header(ZERO_GUID)?;
        }
        Ok(image)
    }

    /// The active header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Which header slot (0 or 1) is active.
    pub fn active_slot(&self) -> u8 {
        self.slot as u8
    }

    /// The metadata items.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The region table.
    pub fn regions(&self) -> &RegionTable {
        &self.regions
    }

    /// The BAT, payload and bitmap entries in file order.
    pub fn bat(&self) -> &[Entry] {
        &self.bat
    }

    /// The BAT geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Whether this open replayed a log.
    pub fn replayed_log(&self) -> bool {
        self.replayed
    }

    /// QEMU's checks of stored payload blocks, one message per problem: inside the file,
    /// and clear of the log and the BAT and metadata regions.
    pub fn bat_problems(&self, fs: &Regions, file_len: u64) -> Vec<String> {
        let mut out = Vec::new();
        let g = &self.geometry;
        let size = self.metadata.virtual_size;
        for (i, e) in self.bat.iter().enumerate() {
            let i = i as u64;
            if g.is_bitmap_index(i) || e.payload_state() != PayloadState::FullyPresent {
                continue;
            }
            let offset = e.offset();
            // QEMU allows a partial last block, measured from the BAT index.
            let block_len = g
                .block_size
                .min(size.saturating_sub(i.saturating_mul(g.block_size)));
            if offset >= file_len {
                out.push(format!("VHDX BAT entry {i} start offset {offset} points after end of file ({file_len}). Image has probably been truncated."));
            } else if offset + block_len > file_len {
                out.push(format!("VHDX BAT entry {i} end offset {} points after end of file ({file_len}). Image has probably been truncated.", offset + block_len - 1));
            }
            if let Err(e) = fs.check(offset, g.block_size) {
                out.push(e.to_string());
            }
        }
        out
    }

    /// The file's used regions (log, BAT, metadata), for the BAT checks.
    pub fn file_regions(&self) -> Regions {
        let mut fs = Regions::default();
        fs.add(self.header.log_offset, u64::from(self.header.log_length));
        fs.add(self.regions.bat.offset, u64::from(self.regions.bat.length));
        fs.add(
            self.regions.metadata.offset,
            u64::from(self.regions.metadata.length),
        );
        fs
    }

    fn entry_of_block(&self, block: u64) -> Entry {
        let i = self.geometry.payload_index(block) as usize;
        self.bat.get(i).copied().unwrap_or_default()
    }

    /// Read from the parent (zeros past its end or without one).
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

    /// Whether sector `sector` (of the disk) is stored in this file, for a partially
    /// present block.
    fn sector_present(&self, block: u64, sector: u64) -> Result<bool> {
        let g = self.geometry;
        let e = self
            .bat
            .get(g.bitmap_index(block) as usize)
            .copied()
            .unwrap_or_default();
        if e.bitmap_state() != BitmapState::Present {
            return Err(Error::corrupt(
                "VHDX BAT",
                self.regions.bat.offset + g.bitmap_index(block) * ENTRY_LEN,
                "a partially present block without a sector bitmap",
            ));
        }
        let within = sector % (g.chunk_ratio * (g.block_size / g.sector_size));
        let mut byte = [0u8; 1];
        self.storage
            .read_at(&mut byte, e.offset() + within / 8)
            .map_err(ioerr("reading a sector bitmap"))?;
        Ok(byte[0] & (1 << (within % 8)) != 0)
    }

    /// Fill `part` (guest bytes at `pos`, inside one block) as the guest reads them.
    fn read_block_part(&mut self, part: &mut [u8], pos: u64) -> Result<()> {
        let g = self.geometry;
        let block = pos / g.block_size;
        let e = self.entry_of_block(block);
        match e.payload_state() {
            PayloadState::FullyPresent => self
                .storage
                .read_at(part, e.offset() + pos % g.block_size)
                .map_err(ioerr("reading a payload block")),
            PayloadState::Zero | PayloadState::Undefined => {
                part.fill(0);
                Ok(())
            }
            PayloadState::NotPresent | PayloadState::Unmapped => {
                if self.metadata.has_parent {
                    self.read_parent(part, pos)
                } else {
                    part.fill(0);
                    Ok(())
                }
            }
            PayloadState::PartiallyPresent if self.metadata.has_parent => {
                let ss = g.sector_size;
                let mut done = 0usize;
                while done < part.len() {
                    let p = pos + done as u64;
                    let n = ((ss - p % ss) as usize).min(part.len() - done);
                    let chunk = &mut part[done..done + n];
                    if self.sector_present(block, p / ss)? {
                        self.storage
                            .read_at(chunk, e.offset() + p % g.block_size)
                            .map_err(ioerr("reading a payload block"))?;
                    } else {
                        self.read_parent(chunk, p)?;
                    }
                    done += n;
                }
                Ok(())
            }
            s => Err(Error::corrupt(
                "VHDX BAT",
                self.regions.bat.offset + g.payload_index(block) * ENTRY_LEN,
                format!("payload block {block} has state {s:?}"),
            )),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("the VHDX image is open read-only".into()));
        }
        Ok(())
    }

    /// Write the inactive header as the new active one (sequence number one higher), with
    /// `log_guid`; the first update of a session also takes new write GUIDs.
    fn update_header(&mut self, log_guid: Guid) -> Result<()> {
        let mut h = self.header.clone();
        h.sequence_number = h.sequence_number.wrapping_add(1);
        h.log_guid = log_guid;
        if !self.session_started {
            h.file_write_guid = new_guid();
            h.data_write_guid = new_guid();
            self.session_started = true;
        }
        let slot = 1 - self.slot;
        self.storage
            .write_at(&h.write(), HEADER_OFFSETS[slot])
            .map_err(ioerr("writing a header"))?;
        self.storage.flush().map_err(ioerr("flushing a header"))?;
        self.header = h;
        self.slot = slot;
        Ok(())
    }

    fn start_session(&mut self) -> Result<()> {
        if !self.session_started {
            self.update_header(ZERO_GUID)?;
        }
        Ok(())
    }

    /// Append a payload block for `block`, holding what the guest reads there now.
    fn allocate(&mut self, block: u64) -> Result<u64> {
        let g = self.geometry;
        let old = self.entry_of_block(block).payload_state();
        let offset = self.file_end.next_multiple_of(MIB);
        let end = offset
            .checked_add(g.block_size)
            .filter(|&e| e <= 1 << 62)
            .ok_or_else(|| Error::invalid("vhdx: the file would grow too large"))?;
        self.storage
            .set_len(end)
            .map_err(ioerr("extending the file for a payload block"))?;
        let inherits = self.metadata.has_parent
            && !matches!(old, PayloadState::Zero | PayloadState::Undefined);
        if inherits {
            let mut chunk = vec![0u8; MIB.min(g.block_size) as usize];
            let mut at = 0;
            while at < g.block_size {
                self.read_block_part(&mut chunk, block * g.block_size + at)?;
                self.storage
                    .write_at(&chunk, offset + at)
                    .map_err(ioerr("filling a payload block"))?;
                at += chunk.len() as u64;
            }
        }
        self.file_end = end;
        let i = g.payload_index(block);
        self.bat[i as usize] = Entry::payload(PayloadState::FullyPresent, offset);
        self.dirty_pages.insert(i * ENTRY_LEN / SECTOR);
        Ok(offset)
    }

    /// Set the BAT entry of `block` (in memory until the flush).
    fn set_entry(&mut self, block: u64, e: Entry) {
        let i = self.geometry.payload_index(block);
        self.bat[i as usize] = e;
        self.dirty_pages.insert(i * ENTRY_LEN / SECTOR);
    }

    /// The 4 KiB BAT page `page` as it should be on disk.
    fn bat_page(&self, page: u64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        let per = (SECTOR / ENTRY_LEN) as usize;
        let first = page as usize * per;
        for (k, e) in self.bat.iter().skip(first).take(per).enumerate() {
            LE::write_u64(&mut b[k * 8..], e.0);
        }
        b
    }

    /// Commit the changed BAT pages through the log (see the module documentation).
    fn commit_bat(&mut self) -> Result<()> {
        self.storage
            .flush()
            .map_err(ioerr("flushing payload blocks"))?;
        let pages: Vec<u64> = std::mem::take(&mut self.dirty_pages).into_iter().collect();
        let per_entry = log::max_pages(u64::from(self.header.log_length)).max(1) as usize;
        for batch in pages.chunks(per_entry) {
            let writes: Vec<(u64, Vec<u8>)> = batch
                .iter()
                .map(|&p| (self.regions.bat.offset + p * SECTOR, self.bat_page(p)))
                .collect();
            let guid = new_guid();
            self.update_header(guid)?;
            let file_len = self
                .storage
                .len()
                .map_err(ioerr("reading the file length"))?;
            let entry = log::build_entry(&guid, &writes, file_len);
            if entry.len() as u64 > u64::from(self.header.log_length) {
                return Err(Error::invalid(
                    "vhdx: the log is too small for a BAT update",
                ));
            }
            self.storage
                .write_at(&entry, self.header.log_offset)
                .map_err(ioerr("writing the log"))?;
            self.storage.flush().map_err(ioerr("flushing the log"))?;
            for (off, page) in &writes {
                self.storage
                    .write_at(page, *off)
                    .map_err(ioerr("writing the BAT"))?;
            }
            self.storage.flush().map_err(ioerr("flushing the BAT"))?;
            self.update_header(ZERO_GUID)?;
        }
        Ok(())
    }
}

/// Read the BAT entries the disk needs, checked against the BAT region and the file.
fn read_bat<S: Storage>(
    storage: &S,
    regions: &RegionTable,
    g: &Geometry,
    file_len: u64,
) -> Result<Vec<Entry>> {
    let bytes = g.entries * ENTRY_LEN;
    if bytes > u64::from(regions.bat.length)
        || regions.bat.offset.saturating_add(bytes)
            > file_len.max(regions.bat.offset) + u64::from(regions.bat.length)
        || regions.bat.offset < HEADER_SECTION_END
    {
        return Err(Error::corrupt(
            "VHDX BAT",
            regions.bat.offset,
            format!(
                "{} entries do not fit the BAT region of {} bytes",
                g.entries, regions.bat.length
            ),
        ));
    }
    if regions.bat.offset.saturating_add(bytes) > file_len {
        return Err(Error::corrupt(
            "VHDX BAT",
            regions.bat.offset,
            format!("the BAT ({bytes} bytes) runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let mut raw = vec![0u8; bytes as usize];
    storage
        .read_at(&mut raw, regions.bat.offset)
        .map_err(ioerr("reading the BAT"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| Entry(LE::read_u64(c)))
        .collect())
}

impl<S: Storage> BlockDevice for Vhdx<S> {
    fn format_name(&self) -> &'static str {
        "vhdx"
    }

    fn virtual_size(&self) -> u64 {
        self.metadata.virtual_size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.virtual_size(), offset, buf.len() as u64)?;
        let bs = self.geometry.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((bs - pos % bs) as usize).min(buf.len() - done);
            self.read_block_part(&mut buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.virtual_size(), offset, buf.len() as u64)?;
        self.start_session()?;
        let bs = self.geometry.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            let e = self.entry_of_block(block);
            let host = match e.payload_state() {
                PayloadState::FullyPresent => e.offset(),
                _ => self.allocate(block)?,
            };
            if host < HEADER_SECTION_END {
                return Err(Error::corrupt(
                    "VHDX BAT",
                    self.regions.bat.offset,
                    format!("payload block {block} lies in the header section"),
                ));
            }
            self.storage
                .write_at(&buf[done..done + n], host + within)
                .map_err(ioerr("writing a payload block"))?;
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.virtual_size(), offset, len)?;
        self.start_session()?;
        let bs = self.geometry.block_size;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (block, within) = (pos / bs, pos % bs);
            let n = (bs - within).min(end - pos);
            let state = self.entry_of_block(block).payload_state();
            let reads_zero = matches!(state, PayloadState::Zero | PayloadState::Undefined)
                || (!self.metadata.has_parent
                    && matches!(state, PayloadState::NotPresent | PayloadState::Unmapped));
            if reads_zero {
                // Nothing to do.
            } else if n == bs || pos + n == self.virtual_size() && within == 0 {
                self.set_entry(block, Entry::payload(PayloadState::Zero, 0));
            } else {
                let zeros = vec![0u8; n.min(MIB) as usize];
                let mut at = pos;
                while at < pos + n {
                    let k = zeros.len().min((pos + n - at) as usize);
                    self.write_at(&zeros[..k], at)?;
                    at += k as u64;
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        // A discard may leave data as it is (QEMU's VHDX driver has no discard).
        self.check_writable()?;
        check_range(self.virtual_size(), offset, len)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.dirty_pages.is_empty() {
            return self.storage.flush().map_err(ioerr("flushing"));
        }
        self.commit_bat()
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        let size = self.virtual_size();
        check_range(size, offset, 1)?;
        let end = offset.saturating_add(max_len.max(1)).min(size);
        // As QEMU's driver: no allocation status for images without a parent (everything
        // is data); a differencing image tells stored blocks from its parent's.
        if !self.metadata.has_parent {
            return Ok(Extent {
                start: offset,
                length: end - offset,
                kind: ExtentKind::Data,
                host_offset: None,
                compressed: false,
                depth: 0,
            });
        }
        let bs = self.geometry.block_size;
        let kind_of = |s: PayloadState| match s {
            PayloadState::NotPresent | PayloadState::Unmapped => ExtentKind::Unallocated,
            PayloadState::Zero | PayloadState::Undefined => ExtentKind::Zero,
            _ => ExtentKind::Data,
        };
        let kind = kind_of(self.entry_of_block(offset / bs).payload_state());
        let mut pos = (offset / bs + 1) * bs;
        while pos < end && kind_of(self.entry_of_block(pos / bs).payload_state()) == kind {
            pos += bs;
        }
        let run_end = pos.min(end);
        if kind == ExtentKind::Unallocated {
            if let Some(p) = self.parent.as_mut() {
                // Resolve through the parent; past its end the guest sees zeros.
                let psize = p.virtual_size();
                if offset < psize {
                    let mut sub = p.block_status(offset, (run_end - offset).min(psize - offset))?;
                    sub.depth += 1;
                    return Ok(sub);
                }
            }
        }
        Ok(Extent {
            start: offset,
            length: run_end - offset,
            kind,
            host_offset: None,
            compressed: false,
            depth: 0,
        })
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// None: a new payload block is allocated sparse (zeros are never written), so writes
    /// of any size are cheap and copy engines keep their own granularity, as qemu-img's
    /// convert does. `info` shows the block size as the cluster size (see `super::info`).
    fn cluster_size(&self) -> Option<u64> {
        None
    }

    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        if !self.metadata.has_parent {
            return Err(Error::unsupported(
                "a parent for a VHDX image that is not differencing",
            ));
        }
        self.parent = Some(backing);
        Ok(())
    }
}

impl<S: Storage> Drop for Vhdx<S> {
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::create::{create, parse_options};
    use super::super::header::{set_checksum, SLOT};
    use super::*;
    use crate::storage::MemStorage;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    /// A small dynamic image with two stored blocks and a live log entry that rewrites
    /// the first BAT page as it already is.
    fn dirty_image() -> Vec<u8> {
        let st = Arc::new(MemStorage::new());
        let o = parse_options(&[("block_size".into(), "1M".into())]).unwrap();
        create(st.as_ref(), 6 * MIB, &o, None).unwrap();
        let mut v = Vhdx::open(st.clone() as Arc<dyn Storage>, OpenMode::default()).unwrap();
        v.write_at(&[7; 5000], MIB - 100).unwrap();
        v.flush().unwrap();
        let page = v.bat_page(0);
        let (bat, file_len) = (v.regions.bat.offset, st.len().unwrap());
        let mut h = v.header.clone();
        drop(v);
        h.log_guid = [9; 16];
        h.sequence_number += 10;
        let entry = log::build_entry(&h.log_guid, &[(bat, page)], file_len);
        st.write_at(&entry, h.log_offset).unwrap();
        st.write_at(&h.write(), HEADER_OFFSETS[0]).unwrap();
        let mut bytes = vec![0u8; file_len as usize];
        st.read_at(&mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn random_damage_to_every_structure_never_panics() {
        let base = dirty_image();
        let areas: [(u64, u64); 6] = [
            (HEADER_OFFSETS[0], 4096),
            (HEADER_OFFSETS[1], 4096),
            (TABLE_OFFSETS[0], 4096),
            (MIB, 8192),
            (2 * MIB, 4096),
            (3 * MIB, SLOT + 64),
        ];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(16);
        let (mut opened, mut refused) = (0, 0);
        for _ in 0..1500 {
            let mut b = base.clone();
            for _ in 0..rng.gen_range(1..4) {
                let (at, len) = areas[rng.gen_range(0..areas.len())];
                let i = (at + rng.gen_range(0..len)) as usize;
                b[i] = rng.gen();
            }
            if rng.gen_bool(0.5) {
                for h in HEADER_OFFSETS {
                    set_checksum(&mut b[h as usize..h as usize + HEADER_LEN], 4);
                }
                let t = TABLE_OFFSETS[0] as usize;
                set_checksum(&mut b[t..t + TABLE_LEN], 4);
            }
            let st: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(b));
            match Vhdx::open(st, OpenMode::default()) {
                Ok(mut v) => {
                    opened += 1;
                    let mut buf = vec![0u8; v.virtual_size().min(8 * MIB) as usize];
                    let _ = v.read_at(&mut buf, 0);
                    let _ = v.write_at(&[1; 3000], 0);
                    let _ = v.flush();
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            opened > 100 && refused > 100,
            "{opened} opened, {refused} refused"
        );
    }

    #[test]
    fn a_writable_open_replays_the_log_and_empties_it() {
        let st: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(dirty_image()));
        let ro = OpenMode {
            read_only: true,
            ..Default::default()
        };
        let e = Vhdx::open(st.clone(), ro)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("needs to be replayed"), "{e}");
        let v = Vhdx::open(st.clone(), OpenMode::default()).unwrap();
        assert!(v.replayed_log());
        assert_eq!(v.header().log_guid, ZERO_GUID);
        drop(v);
        let mut v = Vhdx::open(st, ro).unwrap();
        let mut got = vec![0u8; 5000];
        v.read_at(&mut got, MIB - 100).unwrap();
        assert!(got.iter().all(|&b| b == 7));
    }
}
