//! Creating VMDK images of the five subformats qemu-img writes, with its options
//! (`subformat`, `adapter_type`, `hwversion`, `compat6`, `toolsversion`, `zeroed_grain`),
//! laid out as qemu-img lays them out.
//!
//! Sparse extents get qemu-img's layout: header, 20 descriptor sectors, the redundant
//! grain directory and its grain tables, the grain directory and its grain tables (all
//! preallocated), then grains from the next 64 KiB boundary. A streamOptimized image gets
//! the header (grain directory "at the end"), the descriptor, and then whatever the
//! sequential writer appends.

use super::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use super::grain_table::encode_table;
use super::header::{
    SparseHeader, COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
    FLAG_REDUNDANT_GD, FLAG_ZEROED_GRAIN, GD_AT_END, HEADER_SIZE, NEWLINE_TEST,
};
use super::limits::{
    CREATE_DESCRIPTOR_SECTORS, CREATE_GRAIN_SECTORS, CREATE_GTES_PER_GT, MAX_EXTENT_FILE_SECTORS,
    MAX_EXTENT_SECTORS, SECTOR_SIZE, SPLIT_EXTENT_BYTES,
};
use super::stream::StreamWriter;
use super::{random_u32, DescriptorPlace, Extent, ExtentBody, Vmdk, VmdkOpenOptions};
use crate::error::{Error, Result};
use crate::storage::{HostFiles, Namespace, Storage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The VMDK subformats vdisk can create (qemu-img's `subformat` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// One sparse extent file with an embedded descriptor.
    #[default]
    MonolithicSparse,
    /// A descriptor file and one flat extent file.
    MonolithicFlat,
    /// A descriptor file and sparse extent files of at most 2 GiB each.
    TwoGbMaxExtentSparse,
    /// A descriptor file and flat extent files of at most 2 GiB each.
    TwoGbMaxExtentFlat,
    /// One compressed sparse extent file, written front to back.
    StreamOptimized,
}

impl Subformat {
    /// The name used by `createType` and by qemu-img's option.
    pub fn as_str(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }

    fn is_flat(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat
        )
    }

    fn is_split(self) -> bool {
        matches!(
            self,
            Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat
        )
    }
}

impl std::str::FromStr for Subformat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            _ => {
                // qemu's words (the values: monolithicSparse, monolithicFlat,
                // twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized).
                return Err(Error::invalid(format!("invalid parameter value: {s}")));
            }
        })
    }
}

/// Adapter types qemu-img accepts.
const ADAPTER_TYPES: &[&str] = &["ide", "lsilogic", "buslogic", "legacyESX"];

/// Options for [`create`], as qemu-img's `-o` options for vmdk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkCreateOptions {
    pub subformat: Subformat,
    /// `ide` (default), `lsilogic`, `buslogic` or `legacyESX`.
    pub adapter_type: String,
    /// `ddb.virtualHWVersion`; `None` means 4 (or 6 with `compat6`).
    pub hwversion: Option<String>,
    /// Hardware version 6 (cannot be combined with `hwversion`).
    pub compat6: bool,
    /// `ddb.toolsVersion`; `None` means 2147483647.
    pub toolsversion: Option<String>,
    /// Mark zeroed grains in grain tables instead of writing zeros (sparse only).
    pub zeroed_grain: bool,
    /// The parent image (`backing_file`), named as it is to be recorded in
    /// `parentFileNameHint`; relative names are relative to the new image's directory.
    pub backing_file: Option<String>,
}

impl Default for VmdkCreateOptions {
    fn default() -> Self {
        VmdkCreateOptions {
            subformat: Subformat::MonolithicSparse,
            adapter_type: "ide".into(),
            hwversion: None,
            compat6: false,
            toolsversion: None,
            zeroed_grain: false,
            backing_file: None,
        }
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::invalid(format!(
            "parameter '{key}' expects 'on' or 'off', not '{value}'"
        ))),
    }
}

