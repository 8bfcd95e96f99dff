//! Creating VHD images: the `-o` options qemu-img takes for `vpc` (`subformat`,
//! `force_size`), fixed and dynamic disks laid out as QEMU lays them out, and
//! differencing disks (which QEMU cannot make) over a VHD parent, with the parent's UUID,
//! modification time, name and two parent locators as Windows writes them.
//!
//! A dynamic disk: the footer copy at 0, the dynamic header at 512, the BAT at 1536
//! (whole sectors), the footer. A differencing disk puts the locator data between the
//! header and the BAT, so that QEMU, which allocates from the end of the BAT, never writes
//! over it. A fixed disk: the data, then the footer.

use super::dynamic::{
    string_to_utf16, DynamicHeader, ParentLocator, DEFAULT_BLOCK_SIZE, HEADER_LEN, PLATFORM_W2KU,
    PLATFORM_W2RU, UNALLOCATED,
};
use super::footer::{self, DiskType, Footer, FOOTER_LEN, SECTOR, TIMESTAMP_BASE};
use super::image::{read_footer, Vhd};
use crate::device::BlockDevice;
use crate::driver::{self, CreateParams};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions, Storage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `-o` asks of a new VHD image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// A fixed disk (else dynamic).
    pub fixed: bool,
    /// Keep the size as given (maximum geometry, creator `qem2`).
    pub force_size: bool,
    /// The parent of a differencing disk, as given.
    pub backing_file: Option<String>,
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// Parse the `-o` options (qemu-img's words for what it refuses).
pub fn create_options(options: &driver::Options) -> Result<CreateOptions> {
    let mut o = CreateOptions::default();
    let mut backing_fmt = None;
    for (k, v) in options {
        match k.as_str() {
            "size" | "nocow" | "extent_size_hint" => {}
            "subformat" => {
                o.fixed = match v.as_str() {
                    "dynamic" => false,
                    "fixed" => true,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Parameter 'subformat' does not accept value '{v}'"
                        )))
                    }
                }
            }
            "force_size" => o.force_size = parse_bool(k, v)?,
            "preallocation" => match v.as_str() {
                "off" | "falloc" | "full" => {}
                "metadata" => {
                    return Err(Error::invalid("Unsupported preallocation mode: metadata"))
                }
                other => {
                    return Err(Error::invalid(format!(
                        "Parameter 'preallocation' does not accept value '{other}'"
                    )))
                }
            },
            // qemu-img cannot make differencing VHDs; vdisk can, over a VHD parent.
            "backing_file" => o.backing_file = Some(v.clone()),
            "backing_fmt" => backing_fmt = Some(v.clone()),
            _ => return Err(driver::invalid_option("vpc", k)),
        }
    }
    if let Some(f) = backing_fmt {
        if f != "vpc" {
            return Err(Error::unsupported(format!(
                "a differencing VHD needs a VHD parent (backing format 'vpc', not '{f}')"
            )));
        }
    }
    if o.backing_file.is_some() && o.fixed {
        return Err(Error::invalid(
            "a differencing VHD is dynamic: subformat=fixed takes no backing file",
        ));
    }
    Ok(o)
}

/// Create a VHD image at `path`, open for writing.
pub fn create(
    ns: &dyn Namespace,
    path: &Path,
    p: &CreateParams<'_>,
) -> Result<Box<dyn BlockDevice>> {
    let o = create_options(p.options)?;
    let size = p
        .size
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    let parent = match &o.backing_file {
        Some(name) => Some(read_parent(ns, path, name)?),
        None => None,
    };
    let (size, geometry) = match &parent {
        Some(pf) => {
            if size != pf.footer.virtual_size() {
                return Err(Error::invalid(format!(
                    "a differencing VHD has its parent's size ({} bytes), not {size}",
                    pf.footer.virtual_size()
                )));
            }
            (pf.footer.current_size, pf.footer.geometry)
        }
        None => footer::rounded_size(size, o.force_size)?,
    };
    let kind = match (&parent, o.fixed) {
        (Some(_), _) => DiskType::Differencing,
        (None, true) => DiskType::Fixed,
        (None, false) => DiskType::Dynamic,
    };
    // As QEMU: `qem2` for force_size, else `qemu` (even past the largest geometry). A
    // child is sized the way its parent is: by the same geometry, or the same current size.
    let by_geometry = match &parent {
        Some(pf) => pf.footer.sized_by_geometry(),
        None => !o.force_size,
    };
    let app = if by_geometry {
        *footer::APP_CHS
    } else {
        *footer::APP_CURRENT_SIZE
    };
    let f = Footer::new(size, geometry, kind, crate::uuid::random_uuid(), app);
    let storage = ns.create(path, p.unsafe_cache).map_err(|e| {
        Error::io(
            format!("could not create '{}'", crate::storage::display_name(path)),
            e,
        )
    })?;
    let io = |e| Error::io("vhd: creating", e);
    if kind == DiskType::Fixed {
        storage.set_len(size).map_err(io)?;
        storage.write_at(&f.write(), size).map_err(io)?;
    } else {
        write_dynamic(&*storage, &f, size, parent.as_ref()).map_err(io)?;
    }
    storage.flush().map_err(io)?;
    Ok(Box::new(Vhd::open(storage, false)?))
}

