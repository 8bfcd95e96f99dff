//! Opening a VMDK image: telling a descriptor file from a sparse extent, reading the
//! descriptor (separate or embedded), checking and resolving extent file names, and
//! opening each extent.

use super::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use super::flat::FlatExtent;
use super::header::{SparseHeader, HEADER_SIZE, SPARSE_MAGIC};
use super::limits::{MAX_DESCRIPTOR_BYTES, MAX_EXTENTS, SECTOR_SIZE};
use super::sparse::{has_sparse_magic, SparseExtent, SparseKind};
use super::{DescriptorPlace, Extent, ExtentBody, Vmdk, VmdkOpenOptions};
use crate::error::{Error, Result};
use crate::storage::{HostFiles, Namespace, OpenOptions, Storage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Subformats accepted in a descriptor's `createType`.
const KNOWN_CREATE_TYPES: &[&str] = &[
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "vmfsSparse",
    "vmfsThin",
    "vmfsPreallocated",
    "vmfsEagerZeroedThick",
    "vmfsRaw",
    "vmfsRDM",
    "custom",
];

/// Open the VMDK image at `path` on the host: a descriptor file, or a sparse extent (with
/// or without an embedded descriptor).
pub fn open(path: &Path, opts: &VmdkOpenOptions) -> Result<Vmdk> {
    open_in(&HostFiles, path, opts)
}

/// Open the descriptor file `storage` (of `file_len` bytes) at `path`.
fn open_descriptor_file(
    ns: &dyn Namespace,
    path: &Path,
    opts: &VmdkOpenOptions,
    storage: Arc<dyn Storage>,
    file_len: u64,
) -> Result<Vmdk> {
    if file_len > MAX_DESCRIPTOR_BYTES {
        return Err(Error::corrupt(
            "VMDK descriptor",
            0,
            format!("descriptor file of {file_len} bytes is larger than {MAX_DESCRIPTOR_BYTES}"),
        ));
    }
    let mut text = vec![0u8; file_len as usize];
    storage
        .read_at(&mut text, 0)
        .map_err(|e| Error::io(format!("{}: reading", path.display()), e))?;
    let place = DescriptorPlace::File(storage);
    open_descriptor(ns, path, opts, &text, 0, place)
}

/// [`open`], with the descriptor and every extent opened through `ns`.
pub fn open_in(ns: &dyn Namespace, path: &Path, opts: &VmdkOpenOptions) -> Result<Vmdk> {
    let storage = open_file(ns, path, opts.read_only, opts.force_share)?;
    let file_len = storage
        .len()
        .map_err(|e| Error::io(format!("{}: reading the file length", path.display()), e))?;
    if file_len < 4 {
        return Err(Error::corrupt(
            "VMDK image",
            0,
            "file is too small to be a VMDK image",
        ));
    }
    let mut first = [0u8; HEADER_SIZE];
    storage
        .read_at(&mut first, 0)
        .map_err(|e| Error::io(format!("{}: reading", path.display()), e))?;
    if !has_sparse_magic(&first) {
        // A file that neither starts with a magic nor probes as a descriptor is some other
        // file: when it does not parse, QEMU's words for that, not the parser's (a
        // descriptor of an unsupported kind keeps its own message).
        let other_file = !super::probe(&first);
        return open_descriptor_file(ns, path, opts, storage, file_len).map_err(|e| match e {
            Error::Corrupt { .. } if other_file => {
                Error::not_format("invalid VMDK image descriptor")
            }
            e => e,
        });
    }
    if &first[..4] == SPARSE_MAGIC {
        let header = SparseHeader::parse(&first)?;
        if header.capacity == 0 && header.descriptor_offset != 0 {
            // A sparse file used only to hold a descriptor: the extents are elsewhere.
            let (offset, text) = read_embedded_descriptor(&*storage, &header, file_len)?;
            let room = header.descriptor_size * SECTOR_SIZE;
            let place = DescriptorPlace::Embedded {
                storage,
                offset,
                room,
            };
            return open_descriptor(ns, path, opts, &text, offset, place);
        }
    }
    open_bare_sparse(path, opts, storage, file_len)
}

/// A sparse extent opened directly: a monolithicSparse or streamOptimized image.
fn open_bare_sparse(
    path: &Path,
    opts: &VmdkOpenOptions,
    storage: Arc<dyn Storage>,
    file_len: u64,
) -> Result<Vmdk> {
    let sparse = SparseExtent::open(storage.clone(), opts.read_only)?;
    let compressed = sparse.geometry().compressed;
    let mut descriptor = None;
    let mut descriptor_text = String::new();
    let mut place = DescriptorPlace::Nowhere;
    if let Some(header) = sparse.header().copied() {
        if header.descriptor_offset != 0 && header.descriptor_size != 0 {
            let (offset, text) = read_embedded_descriptor(&*storage, &header, file_len)?;
            let parsed = Descriptor::parse(&text, offset)?;
            descriptor_text = text_of(&text);
            descriptor = Some(parsed);
            place = DescriptorPlace::Embedded {
                storage: storage.clone(),
                offset,
                room: header.descriptor_size * SECTOR_SIZE,
            };
        }
    }
    // Like QEMU, the subformat of a bare sparse file follows from its header alone.
    let create_type = match sparse.kind() {
        SparseKind::Cowd => "vmfsSparse",
        SparseKind::Hosted if compressed => "streamOptimized",
        SparseKind::Hosted => "monolithicSparse",
    };
    let length = sparse.capacity_bytes();
    // A stream is only ever written sequentially, by create(): an existing one is
    // read-only, as QEMU effectively treats it.
    let read_only = opts.read_only || compressed || sparse.kind() == SparseKind::Cowd;
    Ok(Vmdk {
        path: path.to_path_buf(),
        cid: descriptor.as_ref().map_or(0, |d| d.cid),
        parent_cid: descriptor.as_ref().map_or(NO_PARENT_CID, |d| d.parent_cid),
        descriptor,
        descriptor_text,
        descriptor_place: place,
        create_type: create_type.to_string(),
        extents: vec![Extent {
            start: 0,
            length,
            access: Access::ReadWrite,
            type_name: String::new(),
            filename: path.display().to_string(),
            body: ExtentBody::Sparse(Box::new(sparse)),
        }],
        size: length,
        read_only,
        cid_updated: false,
        backing: None,
    })
}

/// Open the extents a descriptor names. `base` is the descriptor's file offset.
fn open_descriptor(
    ns: &dyn Namespace,
    path: &Path,
    opts: &VmdkOpenOptions,
    bytes: &[u8],
    base: u64,
    place: DescriptorPlace,
) -> Result<Vmdk> {
    let descriptor = Descriptor::parse(bytes, base)?;
    check_descriptor_is_supported(&descriptor, base)?;
    let opener = ExtentOpener {
        ns,
        path,
        dir: path.parent().unwrap_or(Path::new("")),
        opts,
        base,
        place: &place,
    };
    let mut extents = Vec::with_capacity(descriptor.extents.len());
    let mut start = 0u64;
    let mut all_read_only = opts.read_only;
    for line in &descriptor.extents {
        let (extent, forces_read_only) = opener.open(line, start)?;
        all_read_only |= forces_read_only;
        start = start.checked_add(extent.length).ok_or_else(|| {
            Error::corrupt(
                "VMDK descriptor",
                base,
                "extents add up to more than 2^64 bytes",
            )
        })?;
        extents.push(extent);
    }
    // Empty extents take no part in I/O.
    extents.retain(|e| e.length > 0);
    Ok(Vmdk {
        path: path.to_path_buf(),
        cid: descriptor.cid,
        parent_cid: descriptor.parent_cid,
        create_type: descriptor.create_type.clone(),
        descriptor_text: text_of(bytes),
        descriptor: Some(descriptor),
        descriptor_place: place,
        extents,
        size: start,
        read_only: all_read_only,
        cid_updated: false,
        backing: None,
    })
}

/// A create type vdisk knows and at most [`MAX_EXTENTS`] extents (a parent image is
/// attached by the driver: `parentFileNameHint`).
fn check_descriptor_is_supported(descriptor: &Descriptor, base: u64) -> Result<()> {
    if !KNOWN_CREATE_TYPES.contains(&descriptor.create_type.as_str()) {
        return Err(Error::unsupported(format!(
            "VMDK image type '{}'",
            descriptor.create_type
        )));
    }
    if descriptor.extents.len() > MAX_EXTENTS {
        return Err(Error::corrupt(
            "VMDK descriptor",
            base,
            format!(
                "{} extents (at most {MAX_EXTENTS} are supported)",
                descriptor.extents.len()
            ),
        ));
    }
    Ok(())
}

/// Opens the extents of one descriptor: where the descriptor is and how the image is opened.
struct ExtentOpener<'a> {
    ns: &'a dyn Namespace,
    /// The descriptor's path.
    path: &'a Path,
    /// The directory extent file names are relative to.
    dir: &'a Path,
    opts: &'a VmdkOpenOptions,
    /// The descriptor's file offset (for errors).
    base: u64,
    /// Where the descriptor was read from (an extent in the same file shares its storage).
    place: &'a DescriptorPlace,
}