impl VmdkCreateOptions {
    /// Apply one qemu-img `-o key=value` option.
    pub fn parse_option(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "subformat" => self.subformat = value.parse()?,
            "adapter_type" => {
                if !ADAPTER_TYPES.contains(&value) {
                    // qemu's words (the values: ide, lsilogic, buslogic, legacyESX).
                    return Err(Error::invalid(format!("invalid parameter value: {value}")));
                }
                self.adapter_type = value.to_string();
            }
            "hwversion" => {
                self.hwversion = (value != "undefined").then(|| value.to_string());
            }
            "compat6" => self.compat6 = parse_bool(key, value)?,
            "toolsversion" => self.toolsversion = Some(value.to_string()),
            "zeroed_grain" => self.zeroed_grain = parse_bool(key, value)?,
            // The host file's option: qemu-img accepts these for VMDK and the extents it
            // creates are the same as without them (sparse extents hold metadata only, flat
            // ones are left sparse), so vdisk does the same.
            "preallocation" => match value {
                "off" | "falloc" | "full" => {}
                "metadata" => {
                    return Err(Error::invalid("Unsupported preallocation mode: metadata"))
                }
                _ => return Err(Error::invalid(format!("invalid parameter value: {value}"))),
            },
            "size" => {}
            "backing_file" => self.backing_file = Some(value.to_string()),
            // The parent is opened as VMDK whatever is named here; another format is
            // refused when it is opened ("backing_file must be a vmdk image").
            "backing_fmt" => {}
            _ => return Err(Error::invalid(format!("Invalid parameter '{key}'"))),
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if !ADAPTER_TYPES.contains(&self.adapter_type.as_str()) {
            return Err(Error::invalid(format!(
                "invalid parameter value: {}",
                self.adapter_type
            )));
        }
        if self.compat6 && self.hwversion.is_some() {
            return Err(Error::invalid(
                "compat6 cannot be enabled with hwversion set",
            ));
        }
        if self.subformat.is_flat() && self.zeroed_grain {
            return Err(Error::invalid("Flat image can't enable zeroed grain"));
        }
        Ok(())
    }
}

/// Create a VMDK image of `size` bytes (rounded up to a sector) at `path`, and return it
/// open for writing. Split and flat subformats also create extent files next to `path`
/// (`NAME-flat.EXT`, `NAME-s001.EXT`, `NAME-f001.EXT`, …).
///
/// A streamOptimized image accepts writes only in increasing guest order and must be
/// closed with [`close`](crate::BlockDevice::close), which writes its trailing metadata.
pub fn create(path: &Path, size: u64, opts: &VmdkCreateOptions) -> Result<Vmdk> {
    create_in(&HostFiles, path, size, opts)
}

