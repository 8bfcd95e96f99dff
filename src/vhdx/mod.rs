//! VHDX images (Hyper-V): fixed, dynamic and differencing, read and written, with the log
//! replayed on a writable open and every metadata update made through it. qemu-img reads
//! and writes fixed and dynamic images; it refuses differencing ones, which vdisk reads
//! through their parent and creates with `-b`.
//!
//! | file | owns |
//! | --- | --- |
//! | [`header`] | file identifier, the two headers, sequence numbers, CRC-32C, GUIDs |
//! | [`region`] | the region table and the overlap check of file regions |
//! | [`metadata`] | block size, sector sizes, disk size, page 83 data, parent locator |
//! | [`bat`] | payload and sector bitmap entries, their states, the BAT geometry |
//! | [`log`] | log entries: search, validation, replay, writing a batch of pages |
//! | [`image`] | the open image: reads, allocating writes, flush order |
//! | [`create`] | new images with qemu-img's options and layout |
//! | this file | the driver row: probe, open, create, info, check, dump; naming the parent |
//!
//! See `format-spec/vhdx.md`.

pub mod bat;
pub mod create;
pub mod header;
pub mod image;
pub mod log;
pub mod metadata;
pub mod region;

pub use image::{OpenMode, Vhdx};

use crate::check_report::{CheckReport, Repair};
use crate::create_opts::{Kind, OptionDesc};
use crate::device::BlockDevice;
use crate::driver::{self, BackingRef, CreateParams, Driver, FormatInfo, OpenParams, Opened};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions, Storage};
use std::path::Path;
use std::sync::Arc;

/// The VHDX row of the driver table.
pub static DRIVER: Driver = Driver {
    name: "vhdx",
    probe,
    open,
    create: create_image,
    check_create_options: |options| create::parse_options(options).map(|_| ()),
    create_options: CREATE_OPTIONS,
    amend_options: &[],
    create_files: driver::one_file,
    supports_compression: false,
    info,
    measure: None,
    check: Some(check),
    check_repairs: true,
    dump: Some(dump),
    // As qemu-img: VHDX images keep their size.
    resize: None,
    amend: None,
    make_empty: None,
};

/// VHDX's creation options in qemu-img's order (the host file's follow them).
const CREATE_OPTIONS: &[OptionDesc] = &[
    OptionDesc::new("size", Kind::Size, "Virtual disk size; max of 64TB."),
    OptionDesc::new("log_size", Kind::Size, "Log size; min 1MB.").with_default("1048576"),
    OptionDesc::new(
        "block_size",
        Kind::Size,
        "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.",
    )
    .with_default("0"),
    OptionDesc::new(
        "subformat",
        Kind::Str,
        "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
    ),
    OptionDesc::new(
        "block_state_zero",
        Kind::Bool,
        "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
    ),
    // vdisk's own: qemu-img makes no differencing VHDX images.
    OptionDesc::new("backing_file", Kind::Str, "File name of a base image"),
    OptionDesc::new("backing_fmt", Kind::Str, "Image format of the base image"),
];

fn probe(first: &[u8]) -> u32 {
    if first.starts_with(header::FILE_SIGNATURE) {
        100
    } else {
        0
    }
}

fn open_storage(
    ns: &dyn Namespace,
    path: &Path,
    read_only: bool,
    p: &OpenParams,
    for_check: bool,
) -> Result<Vhdx<Arc<dyn Storage>>> {
    let storage = driver::open_file(ns, path, read_only, p)?;
    let name = path.display().to_string();
    let mode = OpenMode {
        read_only,
        for_check,
        name: &name,
    };
    Vhdx::open(storage, mode).map_err(|e| match e {
        // QEMU finds no words of its own for a file without the VHDX identifier: the
        // open fails with EINVAL.
        Error::NotFormat { .. } => Error::io(
            format!("could not open '{}'", crate::storage::display_name(path)),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ),
        e => crate::error::with_path(path, e),
    })
}

/// The parent a differencing image names: its relative path (or, without one, the file
/// name of its Windows path) as a host path relative to the image's directory.
fn parent_ref(md: &metadata::Metadata) -> Result<BackingRef> {
    let name = match (
        md.locator("relative_path"),
        md.locator("absolute_win32_path"),
    ) {
        (Some(r), _) => r.trim_start_matches(".\\").replace('\\', "/"),
        (None, Some(a)) => a.rsplit('\\').next().unwrap_or_default().to_string(),
        (None, None) => return Err(Error::invalid("VHDX parent locator names no parent path")),
    };
    Ok(BackingRef {
        name,
        format: Some("vhdx".into()),
    })
}

