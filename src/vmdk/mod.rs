//! VMDK images: VMware's virtual disk format, as qemu-img reads and writes it.
//!
//! A VMDK image is a text *descriptor* naming one or more *extents*, each a run of guest
//! sectors stored in a file. The descriptor is either a file of its own (monolithicFlat,
//! the twoGbMaxExtent subformats, hand-written multi-extent images) or embedded near the
//! start of a sparse extent (monolithicSparse, streamOptimized).
//!
//! # Submodules
//!
//! | module | owns |
//! | --- | --- |
//! | [`limits`] | every limit applied to values read from an image |
//! | [`descriptor`] | the text descriptor: nom parser and writer |
//! | [`header`] | the `KDMV` and `COWD` sparse headers and their validation |
//! | [`grain_table`] | grain table entries and the grain table cache |
//! | [`sparse`] | sparse extents: grain directory lookups, grain reads and in-place writes |
//! | [`stream`] | stream-optimized extents: markers, footer, compressed grains, sequential writer |
//! | [`flat`] | flat extents |
//! | `open` | opening an image: finding the descriptor, resolving and opening extents |
//! | `create` | creating images of the five subformats with qemu-img's options |
//! | `info` | `info`'s format-specific data |
//! | `check` | consistency checks |
//!
//! The [`Vmdk`] device in this module routes guest I/O to the extent holding each byte.
//!
//! # Safety of extent paths
//!
//! A descriptor names its extent files. By default every name must be a relative path
//! that stays inside the descriptor's directory (no `..`, not absolute), so that a hostile
//! descriptor cannot make vdisk read or write arbitrary host files;
//! [`VmdkOpenOptions::allow_outside_extents`] lifts that rule.

pub mod descriptor;
pub mod flat;
pub mod grain_table;
pub mod header;
pub mod limits;
pub mod sparse;
pub mod stream;

mod check;
mod create;
mod driver;
pub mod dump;
mod info;
mod open;

pub use check::VmdkCheckReport;
pub use create::{create, create_in, Subformat, VmdkCreateOptions};
pub use descriptor::{Access, Descriptor, ExtentLine, ExtentType};
pub use driver::DRIVER;
pub use info::{VmdkExtentInfo, VmdkInfo};
pub use open::{open, open_in};

use crate::device::{check_range, BlockDevice, Extent as Status, ExtentKind, MapStatus};
use crate::error::{Error, Result};
use crate::storage::Storage;
use flat::FlatExtent;
use sparse::{GrainMapping, SparseExtent};
use std::path::PathBuf;
use std::sync::Arc;
use stream::StreamWriter;

/// How to open a VMDK image.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmdkOpenOptions {
    /// Open every file read-only and refuse writes.
    pub read_only: bool,
    /// Allow extent lines naming files outside the descriptor's directory (absolute paths
    /// or paths with `..`). Off by default: only enable for trusted descriptors.
    pub allow_outside_extents: bool,
    /// Read-only opens only: do not lock out writers (qemu-img `-U`).
    pub force_share: bool,
}

/// Whether `first_bytes` (the start of a file) look like a VMDK image: a sparse extent
/// magic, or a text descriptor.
pub fn probe(first_bytes: &[u8]) -> bool {
    if sparse::has_sparse_magic(first_bytes) {
        return true;
    }
    // A descriptor: comment and blank lines, then `version=N` (as QEMU probes).
    for line in first_bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'#') || line.iter().all(|&b| b == b' ') {
            continue;
        }
        return matches!(line, b"version=1" | b"version=2" | b"version=3");
    }
    false
}

/// Where the descriptor text lives, for rewriting the CID.
pub(crate) enum DescriptorPlace {
    /// A descriptor file of its own.
    File(Arc<dyn Storage>),
    /// Embedded in a sparse extent: byte offset and room in bytes.
    Embedded {
        storage: Arc<dyn Storage>,
        offset: u64,
        room: u64,
    },
    /// The image has no descriptor (a bare sparse extent).
    Nowhere,
}

/// What backs an extent's guest bytes.
pub(crate) enum ExtentBody {
    Flat(FlatExtent),
    Sparse(Box<SparseExtent>),
    Zero,
    /// A streamOptimized extent being written by [`create`].
    Stream(Box<StreamWriter>),
}