/// [`create`], with every file created (and the image then opened) through `ns`.
pub fn create_in(
    ns: &dyn Namespace,
    path: &Path,
    size: u64,
    opts: &VmdkCreateOptions,
) -> Result<Vmdk> {
    if opts.subformat.is_flat() && opts.backing_file.is_some() {
        return Err(Error::invalid(format!(
            "{}: Flat image can't have backing file",
            path.display()
        )));
    }
    opts.validate()?;
    let size = round_size(size)?;
    let subformat = opts.subformat;
    let extent_type = if subformat.is_flat() {
        ExtentType::Flat
    } else {
        ExtentType::Sparse
    };
    let line = |bytes: u64, name: String| ExtentLine {
        access: Access::ReadWrite,
        sectors: bytes / SECTOR_SIZE,
        extent_type,
        file_name: Some(name),
        offset: 0,
    };
    let mut extents = Vec::new();
    match extent_files(path, size, subformat)? {
        None => extents.push(line(size, file_name(path))),
        Some(files) => {
            for f in files {
                let storage = create_file(ns, &f.path)?;
                if subformat.is_flat() {
                    storage
                        .set_len(f.bytes)
                        .map_err(|e| Error::io(format!("{}: sizing", f.path.display()), e))?;
                } else {
                    init_sparse_extent(&storage, f.bytes, false, opts.zeroed_grain)?;
                }
                extents.push(line(f.bytes, f.name));
            }
        }
    }
    let mut descriptor = new_descriptor(size, opts, extents);
    if let Some(parent) = &opts.backing_file {
        descriptor.parent_cid = parent_cid(ns, path, parent)?;
        descriptor.parent_file_name_hint = Some(parent.clone());
    }
    let text = descriptor.to_text();
    match subformat {
        Subformat::MonolithicSparse => {
            let storage = create_file(ns, path)?;
            init_sparse_extent(&storage, size, false, opts.zeroed_grain)?;
            write_embedded_descriptor(&storage, &text)?;
            flush(&storage)?;
        }
        Subformat::StreamOptimized => return create_stream(ns, path, size, opts, descriptor, text),
        _ => {
            let storage = create_file(ns, path)?;
            storage
                .write_at(text.as_bytes(), 0)
                .and_then(|_| storage.set_len(text.len() as u64))
                .map_err(|e| Error::io(format!("{}: writing the descriptor", path.display()), e))?;
            flush(&storage)?;
        }
    }
    super::open::open_in(
        ns,
        path,
        &VmdkOpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
}

/// The CID of the parent image `name` of a new image at `path` (opened read-only as
/// VMDK; anything else is refused as qemu-img refuses it).
fn parent_cid(ns: &dyn Namespace, path: &Path, name: &str) -> Result<u32> {
    let parent = Path::new(name);
    let parent = match (parent.is_absolute(), path.parent()) {
        (false, Some(dir)) => dir.join(parent),
        _ => parent.to_path_buf(),
    };
    let opts = super::VmdkOpenOptions {
        read_only: true,
        ..Default::default()
    };
    match super::open_in(ns, &parent, &opts) {
        Ok(v) => Ok(v.cid),
        Err(_) => Err(Error::invalid(format!(
            "{}: backing_file must be a vmdk image",
            path.display()
        ))),
    }
}

fn new_descriptor(size: u64, opts: &VmdkCreateOptions, extents: Vec<ExtentLine>) -> Descriptor {
    let heads: u64 = if opts.adapter_type == "ide" { 16 } else { 255 };
    let hwversion = match (&opts.hwversion, opts.compat6) {
        (Some(v), _) => v.clone(),
        (None, true) => "6".into(),
        (None, false) => "4".into(),
    };
    let tools = opts
        .toolsversion
        .clone()
        .unwrap_or_else(|| "2147483647".into());
    let cylinders = size / (63 * heads * SECTOR_SIZE);
    Descriptor {
        version: 1,
        cid: random_u32(),
        parent_cid: NO_PARENT_CID,
        create_type: opts.subformat.as_str().to_string(),
        parent_file_name_hint: None,
        other_keys: Vec::new(),
        extents,
        ddb: vec![
            ("ddb.virtualHWVersion".into(), hwversion),
            ("ddb.geometry.cylinders".into(), cylinders.to_string()),
            ("ddb.geometry.heads".into(), heads.to_string()),
            ("ddb.geometry.sectors".into(), "63".into()),
            ("ddb.adapterType".into(), opts.adapter_type.clone()),
            ("ddb.toolsVersion".into(), tools),
        ],
    }
}

/// Write a sparse extent's header, directories and (zeroed) grain tables for `size` guest
/// bytes, and size the file to the first grain.
fn init_sparse_extent(
    storage: &Arc<dyn Storage>,
    size: u64,
    compressed: bool,
    zeroed_grain: bool,
) -> Result<()> {
    let capacity = size / SECTOR_SIZE;
    let grains = capacity.div_ceil(CREATE_GRAIN_SECTORS);
    let gtes = u64::from(CREATE_GTES_PER_GT);
    let gt_sectors = (gtes * 4).div_ceil(SECTOR_SIZE);
    let gt_count = grains.div_ceil(gtes);
    let gd_sectors = (gt_count * 4).div_ceil(SECTOR_SIZE);
    let rgd_offset = 1 + CREATE_DESCRIPTOR_SECTORS;
    let gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count;
    let overhead =
        (gd_offset + gd_sectors + gt_sectors * gt_count).next_multiple_of(CREATE_GRAIN_SECTORS);
    if overhead >= MAX_EXTENT_FILE_SECTORS {
        return Err(Error::invalid(
            "image is too large for a VMDK sparse extent",
        ));
    }
    let header = SparseHeader {
        version: if compressed {
            3
        } else if zeroed_grain {
            2
        } else {
            1
        },
        flags: FLAG_REDUNDANT_GD
            | FLAG_NEWLINE_TEST
            | if compressed {
                FLAG_COMPRESSED | FLAG_MARKERS
            } else {
                0
            }
            | if zeroed_grain { FLAG_ZEROED_GRAIN } else { 0 },
        capacity,
        grain_size: CREATE_GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: CREATE_DESCRIPTOR_SECTORS,
        num_gtes_per_gt: CREATE_GTES_PER_GT,
        rgd_offset,
        gd_offset,
        overhead,
        unclean_shutdown: 0,
        newline_test: NEWLINE_TEST,
        compress_algorithm: if compressed { COMPRESSION_DEFLATE } else { 0 },
    };
    let io = |e| Error::io("VMDK sparse extent: initialising", e);
    let mut sector = [0u8; HEADER_SIZE];
    header.write(&mut sector);
    storage.write_at(&sector, 0).map_err(io)?;
    storage.set_len(overhead * SECTOR_SIZE).map_err(io)?;
    for directory in [rgd_offset, gd_offset] {
        let entries: Vec<u32> = (0..gt_count)
            .map(|i| (directory + gd_sectors + i * gt_sectors) as u32)
            .collect();
        storage
            .write_at(&encode_table(&entries), directory * SECTOR_SIZE)
            .map_err(io)?;
    }
    Ok(())
}

fn write_embedded_descriptor(storage: &Arc<dyn Storage>, text: &str) -> Result<()> {
    if text.len() as u64 > CREATE_DESCRIPTOR_SECTORS * SECTOR_SIZE {
        return Err(Error::invalid(
            "VMDK descriptor does not fit in the embedded descriptor area (file name too long?)",
        ));
    }
    storage
        .write_at(text.as_bytes(), SECTOR_SIZE)
        .map_err(|e| Error::io("VMDK sparse extent: writing the descriptor", e))
}

/// A streamOptimized image: header with the grain directory at the end, descriptor, and a
/// sequential writer for the rest.
fn create_stream(
    ns: &dyn Namespace,
    path: &Path,
    size: u64,
    opts: &VmdkCreateOptions,
    descriptor: Descriptor,
    text: String,
) -> Result<Vmdk> {
    let storage = create_file(ns, path)?;
    let header = SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST
            | FLAG_COMPRESSED
            | FLAG_MARKERS
            | if opts.zeroed_grain {
                FLAG_ZEROED_GRAIN
            } else {
                0
            },
        capacity: size / SECTOR_SIZE,
        grain_size: CREATE_GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: CREATE_DESCRIPTOR_SECTORS,
        num_gtes_per_gt: CREATE_GTES_PER_GT,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: CREATE_GRAIN_SECTORS,
        unclean_shutdown: 0,
        newline_test: NEWLINE_TEST,
        compress_algorithm: COMPRESSION_DEFLATE,
    };
    let mut sector = [0u8; HEADER_SIZE];
    header.write(&mut sector);
    let io = |e| Error::io(format!("{}: creating", path.display()), e);
    storage.write_at(&sector, 0).map_err(io)?;
    write_embedded_descriptor(&storage, &text)?;
    storage.set_len(header.overhead * SECTOR_SIZE).map_err(io)?;
    let writer = StreamWriter::new(storage.clone(), header);
    let mut vmdk = Vmdk {
        path: path.to_path_buf(),
        cid: descriptor.cid,
        parent_cid: descriptor.parent_cid,
        create_type: descriptor.create_type.clone(),
        descriptor: Some(descriptor),
        descriptor_text: text,
        descriptor_place: DescriptorPlace::Embedded {
            storage,
            offset: SECTOR_SIZE,
            room: CREATE_DESCRIPTOR_SECTORS * SECTOR_SIZE,
        },
        extents: vec![Extent {
            start: 0,
            length: size,
            access: Access::ReadWrite,
            type_name: String::new(),
            filename: path.display().to_string(),
            body: ExtentBody::Stream(Box::new(writer)),
        }],
        size,
        read_only: false,
        // The CID was just chosen: no need to change it on the first write.
        cid_updated: true,
        backing: None,
    };
    // A zero-sized image still gets its footer on close().
    if size == 0 {
        vmdk.extents[0].length = 0;
    }
    Ok(vmdk)
}

