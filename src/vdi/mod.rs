//! VDI images (VirtualBox): dynamic and static images, read and written; undo and
//! differencing images read and written through their parent, found by UUID among the
//! files of the same directory (QEMU refuses these).
//!
//! | file | owns |
//! | --- | --- |
//! | [`header`] | the 512-byte header, its fields and QEMU's checks |
//! | [`image`] | the open image: block map, reads, allocating writes, flush order, status |
//! | this file | the driver row: probe, open, create, info, check, dump; finding a parent |
//!
//! See `format-spec/vdi.md`.

pub mod header;
pub mod image;

pub use image::Vdi;

use crate::check_report::CheckReport;
use crate::create_opts::{Kind, OptionDesc, SIZE};
use crate::device::BlockDevice;
use crate::driver::{self, BackingRef, CreateParams, Driver, FormatInfo, OpenParams, Opened};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions, Storage};
use header::{Header, ImageType, DISCARDED, HEADER_LEN, SIGNATURE, UNALLOCATED};
use std::path::Path;
use std::sync::Arc;

/// The VDI row of the driver table.
pub static DRIVER: Driver = Driver {
    name: "vdi",
    probe,
    open,
    create,
    check_create_options: |options| create_options(options).map(|_| ()),
    create_options: CREATE_OPTIONS,
    amend_options: &[],
    create_files: driver::one_file,
    supports_compression: false,
    info,
    measure: None,
    check: Some(check),
    check_repairs: false,
    dump: Some(dump),
    // As qemu-img: VDI images keep their size.
    resize: None,
    amend: None,
    make_empty: None,
};

/// VDI's creation options in qemu-img's order (the host file's follow them).
const CREATE_OPTIONS: &[OptionDesc] = &[
    SIZE,
    OptionDesc::new("static", Kind::Bool, "VDI static (pre-allocated) image").with_default("off"),
];

fn probe(first: &[u8]) -> u32 {
    match first.get(0x40..0x44) {
        Some(b) if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == SIGNATURE => 100,
        _ => 0,
    }
}