impl ExtentOpener<'_> {
    /// Open the extent `line` names as the one at guest offset `start`; also say whether it
    /// makes the whole image read-only (a compressed or COWD sparse extent).
    fn open(&self, line: &ExtentLine, start: u64) -> Result<(Extent, bool)> {
        let read_only = self.opts.read_only || line.access != Access::ReadWrite;
        let (file_path, filename) = match &line.file_name {
            Some(name) => {
                let p = resolve_extent_path(self.dir, name, self.opts.allow_outside_extents)?;
                let shown = p.display().to_string();
                (Some(p), shown)
            }
            None => (None, String::new()),
        };
        let open_storage = || self.storage(file_path.as_deref(), read_only);
        let mut forces_read_only = false;
        let (length, body) = match line.extent_type {
            ExtentType::Zero => (line.sectors * SECTOR_SIZE, ExtentBody::Zero),
            ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRdm => (
                line.sectors * SECTOR_SIZE,
                ExtentBody::Flat(FlatExtent::new(open_storage()?, line.offset * SECTOR_SIZE)),
            ),
            ExtentType::Sparse | ExtentType::VmfsSparse => {
                let sparse = SparseExtent::open(open_storage()?, read_only)?;
                forces_read_only =
                    sparse.geometry().compressed || sparse.kind() == SparseKind::Cowd;
                // As QEMU: a sparse extent's size comes from its own header.
                (
                    sparse.capacity_bytes(),
                    ExtentBody::Sparse(Box::new(sparse)),
                )
            }
            ExtentType::SeSparse => {
                return Err(Error::unsupported("VMDK SESPARSE extents"));
            }
        };
        let extent = Extent {
            start,
            length,
            access: line.access,
            type_name: line.extent_type.as_str().to_string(),
            filename,
            body,
        };
        Ok((extent, forces_read_only))
    }

    /// The storage of the extent file at `file_path`.
    fn storage(&self, file_path: Option<&Path>, read_only: bool) -> Result<Arc<dyn Storage>> {
        let force_share = self.opts.force_share;
        match file_path {
            // An extent that is the descriptor's own file shares its open file: a
            // second open would conflict with the first one's image lock.
            Some(p) if self.ns.same_file(p, self.path) => match self.place {
                DescriptorPlace::File(s) | DescriptorPlace::Embedded { storage: s, .. } => {
                    Ok(s.clone())
                }
                DescriptorPlace::Nowhere => open_file(self.ns, p, read_only, force_share),
            },
            Some(p) => open_file(self.ns, p, read_only, force_share),
            None => Err(Error::corrupt(
                "VMDK descriptor",
                self.base,
                "extent has no file",
            )),
        }
    }
}

