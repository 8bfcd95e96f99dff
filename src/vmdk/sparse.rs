//! Sparse extents: the grain directory, grain tables and grains of a hosted sparse
//! (`KDMV`) or ESX sparse (`COWD`) extent file, and reads and writes through them.
//!
//! Guest offset → grain number → grain directory index (`grain / gtes_per_gt`) → grain
//! table (whose sector the directory entry holds) → grain table entry → grain. The
//! mapping lookup ([`SparseExtent::lookup`]) is separate from data I/O.
//!
//! Writes allocate new grains at the end of the file, rounded up to a grain, as QEMU
//! does. Updated grain table entries stay in the cache until [`SparseExtent::flush`],
//! which makes grain data durable first and then writes each dirty grain table to both
//! its primary and its redundant copy.

use super::grain_table::{decode_table, encode_table, GrainEntry, GrainTableCache, GTE_ZEROED};
use super::header::{
    CowdHeader, SparseGeometry, SparseHeader, COWD_MAGIC, GD_AT_END, HEADER_SIZE, SPARSE_MAGIC,
};
use super::limits::{GRAIN_TABLE_CACHE_ENTRIES, MAX_EXTENT_FILE_SECTORS, SECTOR_SIZE};
use super::stream::{read_compressed_grain, read_footer};
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::sync::Arc;

/// Where a guest grain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainMapping {
    /// Not allocated: reads as zeros.
    Unallocated,
    /// A zero grain.
    Zero,
    /// Uncompressed data at this byte offset of the extent file.
    Data(u64),
    /// A compressed grain (or its marker) at this byte offset of the extent file.
    Compressed(u64),
}

/// Which header a sparse extent file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseKind {
    /// Hosted sparse (`KDMV`).
    Hosted,
    /// ESX sparse (`COWD`).
    Cowd,
}

/// An open sparse extent file.
pub struct SparseExtent {
    storage: Arc<dyn Storage>,
    kind: SparseKind,
    header: Option<SparseHeader>,
    geometry: SparseGeometry,
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    cache: GrainTableCache,
    file_len: u64,
    next_grain_sector: u64,
    read_only: bool,
    /// The last compressed grain inflated, by host offset.
    inflated: Option<(u64, Vec<u8>)>,
}

impl SparseExtent {
    /// Open the sparse extent in `storage`, validating its header and reading its grain
    /// directories.
    pub fn open(storage: Arc<dyn Storage>, read_only: bool) -> Result<SparseExtent> {
        let file_len = storage
            .len()
            .map_err(|e| Error::io("VMDK sparse extent: reading the file length", e))?;
        let mut first = [0u8; HEADER_SIZE];
        storage
            .read_at(&mut first, 0)
            .map_err(|e| Error::io("VMDK sparse header: reading", e))?;
        let (kind, header, geometry) = if &first[..4] == COWD_MAGIC {
            let cowd = CowdHeader::parse(&first)?;
            (SparseKind::Cowd, None, cowd.geometry(file_len)?)
        } else {
            if file_len < HEADER_SIZE as u64 {
                return Err(Error::corrupt(
                    "VMDK sparse header",
                    0,
                    "file is shorter than a header sector",
                ));
            }
            let mut header = SparseHeader::parse(&first)?;
            let mut header_offset = 0;
            if header.gd_offset == GD_AT_END {
                header = read_footer(&*storage, file_len)?;
                header_offset = file_len - 2 * SECTOR_SIZE;
            }
            let geometry = header.geometry(file_len, header_offset)?;
            if header.version == 3 && !read_only && !geometry.compressed {
                return Err(Error::invalid(
                    "VMDK version 3 must be read only (open the image read-only)",
                ));
            }
            (SparseKind::Hosted, Some(header), geometry)
        };
        let gd = read_directory(&*storage, geometry.gd_offset, geometry.gd_entries)?;
        let rgd = match geometry.rgd_offset {
            Some(offset) => Some(read_directory(&*storage, offset, geometry.gd_entries)?),
            None => None,
        };
        let grain = geometry.grain_sectors;
        Ok(SparseExtent {
            storage,
            kind,
            header,
            geometry,
            gd,
            rgd,
            cache: GrainTableCache::new(GRAIN_TABLE_CACHE_ENTRIES),
            file_len,
            next_grain_sector: file_len.div_ceil(SECTOR_SIZE).div_ceil(grain) * grain,
            read_only: read_only || kind == SparseKind::Cowd,
            inflated: None,
        })
    }