/// One extent of an open image.
pub(crate) struct Extent {
    /// Guest byte offset of the extent's first byte.
    pub start: u64,
    /// Guest bytes in the extent.
    pub length: u64,
    pub access: Access,
    /// The type word shown by `info` ("" for the extent of a bare sparse file).
    pub type_name: String,
    /// The extent file as `info` names it.
    pub filename: String,
    pub body: ExtentBody,
}

impl Extent {
    /// Bytes from extent-relative `rel` that one request may cover (to the grain end).
    fn chunk_limit(&self, rel: u64) -> u64 {
        let grain = match &self.body {
            ExtentBody::Sparse(s) => s.geometry().grain_bytes(),
            ExtentBody::Stream(w) => w.grain_bytes(),
            _ => return self.length - rel,
        };
        (grain - rel % grain).min(self.length - rel)
    }

    fn check_access(&self, write: bool) -> Result<()> {
        match (self.access, write) {
            (Access::NoAccess, _) => Err(Error::invalid(format!(
                "VMDK extent '{}' is marked NOACCESS",
                self.filename
            ))),
            (Access::ReadOnly, true) => Err(Error::ReadOnly(format!(
                "VMDK extent '{}' is marked RDONLY",
                self.filename
            ))),
            _ => Ok(()),
        }
    }
}

/// An open VMDK image.
pub struct Vmdk {
    pub(crate) path: PathBuf,
    pub(crate) descriptor: Option<Descriptor>,
    pub(crate) descriptor_text: String,
    pub(crate) descriptor_place: DescriptorPlace,
    pub(crate) create_type: String,
    pub(crate) cid: u32,
    pub(crate) parent_cid: u32,
    pub(crate) extents: Vec<Extent>,
    pub(crate) size: u64,
    pub(crate) read_only: bool,
    pub(crate) cid_updated: bool,
    /// The parent image (`parentFileNameHint`), attached by the image layer: grains this
    /// image has not allocated read from it.
    pub(crate) backing: Option<Box<dyn BlockDevice>>,
}

impl Vmdk {
    /// The parsed descriptor, if the image has one.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// The parent image the descriptor names, if any.
    pub fn parent_file_name_hint(&self) -> Option<&str> {
        self.descriptor.as_ref()?.parent_file_name_hint.as_deref()
    }