/// The descriptor text up to its first NUL.
fn text_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Read the descriptor embedded in a sparse extent; returns its byte offset and bytes.
fn read_embedded_descriptor(
    storage: &dyn Storage,
    header: &SparseHeader,
    file_len: u64,
) -> Result<(u64, Vec<u8>)> {
    let bad = |msg: String| Error::corrupt("VMDK sparse header", 0, msg);
    let offset = header
        .descriptor_offset
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| bad("descriptor offset is too large".into()))?;
    let size = header
        .descriptor_size
        .checked_mul(SECTOR_SIZE)
        .filter(|&s| s <= MAX_DESCRIPTOR_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "embedded descriptor of {} sectors is larger than {MAX_DESCRIPTOR_BYTES} bytes",
                header.descriptor_size
            ))
        })?;
    if offset >= file_len {
        return Err(bad(format!(
            "embedded descriptor at {offset:#x} lies past the end of the file"
        )));
    }
    let size = size.min(file_len - offset);
    let mut text = vec![0u8; size as usize];
    storage
        .read_at(&mut text, offset)
        .map_err(|e| Error::io("VMDK embedded descriptor: reading", e))?;
    Ok((offset, text))
}

/// Turn an extent file name from a descriptor into a path. Unless `allow_outside` is set,
/// the name must be relative and must not climb out of the descriptor's directory.
pub(crate) fn resolve_extent_path(dir: &Path, name: &str, allow_outside: bool) -> Result<PathBuf> {
    let rel = Path::new(name);
    if crate::names::leaves_directory(rel) && !allow_outside {
        return Err(Error::invalid(format!(
            "VMDK descriptor names extent file '{name}', which lies outside the descriptor's \
             directory; refusing to open it (allow extents outside the directory explicitly \
             if the image is trusted)"
        )));
    }
    if rel.is_absolute() {
        Ok(rel.to_path_buf())
    } else {
        Ok(dir.join(rel))
    }
}