/// Write the footer copy, dynamic header, locators, BAT and footer of a new dynamic or
/// differencing disk of `size` bytes.
fn write_dynamic(
    storage: &dyn Storage,
    f: &Footer,
    size: u64,
    parent: Option<&ParentInfo>,
) -> std::io::Result<()> {
    let block = u64::from(DEFAULT_BLOCK_SIZE);
    let entries = size.div_ceil(block) as u32;
    let mut table_offset = (FOOTER_LEN + HEADER_LEN) as u64;
    let mut locator_data = Vec::new();
    let mut h = DynamicHeader::new(0, entries, DEFAULT_BLOCK_SIZE);
    if let Some(p) = parent {
        h.parent_uuid = p.footer.uuid;
        h.parent_timestamp = p.timestamp;
        h.parent_name = p.file_name.clone();
        let mut slot = 0;
        for (platform, text) in [(PLATFORM_W2RU, &p.relative), (PLATFORM_W2KU, &p.absolute)] {
            let Some(text) = text else { continue };
            let data = string_to_utf16(text, false);
            let space = (data.len() as u64).next_multiple_of(SECTOR).max(SECTOR);
            h.locators[slot] = ParentLocator {
                platform,
                data_space: space as u32,
                data_length: data.len() as u32,
                data_offset: table_offset,
            };
            locator_data.push((table_offset, data));
            table_offset += space;
            slot += 1;
        }
    }
    h.table_offset = table_offset;
    storage.write_at(&f.write(), 0)?;
    storage.write_at(&h.write(), FOOTER_LEN as u64)?;
    for (at, data) in &locator_data {
        storage.write_at(data, *at)?;
    }
    let bat = vec![0xffu8; h.table_bytes() as usize];
    debug_assert_eq!(UNALLOCATED, u32::MAX);
    storage.write_at(&bat, table_offset)?;
    storage.write_at(&f.write(), table_offset + h.table_bytes())
}

/// What a differencing disk records of its parent.
struct ParentInfo {
    footer: Footer,
    /// Modification time, seconds since 2000-01-01 UTC.
    timestamp: u32,
    file_name: String,
    /// The `W2ru` text: the name relative to the child, with backslashes.
    relative: Option<String>,
    /// The `W2ku` text: the absolute path.
    absolute: Option<String>,
}

/// Read the footer of the VHD parent `name` (as given, relative to the child at `path`).
fn read_parent(ns: &dyn Namespace, path: &Path, name: &str) -> Result<ParentInfo> {
    crate::names::check_backing_name(name)?;
    let resolved = resolve(path, name);
    let storage: Arc<dyn Storage> = ns
        .open(
            &resolved,
            OpenOptions {
                force_share: true,
                ..Default::default()
            },
        )
        .map_err(|e| Error::io(format!("could not open parent '{}'", resolved.display()), e))?;
    let footer = read_footer(&*storage).map_err(|e| crate::error::with_path(&resolved, e))?;
    if let DiskType::Other(t) = footer.disk_type {
        return Err(Error::unsupported(format!(
            "parent '{name}' has VHD disk type {t}"
        )));
    }
    let timestamp = std::fs::metadata(&resolved)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(footer.timestamp, |d| {
            d.as_secs().saturating_sub(TIMESTAMP_BASE) as u32
        });
    let file_name = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    let relative = (!Path::new(name).is_absolute()).then(|| {
        let win = name.replace('/', "\\");
        if win.starts_with('.') {
            win
        } else {
            format!(".\\{win}")
        }
    });
    let absolute = std::path::absolute(&resolved)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    Ok(ParentInfo {
        footer,
        timestamp,
        file_name,
        relative,
        absolute,
    })
}

/// `name` as recorded in the image at `path`: absolute as it is, relative to the image's
/// directory otherwise (the rule of every backing file).
pub fn resolve(path: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    path.parent().unwrap_or(Path::new("")).join(p)
}