    /// Read the parts of `buf` (guest bytes from `offset`) this image has not allocated
    /// from the parent; past the parent's end they stay zero.
    fn read_from_parent(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let st = self.own_status(pos, end - pos)?;
            let n = st.length.min(end - pos);
            if let (ExtentKind::Unallocated, Some(b)) = (st.kind, self.backing.as_mut()) {
                let bend = (pos + n).min(b.virtual_size());
                if pos < bend {
                    let at = (pos - offset) as usize;
                    b.read_at(&mut buf[at..at + (bend - pos) as usize], pos)?;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// With a parent, a write that covers part of a grain writes the whole grain (the rest
    /// read as the guest sees it now, through the parent), so that the grain it allocates
    /// keeps the parent's data around the write.
    fn write_whole_grains(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let sector = limits::SECTOR_SIZE;
        let grain = self.cluster_size().unwrap_or(sector).max(sector);
        let end = offset + buf.len() as u64;
        let start = offset / grain * grain;
        let stop = end.next_multiple_of(grain).min(self.size);
        if start == offset && stop == end {
            return self.write_own(buf, offset);
        }
        let mut whole = vec![0u8; (stop - start) as usize];
        self.read_at(&mut whole, start)?;
        let at = (offset - start) as usize;
        whole[at..at + buf.len()].copy_from_slice(buf);
        self.write_own(&whole, start)
    }

    fn write_own(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.for_each_piece(offset, buf.len() as u64, |extent, rel, range| {
            extent.check_access(true)?;
            let piece = &buf[range];
            match &mut extent.body {
                ExtentBody::Zero => Err(Error::unsupported(format!(
                    "writing to the ZERO extent at guest offset {:#x}",
                    extent.start
                ))),
                ExtentBody::Flat(flat) => flat.write(piece, rel),
                ExtentBody::Sparse(sparse) => sparse.write(piece, rel),
                ExtentBody::Stream(writer) => writer.write(piece, rel),
            }
        })
    }

    /// The allocation status of this image's own grains (never the parent's).
    fn own_status(&mut self, offset: u64, max_len: u64) -> Result<Status> {
        check_range(self.size, offset, max_len.min(1))?;
        let i = self.extent_index(offset)?;
        let extent = &mut self.extents[i];
        let rel = offset - extent.start;
        let limit = max_len.min(extent.length - rel).max(1);
        Self::extent_status(extent, rel, limit)
    }

    /// The subformat (`createType`).
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// The path the image was opened with.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The extent being written as a stream, if this image is a streamOptimized one being
    /// created (only then does the image take compressed grains).
    fn stream_writer_index(&self) -> Option<usize> {
        match self.extents.as_slice() {
            [e] if matches!(e.body, ExtentBody::Stream(_)) => Some(0),
            _ => None,
        }
    }

    fn extent_index(&self, offset: u64) -> Result<usize> {
        let i = self
            .extents
            .partition_point(|e| e.start + e.length <= offset);
        if i < self.extents.len() {
            Ok(i)
        } else {
            Err(Error::invalid(format!(
                "offset {offset:#x} lies past the last VMDK extent"
            )))
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly("VMDK image is open read-only".into()))
        } else {
            Ok(())
        }
    }

    /// On the first write after opening, give the image a new content ID (as QEMU does,
    /// so that child images can tell their parent changed).
    fn update_cid(&mut self) -> Result<()> {
        if self.cid_updated {
            return Ok(());
        }
        self.cid_updated = true;
        let Some(text) = descriptor::replace_cid(&self.descriptor_text, random_u32()) else {
            return Ok(());
        };
        let io = |e| Error::io("VMDK descriptor: updating the CID", e);
        match &self.descriptor_place {
            DescriptorPlace::File(storage) => {
                storage.write_at(text.as_bytes(), 0).map_err(io)?;
                storage.set_len(text.len() as u64).map_err(io)?;
            }
            DescriptorPlace::Embedded {
                storage,
                offset,
                room,
            } => {
                if text.len() as u64 > *room {
                    return Ok(());
                }
                let mut bytes = text.clone().into_bytes();
                bytes.resize(bytes.len().max(self.descriptor_text.len()), 0);
                storage.write_at(&bytes, *offset).map_err(io)?;
            }
            DescriptorPlace::Nowhere => return Ok(()),
        }
        self.descriptor_text = text;
        Ok(())
    }

    /// Call `f` on each piece of `[offset, offset+len)` that lies in one extent and one
    /// grain, with the extent, the extent-relative offset and the piece's position.
    fn for_each_piece(
        &mut self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Extent, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        check_range(self.size, offset, len)?;
        let mut done = 0u64;
        while done < len {
            let off = offset + done;
            let i = self.extent_index(off)?;
            let extent = &mut self.extents[i];
            let rel = off - extent.start;
            let n = (len - done).min(extent.chunk_limit(rel));
            f(extent, rel, done as usize..(done + n) as usize)?;
            done += n;
        }
        Ok(())
    }

    /// Status of the run at extent-relative `rel` of `extent`, at most `limit` bytes.
    fn extent_status(extent: &mut Extent, rel: u64, limit: u64) -> Result<Status> {
        let start = extent.start + rel;
        let mut status = Status {
            start,
            length: limit,
            kind: ExtentKind::Zero,
            host_offset: None,
            compressed: false,
            depth: 0,
        };
        match &mut extent.body {
            ExtentBody::Zero => {}
            ExtentBody::Stream(_) => {
                return Err(Error::unsupported(
                    "block status of a streamOptimized image while it is being written",
                ))
            }
            ExtentBody::Flat(flat) => {
                let (data, n) = flat.data_extent(rel)?;
                // Past the end of the file reads as zeros.
                status.length = if n == 0 { limit } else { n.min(limit) };
                if data {
                    status.kind = ExtentKind::Data;
                    status.host_offset = Some(flat.host_offset(rel));
                }
            }
            ExtentBody::Sparse(sparse) => {
                let grain = sparse.geometry().grain_bytes();
                let classify = |m: GrainMapping, at: u64| match m {
                    GrainMapping::Unallocated => (ExtentKind::Unallocated, None, false),
                    GrainMapping::Zero => (ExtentKind::Zero, None, false),
                    GrainMapping::Data(off) => (ExtentKind::Data, Some(off + at % grain), false),
                    GrainMapping::Compressed(_) => (ExtentKind::Data, None, true),
                };
                let (mapping, run) = sparse.lookup_run(rel)?;
                let (kind, host, compressed) = classify(mapping, rel);
                let mut length = run.min(limit);
                while length < limit {
                    let next = rel + length;
                    let (mapping, run) = sparse.lookup_run(next)?;
                    let (k, h, c) = classify(mapping, next);
                    let contiguous = match (host, h) {
                        (Some(a), Some(b)) => a + length == b,
                        (None, None) => true,
                        _ => false,
                    };
                    if k != kind || c != compressed || !contiguous {
                        break;
                    }
                    length = (length + run).min(limit);
                }
                status.kind = kind;
                status.host_offset = host;
                status.compressed = compressed;
                status.length = length;
            }
        }
        Ok(status)
    }
}

impl BlockDevice for Vmdk {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.for_each_piece(offset, buf.len() as u64, |extent, rel, range| {
            extent.check_access(false)?;
            let piece = &mut buf[range];
            match &mut extent.body {
                ExtentBody::Zero => {
                    piece.fill(0);
                    Ok(())
                }
                ExtentBody::Flat(flat) => flat.read(piece, rel),
                ExtentBody::Sparse(sparse) => sparse.read(piece, rel),
                ExtentBody::Stream(_) => Err(Error::unsupported(
                    "reading a streamOptimized image while it is being written; close and reopen it",
                )),
            }
        })?;
        if self.backing.is_some() {
            self.read_from_parent(buf, offset)?;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, buf.len() as u64)?;
        self.update_cid()?;
        match self.backing.is_some() {
            true => self.write_whole_grains(buf, offset),
            false => self.write_own(buf, offset),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, len)?;
        if self.backing.is_some() {
            // An unallocated grain would show the parent: write the zeros.
            const CHUNK: u64 = 1 << 20;
            let zeros = vec![0u8; CHUNK.min(len) as usize];
            let mut pos = offset;
            while pos < offset + len {
                let n = CHUNK.min(offset + len - pos);
                self.write_at(&zeros[..n as usize], pos)?;
                pos += n;
            }
            return Ok(());
        }
        self.update_cid()?;
        self.for_each_piece(offset, len, |extent, rel, range| {
            extent.check_access(true)?;
            let n = range.len() as u64;
            match &mut extent.body {
                ExtentBody::Zero => Ok(()),
                ExtentBody::Flat(flat) => flat.write_zeroes(rel, n),
                ExtentBody::Sparse(sparse) => sparse.write_zeroes(rel, n),
                ExtentBody::Stream(writer) => writer.write_zeroes(rel, n),
            }
        })
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        // VMDK has no way to release a grain: like QEMU, discard does nothing.
        self.check_writable()?;
        check_range(self.size, offset, len)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        for extent in &mut self.extents {
            match &mut extent.body {
                ExtentBody::Flat(flat) => flat.flush()?,
                ExtentBody::Sparse(sparse) => sparse.flush()?,
                ExtentBody::Zero | ExtentBody::Stream(_) => {}
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        for extent in &mut self.extents {
            if let ExtentBody::Stream(writer) = &mut extent.body {
                writer.finish()?;
            }
        }
        self.flush()
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Status> {
        let st = self.own_status(offset, max_len)?;
        if let (ExtentKind::Unallocated, Some(b)) = (st.kind, self.backing.as_mut()) {
            // Resolve through the parent; past its end the guest sees zeros.
            let bsize = b.virtual_size();
            if offset < bsize {
                let mut sub = b.block_status(offset, st.length.min(bsize - offset))?;
                sub.depth += 1;
                return Ok(sub);
            }
        }
        Ok(st)
    }

    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        self.backing = Some(backing);
        Ok(())
    }

    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<MapStatus> {
        check_range(self.size, offset, max_len.min(1))?;
        let i = self.extent_index(offset)?;
        let extent = &mut self.extents[i];
        let rel = offset - extent.start;
        let limit = max_len.min(extent.length - rel).max(1);
        let file = (!extent.filename.is_empty()).then(|| extent.filename.clone());
        let status = match &extent.body {
            // As QEMU: a flat extent is data throughout, and the file's holes read zeros.
            ExtentBody::Flat(flat) => {
                let data = Status {
                    start: offset,
                    length: limit,
                    kind: ExtentKind::Data,
                    host_offset: Some(flat.host_offset(rel)),
                    compressed: false,
                    depth: 0,
                };
                MapStatus::from_extent(data).with_host_extent(flat.data_extent(rel)?)
            }
            _ => MapStatus::from_extent(Self::extent_status(extent, rel, limit)?),
        };
        Ok(MapStatus { file, ..status })
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn cluster_codec(&self) -> Option<Arc<dyn crate::device::ClusterCodec>> {
        self.stream_writer_index()
            .map(|_| Arc::new(stream::StreamCodec) as Arc<dyn crate::device::ClusterCodec>)
    }

    fn write_compressed_cluster(&mut self, offset: u64, compressed: &[u8]) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, 1)?;
        self.update_cid()?;
        let i = self.extent_index(offset)?;
        let extent = &mut self.extents[i];
        match &mut extent.body {
            ExtentBody::Stream(writer) => {
                writer.write_compressed(offset - extent.start, compressed)
            }
            _ => Err(Error::unsupported(
                "compressed grains outside a streamOptimized image being written",
            )),
        }
    }

    fn requires_sequential_writes(&self) -> bool {
        self.stream_writer_index().is_some()
    }

    fn cluster_size(&self) -> Option<u64> {
        // As QEMU: the grain size when every extent is sparse with the same grain.
        let mut grain = None;
        for extent in &self.extents {
            let g = match &extent.body {
                ExtentBody::Sparse(s) => s.geometry().grain_bytes(),
                ExtentBody::Stream(w) => w.grain_bytes(),
                _ => return None,
            };
            if grain.is_some_and(|x| x != g) {
                return None;
            }
            grain = Some(g);
        }
        grain
    }
}

impl Drop for Vmdk {
    fn drop(&mut self) {
        // Best effort: grain tables still in the cache would otherwise be lost. Errors
        // cannot be reported here; callers who care call flush() or close().
        let dirty = self.extents.iter().any(|e| match &e.body {
            ExtentBody::Sparse(s) => s.is_dirty(),
            _ => false,
        });
        if dirty && !self.read_only {
            let _ = self.flush();
        }
    }
}

/// A random 32-bit value (for content IDs), without a dependency on a random crate.
pub(crate) fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Every file [`create`] makes with these options: the image file, then its extents.
fn files(
    path: &std::path::Path,
    size: u64,
    opts: &VmdkCreateOptions,
) -> Result<Vec<std::path::PathBuf>> {
    create::files(path, size, opts)
}

fn create_options(options: &[(String, String)]) -> Result<VmdkCreateOptions> {
    let mut o = VmdkCreateOptions::default();
    for (k, v) in options.iter().filter(|(k, _)| k != "size") {
        o.parse_option(k, v)?;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_recognises_sparse_magics_and_descriptors() {
        assert!(probe(b"KDMV\x01\0\0\0"));
        assert!(probe(b"COWD\x01\0\0\0"));
        assert!(probe(b"# Disk DescriptorFile\nversion=1\nCID=1\n"));
        assert!(probe(b"# Disk DescriptorFile\r\n  \r\nversion=3\r\n"));
    }

    #[test]
    fn probe_refuses_other_data() {
        assert!(!probe(b""));
        assert!(!probe(b"QFI\xfb"));
        assert!(!probe(b"# a comment\nversion=4\n"));
        assert!(!probe(&[0u8; 512]));
    }
}