/// Every file [`create`] makes for an image of `size` bytes at `path` with `opts`: the
/// image file itself, then its extent files.
pub fn files(path: &Path, size: u64, opts: &VmdkCreateOptions) -> Result<Vec<PathBuf>> {
    let mut all = vec![path.to_path_buf()];
    if let Some(files) = extent_files(path, round_size(size)?, opts.subformat)? {
        all.extend(files.into_iter().map(|f| f.path));
    }
    Ok(all)
}

/// `size` rounded up to a whole sector, refused when VMDK cannot describe it.
fn round_size(size: u64) -> Result<u64> {
    size.checked_next_multiple_of(SECTOR_SIZE)
        .filter(|&s| s / SECTOR_SIZE <= MAX_EXTENT_SECTORS)
        .ok_or_else(|| Error::invalid(format!("image size {size} is too large for VMDK")))
}

/// One extent file of a new image.
struct ExtentFile {
    /// Where it goes.
    path: PathBuf,
    /// Its name in the descriptor (relative to the descriptor's directory).
    name: String,
    /// The guest bytes it holds.
    bytes: u64,
}

/// The extent files of a `subformat` image of `size` bytes (a multiple of the sector) at
/// `path`, named as qemu-img names them. `None` for the subformats whose one extent is the
/// image file itself.
fn extent_files(path: &Path, size: u64, subformat: Subformat) -> Result<Option<Vec<ExtentFile>>> {
    if !subformat.is_split() && !subformat.is_flat() {
        return Ok(None);
    }
    let (dir, prefix, postfix) = decompose(path)?;
    let chunk = if subformat.is_split() {
        SPLIT_EXTENT_BYTES
    } else {
        size.max(1)
    };
    let mut files = Vec::new();
    let mut done = 0;
    while done < size {
        let bytes = (size - done).min(chunk);
        let name = if subformat.is_split() {
            let letter = if subformat.is_flat() { 'f' } else { 's' };
            format!("{prefix}-{letter}{:03}{postfix}", files.len() + 1)
        } else {
            format!("{prefix}-flat{postfix}")
        };
        files.push(ExtentFile {
            path: dir.join(&name),
            name,
            bytes,
        });
        done += bytes;
    }
    Ok(Some(files))
}