fn open_storage(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Vdi<Arc<dyn Storage>>> {
    let storage = driver::open_file(ns, path, p.read_only, p)?;
    Vdi::open(storage, p.read_only).map_err(|e| match e {
        // The header's refusals are QEMU's words, after its `Could not open 'X': `.
        Error::InvalidArgument(m) => {
            Error::invalid(format!("Could not open '{}': {m}", path.display()))
        }
        e => crate::error::with_path(path, e),
    })
}

fn open(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Opened> {
    let vdi = open_storage(ns, path, p)?;
    let backing = if vdi.header().image_type.has_parent() {
        Some(find_parent(ns, path, &vdi.header().uuid_link)?)
    } else {
        None
    };
    Ok(Opened {
        device: Box::new(vdi),
        backing,
    })
}

/// The file of the same directory whose image UUID is `uuid` (VirtualBox records a
/// differencing image's parent by UUID only).
fn find_parent(ns: &dyn Namespace, path: &Path, uuid: &[u8; 16]) -> Result<BackingRef> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let names = ns.list(dir).map_err(|e| {
        Error::io(
            format!("listing '{}' for the parent image", dir.display()),
            e,
        )
    })?;
    for candidate in names {
        if ns.same_file(&candidate, path) {
            continue;
        }
        let Ok(st) = ns.open(
            &candidate,
            OpenOptions {
                force_share: true,
                ..Default::default()
            },
        ) else {
            continue;
        };
        let mut first = [0u8; HEADER_LEN];
        if st.read_at(&mut first, 0).is_err() || probe(&first) == 0 {
            continue;
        }
        if let Ok(h) = Header::parse(&first) {
            if &h.uuid_image == uuid {
                let name = candidate
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Ok(BackingRef {
                    name,
                    format: Some("vdi".into()),
                });
            }
        }
    }
    Err(Error::invalid(format!(
        "could not find the parent of '{}': no VDI image with UUID {} in '{}'",
        path.display(),
        crate::uuid::to_string(uuid),
        dir.display()
    )))
}

/// What `-o` asks of a new VDI image: static or dynamic.
fn create_options(options: &driver::Options) -> Result<ImageType> {
    let mut kind = ImageType::Dynamic;
    for (k, v) in options {
        match k.as_str() {
            "size" | "nocow" | "extent_size_hint" => {}
            "static" => {
                kind = match v.as_str() {
                    "on" | "true" | "yes" => ImageType::Static,
                    "off" | "false" | "no" => ImageType::Dynamic,
                    _ => return Err(Error::invalid("Parameter 'static' expects 'on' or 'off'")),
                }
            }
            // The file layer takes these and, for a file this small, does nothing.
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
            _ => return Err(driver::invalid_option("vdi", k)),
        }
    }
    Ok(kind)
}

fn create(ns: &dyn Namespace, path: &Path, p: &CreateParams<'_>) -> Result<Box<dyn BlockDevice>> {
    let kind = create_options(p.options)?;
    let size = p
        .size
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    if size > header::MAX_DISK_SIZE {
        return Err(Error::invalid(format!(
            "Unsupported VDI image size (size is {size:#x}, max supported is {:#x})",
            header::MAX_DISK_SIZE
        )));
    }
    let storage = ns.create(path, p.unsafe_cache).map_err(|e| {
        Error::io(
            format!("could not create '{}'", crate::storage::display_name(path)),
            e,
        )
    })?;
    let h = Header::new(
        size,
        kind,
        crate::uuid::random_uuid(),
        crate::uuid::random_uuid(),
    );
    let io = |e| Error::io("vdi: creating", e);
    storage.write_at(&h.write(), 0).map_err(io)?;
    let mut bmap = vec![0u8; h.bmap_bytes() as usize];
    for i in 0..h.blocks_in_image as usize {
        let e = if kind == ImageType::Static {
            i as u32
        } else {
            UNALLOCATED
        };
        bmap[i * 4..i * 4 + 4].copy_from_slice(&e.to_le_bytes());
    }
    storage
        .write_at(&bmap, u64::from(h.offset_bmap))
        .map_err(io)?;
    let end = if kind == ImageType::Static {
        h.block_offset(h.blocks_in_image)
    } else {
        u64::from(h.offset_data)
    };
    storage.set_len(end).map_err(io)?;
    storage.flush().map_err(io)?;
    Ok(Box::new(Vdi::open(storage, false)?))
}

fn info(ns: &dyn Namespace, path: &Path, force_share: bool) -> Result<FormatInfo> {
    let opened = open(ns, path, &OpenParams::read_only(force_share))?;
    Ok(FormatInfo {
        virtual_size: opened.device.virtual_size(),
        cluster_size: opened.device.cluster_size(),
        backing: opened.backing,
        ..Default::default()
    })
}

/// QEMU's check: every allocated entry names a data block inside the image, no data block
/// is named twice, and the header's allocated count matches. Nothing is repaired.
fn check(
    ns: &dyn Namespace,
    path: &Path,
    _repair: crate::check_report::Repair,
    force_share: bool,
) -> Result<CheckReport> {
    let vdi = open_storage(ns, path, &OpenParams::read_only(force_share))?;
    let h = vdi.header();
    let mut report = CheckReport::default();
    let mut owner = vec![UNALLOCATED; h.blocks_in_image as usize];
    let mut allocated = 0u32;
    for (block, &e) in vdi.block_map().iter().enumerate() {
        if e >= DISCARDED {
            continue;
        }
        if e >= h.blocks_in_image {
            report.msg(format!("ERROR: block index {block} too large, is {e}"));
            report.corruptions += 1;
            continue;
        }
        allocated += 1;
        if owner[e as usize] == UNALLOCATED {
            owner[e as usize] = e;
        } else {
            report.msg(format!(
                "ERROR: block index {} also used by {e}",
                owner[e as usize]
            ));
            report.corruptions += 1;
        }
    }
    if allocated != h.blocks_allocated {
        report.msg(format!(
            "ERROR: allocated blocks mismatch, is {allocated}, should be {}",
            h.blocks_allocated
        ));
        report.corruptions += 1;
    }
    Ok(report)
}

fn dump(
    ns: &dyn Namespace,
    path: &Path,
    opts: driver::DumpOptions,
    force_share: bool,
) -> Result<serde_json::Value> {
    let opts = opts.or_all();
    let vdi = open_storage(ns, path, &OpenParams::read_only(force_share))?;
    let h = vdi.header();
    let mut doc = serde_json::Map::new();
    doc.insert("format".into(), "vdi".into());
    if opts.header {
        doc.insert(
            "header".into(),
            serde_json::json!({
                "offset": driver::hex(0),
                "image_type": format!("{:?}", h.image_type),
                "version": format!("{}.{}", h.version >> 16, h.version & 0xffff),
                "offset_bmap": driver::hex(u64::from(h.offset_bmap)),
                "offset_data": driver::hex(u64::from(h.offset_data)),
                "disk_size": h.disk_size,
                "block_size": h.block_size,
                "blocks_in_image": h.blocks_in_image,
                "blocks_allocated": h.blocks_allocated,
                "uuid_image": crate::uuid::to_string(&h.uuid_image),
                "uuid_last_snap": crate::uuid::to_string(&h.uuid_last_snap),
                "uuid_link": crate::uuid::to_string(&h.uuid_link),
                "uuid_parent": crate::uuid::to_string(&h.uuid_parent),
            }),
        );
    }
    if opts.l1 || opts.map {
        let entries: Vec<serde_json::Value> = vdi
            .block_map()
            .iter()
            .enumerate()
            .filter(|(_, &e)| e != UNALLOCATED)
            .map(|(i, &e)| {
                let at = u64::from(h.offset_bmap) + i as u64 * 4;
                match e {
                    DISCARDED => serde_json::json!({"block": i, "entry_offset": driver::hex(at), "zero": true}),
                    _ => serde_json::json!({"block": i, "entry_offset": driver::hex(at), "data_block": e, "host_offset": driver::hex(h.block_offset(e))}),
                }
            })
            .collect();
        doc.insert("block_map".into(), entries.into());
    }
    Ok(serde_json::Value::Object(doc))
}