fn open(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Opened> {
    let image = open_storage(ns, path, p.read_only, p, false)?;
    let backing = if image.metadata().has_parent {
        Some(parent_ref(image.metadata())?)
    } else {
        None
    };
    Ok(Opened {
        device: Box::new(image),
        backing,
    })
}

fn create_image(
    ns: &dyn Namespace,
    path: &Path,
    p: &CreateParams<'_>,
) -> Result<Box<dyn BlockDevice>> {
    let o = create::parse_options(p.options)?;
    let size = p
        .size
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    let parent = match &o.backing_file {
        Some(name) => Some(parent_link(ns, path, name)?),
        None => None,
    };
    let storage = ns.create(path, p.unsafe_cache).map_err(|e| {
        Error::io(
            format!("could not create '{}'", crate::storage::display_name(path)),
            e,
        )
    })?;
    create::create(storage.as_ref(), size, &o, parent.as_ref())?;
    let name = path.display().to_string();
    Ok(Box::new(Vhdx::open(
        storage,
        OpenMode {
            read_only: false,
            for_check: false,
            name: &name,
        },
    )?))
}

/// Read the data write GUID of the parent `name` of a new image at `path`.
fn parent_link(ns: &dyn Namespace, path: &Path, name: &str) -> Result<create::ParentLink> {
    crate::names::check_backing_name(name)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let parent_path = dir.join(name);
    let st = driver::open_read_only(ns, &parent_path, true)?;
    let pname = parent_path.display().to_string();
    let parent = Vhdx::open(
        st,
        OpenMode {
            read_only: true,
            for_check: false,
            name: &pname,
        },
    )
    .map_err(|e| crate::error::with_path(&parent_path, e))?;
    let absolute = std::path::absolute(&parent_path).unwrap_or(parent_path.clone());
    Ok(create::ParentLink {
        data_write_guid: parent.header().data_write_guid,
        name: name.to_string(),
        absolute: absolute.display().to_string(),
    })
}

fn info(ns: &dyn Namespace, path: &Path, force_share: bool) -> Result<FormatInfo> {
    let p = OpenParams::read_only(force_share);
    let image = open_storage(ns, path, true, &p, false)?;
    let md = image.metadata();
    Ok(FormatInfo {
        virtual_size: md.virtual_size,
        // qemu-img shows the payload block size.
        cluster_size: Some(u64::from(md.block_size)),
        backing: if md.has_parent {
            Some(parent_ref(md)?)
        } else {
            None
        },
        ..Default::default()
    })
}

/// QEMU's check: a writable open (`-r`) replays the log and counts that as one fixed
/// corruption; every stored payload block must lie inside the file and clear of the
/// log, BAT and metadata regions.
fn check(
    ns: &dyn Namespace,
    path: &Path,
    repair: Repair,
    force_share: bool,
) -> Result<CheckReport> {
    let read_only = repair == Repair::None;
    let p = OpenParams {
        read_only,
        force_share,
        ..Default::default()
    };
    let image = open_storage(ns, path, read_only, &p, true)?;
    let mut report = CheckReport::default();
    if image.replayed_log() {
        report.corruptions_fixed += 1;
    }
    let file_len = ns
        .open(
            path,
            OpenOptions {
                force_share: true,
                ..Default::default()
            },
        )
        .and_then(|s| s.len())
        .map_err(|e| Error::io("vhdx: reading the file length", e))?;
    for m in image.bat_problems(&image.file_regions(), file_len) {
        // QEMU reports these through error_report, which names the program.
        report.msg(format!("vdisk: {m}"));
        report.corruptions += 1;
    }
    Ok(report)
}

fn guid_json(g: &header::Guid) -> serde_json::Value {
    create::guid_text(g).into()
}

/// The headers, region table and metadata items as decoded.
fn dump_header(image: &Vhdx<Arc<dyn Storage>>) -> serde_json::Value {
    let h = image.header();
    let r = image.regions();
    let md = image.metadata();
    serde_json::json!({
        "active_header": driver::hex(header::HEADER_OFFSETS[usize::from(image.active_slot())]),
        "sequence_number": h.sequence_number,
        "file_write_guid": guid_json(&h.file_write_guid),
        "data_write_guid": guid_json(&h.data_write_guid),
        "log_guid": guid_json(&h.log_guid),
        "log_offset": driver::hex(h.log_offset),
        "log_length": h.log_length,
        "bat": {"offset": driver::hex(r.bat.offset), "length": r.bat.length},
        "metadata": {"offset": driver::hex(r.metadata.offset), "length": r.metadata.length},
        "block_size": md.block_size,
        "leave_blocks_allocated": md.leave_blocks_allocated,
        "has_parent": md.has_parent,
        "virtual_disk_size": md.virtual_size,
        "logical_sector_size": md.logical_sector_size,
        "physical_sector_size": md.physical_sector_size,
        "page_83": guid_json(&md.page_83),
        "parent_locator": md.parent_locator.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
    })
}

/// Every BAT entry that is not zero: its index, kind, state and offset.
fn dump_bat(image: &Vhdx<Arc<dyn Storage>>) -> serde_json::Value {
    let g = image.geometry();
    let at = image.regions().bat.offset;
    let entries: Vec<serde_json::Value> = image
        .bat()
        .iter()
        .enumerate()
        .filter(|(_, e)| e.0 != 0)
        .map(|(i, e)| {
            let i = i as u64;
            let (kind, state) = if g.is_bitmap_index(i) {
                ("sector_bitmap", format!("{:?}", e.bitmap_state()))
            } else {
                ("payload", format!("{:?}", e.payload_state()))
            };
            let mut m = serde_json::json!({"index": i, "entry_offset": driver::hex(at + i * bat::ENTRY_LEN), "kind": kind, "state": state});
            if !g.is_bitmap_index(i) {
                m["block"] = g.block_of_index(i).into();
            }
            if e.offset() != 0 {
                m["file_offset"] = driver::hex(e.offset());
            }
            m
        })
        .collect();
    entries.into()
}

fn dump(
    ns: &dyn Namespace,
    path: &Path,
    opts: driver::DumpOptions,
    force_share: bool,
) -> Result<serde_json::Value> {
    let p = OpenParams::read_only(force_share);
    let image = open_storage(ns, path, true, &p, true)?;
    let opts = opts.or_all();
    let mut doc = serde_json::Map::new();
    doc.insert("format".into(), "vhdx".into());
    if opts.header {
        doc.insert("header".into(), dump_header(&image));
    }
    if opts.l1 || opts.map {
        doc.insert("bat".into(), dump_bat(&image));
    }
    Ok(serde_json::Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::bat::{Entry, PayloadState};
    use super::create::{create, parse_options, ParentLink};
    use super::header::MIB;
    use super::*;
    use crate::storage::MemStorage;

    fn mem(bytes: Vec<u8>) -> Arc<dyn Storage> {
        Arc::new(MemStorage::from_vec(bytes))
    }

    fn bytes_of(st: &dyn Storage) -> Vec<u8> {
        let mut b = vec![0u8; st.len().unwrap() as usize];
        st.read_at(&mut b, 0).unwrap();
        b
    }

    /// A partially present block reads each sector from the child when its bit in the
    /// sector bitmap is set (least significant bit first) and from the parent otherwise.
    #[test]
    fn a_partially_present_block_reads_sector_by_sector_through_the_bitmap() {
        let parent = Arc::new(MemStorage::new());
        let o = parse_options(&[("block_size".into(), "1M".into())]).unwrap();
        create(parent.as_ref(), 2 * MIB, &o, None).unwrap();
        let mut p = Vhdx::open(parent.clone() as Arc<dyn Storage>, OpenMode::default()).unwrap();
        p.write_at(&vec![0xaa; 2 * MIB as usize], 0).unwrap();
        drop(p);
        let child = Arc::new(MemStorage::new());
        let link = ParentLink {
            data_write_guid: [1; 16],
            name: "p.vhdx".into(),
            absolute: "/p.vhdx".into(),
        };
        create(child.as_ref(), 2 * MIB, &o, Some(&link)).unwrap();
        let c = Vhdx::open(child.clone() as Arc<dyn Storage>, OpenMode::default()).unwrap();
        let (bat, g) = (c.regions().bat.offset, *c.geometry());
        drop(c);
        let mut b = bytes_of(child.as_ref());
        let (data_at, bitmap_at) = (b.len() as u64, b.len() as u64 + MIB);
        b.resize(b.len() + 2 * MIB as usize, 0);
        b[data_at as usize..(data_at + MIB) as usize].fill(0xcc);
        // Sectors 0 and 9 of block 0 are stored here.
        b[bitmap_at as usize] = 0b0000_0001;
        b[bitmap_at as usize + 1] = 0b0000_0010;
        let payload = Entry::payload(PayloadState::PartiallyPresent, data_at).0;
        b[bat as usize..bat as usize + 8].copy_from_slice(&payload.to_le_bytes());
        let bi = (bat + g.bitmap_index(0) * 8) as usize;
        b[bi..bi + 8].copy_from_slice(&(bitmap_at | 6).to_le_bytes());
        let mut c = Vhdx::open(
            mem(b),
            OpenMode {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let p = Vhdx::open(
            mem(bytes_of(parent.as_ref())),
            OpenMode {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        c.attach_backing(Box::new(p)).unwrap();
        let mut got = vec![0u8; 12 * 512];
        c.read_at(&mut got, 0).unwrap();
        for (s, sector) in got.chunks(512).enumerate() {
            let want = if s == 0 || s == 9 { 0xcc } else { 0xaa };
            assert!(sector.iter().all(|&x| x == want), "sector {s}");
        }
    }
}