/// Split `path` into its directory, the file name before its last dot, and the rest
/// (`dir/disk.vmdk` → `dir`, `disk`, `.vmdk`), as qemu-img names extent files.
fn decompose(path: &Path) -> Result<(PathBuf, String, String)> {
    let name = file_name(path);
    if name.is_empty() {
        return Err(Error::invalid("no file name given for the VMDK image"));
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(match name.rfind('.') {
        Some(dot) => (dir, name[..dot].to_string(), name[dot..].to_string()),
        None => (dir, name, String::new()),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn create_file(ns: &dyn Namespace, path: &Path) -> Result<Arc<dyn Storage>> {
    ns.create(path, false).map_err(|e| {
        Error::io(
            format!("could not create '{}'", crate::storage::display_name(path)),
            e,
        )
    })
}

fn flush(storage: &Arc<dyn Storage>) -> Result<()> {
    storage
        .flush()
        .map_err(|e| Error::io("VMDK: flushing a new image", e))
}

use crate::create_opts::{Kind, OptionDesc, SIZE};

/// VMDK's creation options in qemu-img's order (its preallocation is the host file's
/// option, [`crate::create_opts::FILE_OPTIONS`]).
pub const CREATE_OPTIONS: &[OptionDesc] = &[
    SIZE,
    OptionDesc::new(
        "adapter_type",
        Kind::Str,
        "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX",
    ),
    OptionDesc::new("backing_file", Kind::Str, "File name of a base image"),
    OptionDesc::new("backing_fmt", Kind::Str, "Must be 'vmdk' if present"),
    OptionDesc::new("compat6", Kind::Bool, "VMDK version 6 image").with_default("off"),
    OptionDesc::new("hwversion", Kind::Str, "VMDK hardware version").with_default("undefined"),
    OptionDesc::new("toolsversion", Kind::Str, "VMware guest tools version"),
    OptionDesc::new(
        "subformat",
        Kind::Str,
        "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ",
    ),
    OptionDesc::new(
        "zeroed_grain",
        Kind::Bool,
        "Enable efficient zero writes using the zeroed-grain GTE feature",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_qemu_img_defaults() {
        let o = VmdkCreateOptions::default();
        assert_eq!(o.subformat, Subformat::MonolithicSparse);
        assert_eq!(o.adapter_type, "ide");
        assert!(!o.compat6 && !o.zeroed_grain);
    }

    #[test]
    fn every_qemu_img_option_is_accepted() {
        let mut o = VmdkCreateOptions::default();
        o.parse_option("subformat", "twoGbMaxExtentFlat").unwrap();
        o.parse_option("adapter_type", "legacyESX").unwrap();
        o.parse_option("hwversion", "7").unwrap();
        o.parse_option("toolsversion", "123").unwrap();
        o.parse_option("compat6", "off").unwrap();
        o.parse_option("zeroed_grain", "on").unwrap();
        assert_eq!(o.subformat, Subformat::TwoGbMaxExtentFlat);
        assert_eq!(o.hwversion.as_deref(), Some("7"));
        assert!(o.zeroed_grain);
        o.parse_option("hwversion", "undefined").unwrap();
        assert_eq!(o.hwversion, None);
    }

    #[test]
    fn an_unknown_option_or_value_is_named_in_the_error() {
        let mut o = VmdkCreateOptions::default();
        assert!(o
            .parse_option("bogus", "1")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        assert!(o
            .parse_option("adapter_type", "scsi")
            .unwrap_err()
            .to_string()
            .contains("scsi"));
        assert!(o.parse_option("subformat", "vmfs").is_err());
        assert!(o.parse_option("compat6", "maybe").is_err());
    }

    #[test]
    fn conflicting_options_are_refused_as_qemu_img_does() {
        let o = VmdkCreateOptions {
            compat6: true,
            hwversion: Some("7".into()),
            ..Default::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("compat6"));
        let o = VmdkCreateOptions {
            subformat: Subformat::MonolithicFlat,
            zeroed_grain: true,
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("zeroed grain"));
    }

    #[test]
    fn the_descriptor_matches_qemu_img_for_an_lsilogic_disk() {
        let opts = VmdkCreateOptions {
            adapter_type: "lsilogic".into(),
            hwversion: Some("7".into()),
            toolsversion: Some("123".into()),
            ..Default::default()
        };
        let d = new_descriptor(3000064, &opts, Vec::new());
        assert_eq!(d.ddb_value("ddb.geometry.heads"), Some("255"));
        assert_eq!(d.ddb_value("ddb.geometry.cylinders"), Some("0"));
        assert_eq!(d.ddb_value("ddb.virtualHWVersion"), Some("7"));
        assert_eq!(d.ddb_value("ddb.toolsVersion"), Some("123"));
    }

    #[test]
    fn names_split_into_directory_prefix_and_extension() {
        let (d, p, x) = decompose(Path::new("/a/b/disk.x.vmdk")).unwrap();
        assert_eq!(
            (d, p.as_str(), x.as_str()),
            (PathBuf::from("/a/b"), "disk.x", ".vmdk")
        );
        let (_, p, x) = decompose(Path::new("disk")).unwrap();
        assert_eq!((p.as_str(), x.as_str()), ("disk", ""));
    }
}