    /// The checked geometry.
    pub fn geometry(&self) -> &SparseGeometry {
        &self.geometry
    }

    /// The hosted sparse header (the footer's copy for streams), if this is a KDMV extent.
    pub fn header(&self) -> Option<&SparseHeader> {
        self.header.as_ref()
    }

    /// Which header the file has.
    pub fn kind(&self) -> SparseKind {
        self.kind
    }

    /// Guest bytes in this extent.
    pub fn capacity_bytes(&self) -> u64 {
        self.geometry.capacity * SECTOR_SIZE
    }

    /// The grain directory.
    pub fn directory(&self) -> &[u32] {
        &self.gd
    }

    /// The redundant grain directory, if any.
    pub fn redundant_directory(&self) -> Option<&[u32]> {
        self.rgd.as_deref()
    }

    /// Current length of the extent file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Read the grain table at `sector` straight from disk (no cache), checking that it
    /// lies inside the file.
    pub fn read_table_at(&self, sector: u32) -> Result<Vec<u32>> {
        let offset = u64::from(sector) * SECTOR_SIZE;
        let len = self.geometry.gt_bytes();
        if offset + len > self.file_len {
            return Err(Error::corrupt(
                "VMDK grain table",
                offset,
                format!(
                    "grain table lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.storage
            .read_at(&mut bytes, offset)
            .map_err(|e| Error::io(format!("VMDK grain table at {offset:#x}: reading"), e))?;
        Ok(decode_table(&bytes))
    }

    fn locate(&self, rel: u64) -> Result<(u64, usize)> {
        let grain = rel / self.geometry.grain_bytes();
        let gtes = u64::from(self.geometry.gtes_per_gt);
        let gd_index = grain / gtes;
        if gd_index >= self.gd.len() as u64 {
            return Err(Error::corrupt(
                "VMDK grain directory",
                self.geometry.gd_offset,
                format!("guest offset {rel:#x} lies outside the grain directory"),
            ));
        }
        Ok((gd_index, (grain % gtes) as usize))
    }

    /// Make sure grain table `gd_index` is cached (it must be allocated).
    fn load_table(&mut self, gd_index: u64) -> Result<()> {
        if self.cache.get(gd_index).is_some() {
            return Ok(());
        }
        let table = self.read_table_at(self.gd[gd_index as usize])?;
        if let Some((victim, entries)) = self.cache.dirty_victim() {
            let entries = entries.to_vec();
            self.sync_data()?;
            self.write_table(victim, &entries)?;
            self.cache.mark_clean(victim);
        }
        self.cache.insert(gd_index, table);
        Ok(())
    }

    fn entry(&mut self, gd_index: u64, gt_index: usize) -> Result<u32> {
        self.load_table(gd_index)?;
        Ok(self
            .cache
            .get(gd_index)
            .and_then(|t| t.get(gt_index).copied())
            .unwrap_or(0))
    }

    /// Where the grain holding extent-relative offset `rel` lives.
    pub fn lookup(&mut self, rel: u64) -> Result<GrainMapping> {
        let (gd_index, gt_index) = self.locate(rel)?;
        if self.gd[gd_index as usize] == 0 {
            return Ok(GrainMapping::Unallocated);
        }
        let raw = self.entry(gd_index, gt_index)?;
        Ok(
            match GrainEntry::from_raw(raw, self.geometry.zeroed_grain) {
                GrainEntry::Unallocated => GrainMapping::Unallocated,
                GrainEntry::Zero => GrainMapping::Zero,
                GrainEntry::Allocated(off) if self.geometry.compressed => {
                    GrainMapping::Compressed(off)
                }
                GrainEntry::Allocated(off) => GrainMapping::Data(off),
            },
        )
    }

    /// Like [`lookup`](Self::lookup), plus how many bytes from `rel` share that mapping
    /// for certain: to the end of the grain, or to the end of the grain table's range when
    /// the table is not allocated at all.
    pub fn lookup_run(&mut self, rel: u64) -> Result<(GrainMapping, u64)> {
        let grain = self.geometry.grain_bytes();
        let (gd_index, _) = self.locate(rel)?;
        if self.gd[gd_index as usize] == 0 {
            let coverage = self.geometry.gt_coverage_bytes();
            return Ok((GrainMapping::Unallocated, coverage - rel % coverage));
        }
        Ok((self.lookup(rel)?, grain - rel % grain))
    }

    /// Read `buf` from extent-relative `rel`; the range must not cross a grain.
    pub fn read(&mut self, buf: &mut [u8], rel: u64) -> Result<()> {
        let in_grain = rel % self.geometry.grain_bytes();
        match self.lookup(rel)? {
            GrainMapping::Unallocated | GrainMapping::Zero => buf.fill(0),
            GrainMapping::Data(off) => self
                .storage
                .read_at(buf, off + in_grain)
                .map_err(|e| Error::io(format!("VMDK grain at {off:#x}: reading"), e))?,
            GrainMapping::Compressed(off) => {
                if self.inflated.as_ref().map(|(o, _)| *o) != Some(off) {
                    let grain = read_compressed_grain(
                        &*self.storage,
                        off,
                        self.geometry.markers,
                        self.geometry.grain_bytes(),
                        self.file_len,
                    )?;
                    self.inflated = Some((off, grain));
                }
                if let Some((_, grain)) = &self.inflated {
                    let start = in_grain as usize;
                    let src = grain.get(start..start + buf.len()).ok_or_else(|| {
                        Error::invalid("VMDK sparse extent: read crosses a grain boundary")
                    })?;
                    buf.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.geometry.compressed {
            return Err(Error::ReadOnly(
                "streamOptimized VMDK images can only be written sequentially, by convert".into(),
            ));
        }
        if self.kind == SparseKind::Cowd {
            return Err(Error::unsupported("writing to VMFSSPARSE (COWD) extents"));
        }
        if self.read_only {
            return Err(Error::ReadOnly("VMDK extent is open read-only".into()));
        }
        Ok(())
    }

    /// Write `buf` at extent-relative `rel`; the range must not cross a grain.
    pub fn write(&mut self, buf: &[u8], rel: u64) -> Result<()> {
        self.check_writable()?;
        let in_grain = rel % self.geometry.grain_bytes();
        let off = match self.lookup(rel)? {
            GrainMapping::Data(off) => off,
            // Without a parent image both already read as zeros.
            GrainMapping::Unallocated | GrainMapping::Zero if buf.iter().all(|&b| b == 0) => {
                return Ok(())
            }
            GrainMapping::Unallocated | GrainMapping::Zero => {
                self.allocate_grain(rel, buf.len() as u64)?
            }
            GrainMapping::Compressed(_) => unreachable!("compressed extents are refused above"),
        };
        self.storage
            .write_at(buf, off + in_grain)
            .map_err(|e| Error::io(format!("VMDK grain at {off:#x}: writing"), e))?;
        self.file_len = self.file_len.max(off + in_grain + buf.len() as u64);
        Ok(())
    }

    /// Make `[rel, rel+len)` read as zeros; the range must not cross a grain.
    pub fn write_zeroes(&mut self, rel: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let grain_bytes = self.geometry.grain_bytes();
        let whole = rel % grain_bytes == 0 && len == grain_bytes;
        match self.lookup(rel)? {
            GrainMapping::Unallocated | GrainMapping::Zero => Ok(()),
            GrainMapping::Data(_) if whole && self.geometry.zeroed_grain => {
                let (gd_index, gt_index) = self.locate(rel)?;
                self.load_table(gd_index)?;
                self.cache.set(gd_index, gt_index, GTE_ZEROED);
                Ok(())
            }
            GrainMapping::Data(off) => {
                let at = off + rel % grain_bytes;
                crate::storage::write_zero_bytes(&*self.storage, at, len)
                    .map_err(|e| Error::io(format!("VMDK grain at {off:#x}: zeroing"), e))
            }
            GrainMapping::Compressed(_) => unreachable!("compressed extents are refused above"),
        }
    }

    /// Allocate a grain for `rel` at the end of the file and point its entry at it.
    /// The new grain reads as zeros apart from what the caller then writes.
    fn allocate_grain(&mut self, rel: u64, write_len: u64) -> Result<u64> {
        let (gd_index, gt_index) = self.locate(rel)?;
        if self.gd[gd_index as usize] == 0 {
            self.allocate_table(gd_index)?;
        }
        self.load_table(gd_index)?;
        let grain_sectors = self.geometry.grain_sectors;
        let sector = self.next_grain_sector;
        if sector + grain_sectors > MAX_EXTENT_FILE_SECTORS {
            return Err(Error::invalid(
                "VMDK sparse extent is full: grain offsets past 2 TiB cannot be stored",
            ));
        }
        let offset = sector * SECTOR_SIZE;
        let end = offset + grain_sectors * SECTOR_SIZE;
        if write_len < self.geometry.grain_bytes() {
            self.storage
                .set_len(end)
                .map_err(|e| Error::io("VMDK sparse extent: growing the file", e))?;
            self.file_len = end;
        }
        self.next_grain_sector = sector + grain_sectors;
        self.cache.set(gd_index, gt_index, sector as u32);
        Ok(offset)
    }

    /// Append a zeroed grain table (and its redundant copy) for directory entry `gd_index`
    /// and point both directories at them.
    fn allocate_table(&mut self, gd_index: u64) -> Result<()> {
        let gt_sectors = self.geometry.gt_bytes().div_ceil(SECTOR_SIZE);
        let copies = if self.rgd.is_some() { 2 } else { 1 };
        let first = self.file_len.div_ceil(SECTOR_SIZE);
        if first + copies * gt_sectors > MAX_EXTENT_FILE_SECTORS {
            return Err(Error::invalid("VMDK sparse extent is full"));
        }
        let io = |e| Error::io("VMDK grain table: allocating", e);
        crate::storage::write_zero_bytes(
            &*self.storage,
            first * SECTOR_SIZE,
            copies * gt_sectors * SECTOR_SIZE,
        )
        .map_err(io)?;
        self.file_len = (first + copies * gt_sectors) * SECTOR_SIZE;
        let i = gd_index as usize;
        self.gd[i] = first as u32;
        self.storage
            .write_at(
                &(first as u32).to_le_bytes(),
                self.geometry.gd_offset + 4 * gd_index,
            )
            .map_err(io)?;
        if let (Some(rgd), Some(rgd_offset)) = (self.rgd.as_mut(), self.geometry.rgd_offset) {
            let second = (first + gt_sectors) as u32;
            rgd[i] = second;
            self.storage
                .write_at(&second.to_le_bytes(), rgd_offset + 4 * gd_index)
                .map_err(io)?;
        }
        let grain = self.geometry.grain_sectors;
        self.next_grain_sector = self
            .next_grain_sector
            .max(self.file_len.div_ceil(SECTOR_SIZE).div_ceil(grain) * grain);
        Ok(())
    }

    fn write_table(&self, gd_index: u64, entries: &[u32]) -> Result<()> {
        let bytes = encode_table(entries);
        let i = gd_index as usize;
        let mut sectors = vec![self.gd[i]];
        if let Some(rgd) = &self.rgd {
            if rgd[i] != 0 {
                sectors.push(rgd[i]);
            }
        }
        for sector in sectors {
            let offset = u64::from(sector) * SECTOR_SIZE;
            self.storage
                .write_at(&bytes, offset)
                .map_err(|e| Error::io(format!("VMDK grain table at {offset:#x}: writing"), e))?;
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<()> {
        self.storage
            .flush()
            .map_err(|e| Error::io("VMDK sparse extent: flushing", e))
    }

    /// Whether grain tables wait to be written.
    pub fn is_dirty(&self) -> bool {
        self.cache.has_dirty()
    }

    /// Make every write durable: grain data first, then the grain tables pointing at it.
    pub fn flush(&mut self) -> Result<()> {
        if self.read_only || self.geometry.compressed {
            return Ok(());
        }
        if self.cache.has_dirty() {
            self.sync_data()?;
            for (gd_index, entries) in self.cache.take_dirty() {
                self.write_table(gd_index, &entries)?;
            }
        }
        self.sync_data()
    }
}

fn read_directory(storage: &dyn Storage, offset: u64, entries: u64) -> Result<Vec<u32>> {
    let mut bytes = vec![0u8; (entries * 4) as usize];
    storage
        .read_at(&mut bytes, offset)
        .map_err(|e| Error::io(format!("VMDK grain directory at {offset:#x}: reading"), e))?;
    Ok(decode_table(&bytes))
}

/// Whether `first` starts like a sparse extent file (KDMV or COWD magic).
pub fn has_sparse_magic(first: &[u8]) -> bool {
    first.len() >= 4 && (&first[..4] == SPARSE_MAGIC || &first[..4] == COWD_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FaultStorage, MemStorage};

    /// A fresh 4 MiB monolithicSparse image, as bytes.
    fn fresh_image() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.vmdk");
        let dev = super::super::create(&path, 4 << 20, &Default::default()).unwrap();
        drop(dev);
        std::fs::read(&path).unwrap()
    }

    const GRAIN: u64 = 65536;

    /// The writes replayed at every cut point: two whole grains and a partial one.
    fn writes() -> Vec<(u64, Vec<u8>)> {
        vec![
            (0, vec![0x11; GRAIN as usize]),
            (5 * GRAIN, vec![0x22; GRAIN as usize]),
            (9 * GRAIN + 100, vec![0x33; 1000]),
        ]
    }

    /// FaultStorage keeps exactly the state of the last completed flush, so this proves
    /// every flush leaves a consistent image; it cannot see reordering within one flush
    /// interval (that order is enforced by `flush` syncing data before writing tables).
    #[test]
    fn a_power_cut_at_any_point_leaves_every_written_grain_old_or_new() {
        let image = fresh_image();
        for cut in 0.. {
            let fault = Arc::new(FaultStorage::with_cut(image.clone(), cut));
            let storage: Arc<dyn Storage> = fault.clone();
            let mut extent = SparseExtent::open(storage, false).unwrap();
            let _ = writes()
                .iter()
                .try_for_each(|(off, data)| extent.write(data, *off))
                .and_then(|_| extent.flush());
            let finished = !fault.cut_hit();
            drop(extent);

            let durable = MemStorage::new();
            durable.write_at(&fault.durable_image(), 0).unwrap();
            let mut after = SparseExtent::open(Arc::new(durable), true).unwrap();
            for (off, data) in writes() {
                let mut got = vec![0u8; data.len()];
                after.read(&mut got, off).unwrap();
                let old = got.iter().all(|&b| b == 0);
                assert!(old || got == data, "cut {cut}: grain at {off:#x} is torn");
                if matches!(after.lookup(off).unwrap(), GrainMapping::Data(_)) {
                    assert_eq!(got, data, "cut {cut}: entry for {off:#x} outran its grain");
                }
                if finished {
                    assert_eq!(got, data, "all writes flushed, yet {off:#x} was lost");
                }
            }
            if finished {
                break;
            }
        }
    }

    #[test]
    fn writes_reach_the_redundant_grain_tables_too() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        storage.write_at(&fresh_image(), 0).unwrap();
        let mut extent = SparseExtent::open(storage.clone(), false).unwrap();
        extent.write(&[7u8; 512], 3 * GRAIN).unwrap();
        extent.flush().unwrap();
        let gd = extent.directory()[0];
        let rgd = extent.redundant_directory().unwrap()[0];
        assert_ne!(gd, rgd);
        assert_eq!(
            extent.read_table_at(gd).unwrap(),
            extent.read_table_at(rgd).unwrap()
        );
        assert!(matches!(
            extent.lookup(3 * GRAIN).unwrap(),
            GrainMapping::Data(_)
        ));
    }
}