/// Whether `a` and `b` name the same existing file.
fn open_file(
    ns: &dyn Namespace,
    path: &Path,
    read_only: bool,
    force_share: bool,
) -> Result<Arc<dyn Storage>> {
    ns.open(
        path,
        OpenOptions {
            write: !read_only,
            unsafe_cache: false,
            force_share,
        },
    )
    .map_err(|e| {
        Error::io(
            format!("could not open '{}'", crate::storage::display_name(path)),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_names_inside_the_directory_resolve_against_it() {
        let dir = Path::new("/images");
        assert_eq!(
            resolve_extent_path(dir, "a-flat.vmdk", false).unwrap(),
            PathBuf::from("/images/a-flat.vmdk")
        );
        assert_eq!(
            resolve_extent_path(dir, "sub/a.vmdk", false).unwrap(),
            PathBuf::from("/images/sub/a.vmdk")
        );
        assert_eq!(
            resolve_extent_path(Path::new(""), "a.vmdk", false).unwrap(),
            PathBuf::from("a.vmdk")
        );
    }

    #[test]
    fn absolute_and_parent_extent_names_are_refused_unless_allowed() {
        let dir = Path::new("/images");
        for name in ["/etc/passwd", "../secret", "sub/../../x", "./../x"] {
            let err = resolve_extent_path(dir, name, false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("outside"), "{name}: {err}");
        }
        assert_eq!(
            resolve_extent_path(dir, "/data/x.vmdk", true).unwrap(),
            PathBuf::from("/data/x.vmdk")
        );
        assert_eq!(
            resolve_extent_path(dir, "../x.vmdk", true).unwrap(),
            PathBuf::from("/images/../x.vmdk")
        );
    }
}
