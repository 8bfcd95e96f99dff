//! VHD images (Virtual PC, Hyper-V, Azure; qemu-img's `vpc`): fixed, dynamic and
//! differencing disks, read and written. Differencing disks read through their parent,
//! found by the parent locators (QEMU reads them as if they had no parent, and cannot
//! create them).
//!
//! | file | owns |
//! | --- | --- |
//! | [`footer`] | the 512-byte footer, its checksum, CHS geometry, which size counts |
//! | [`dynamic`] | the dynamic header, parent locators, QEMU's checks, BAT layout checks |
//! | [`image`] | the open image: BAT, bitmaps, reads, allocating writes, flush order |
//! | [`create`] | `-o` options, new fixed, dynamic and differencing disks |
//! | this file | the driver row: probe, open, info, dump; finding a parent |
//!
//! See `format-spec/vhd.md`.

pub mod create;
pub mod dynamic;
pub mod footer;
pub mod image;

pub use image::Vhd;

use crate::create_opts::{Kind, OptionDesc, SIZE};
use crate::driver::{self, BackingRef, Driver, FormatInfo, OpenParams, Opened};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions, Storage};
use dynamic::{utf16_to_string, ParentLocator, PLATFORM_W2KU, PLATFORM_W2RU, UNALLOCATED};
use footer::{DiskType, SECTOR};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// The VHD row of the driver table.
pub static DRIVER: Driver = Driver {
    name: "vpc",
    probe,
    open,
    create: create::create,
    check_create_options: |options| create::create_options(options).map(|_| ()),
    create_options: CREATE_OPTIONS,
    amend_options: &[],
    create_files: driver::one_file,
    supports_compression: false,
    info,
    // As qemu-img: no measure, no check (exit 63), no resize for vpc.
    measure: None,
    check: None,
    check_repairs: false,
    dump: Some(dump),
    resize: None,
    amend: None,
    make_empty: None,
};

/// VPC's creation options in qemu-img's order (the host file's follow them).
const CREATE_OPTIONS: &[OptionDesc] = &[
    SIZE,
    OptionDesc::new(
        "subformat",
        Kind::Str,
        "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
    ),
    OptionDesc::new(
        "force_size",
        Kind::Bool,
        "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
    ),
    // vdisk's own: qemu-img makes no differencing VHD images.
    OptionDesc::new("backing_file", Kind::Str, "File name of a base image"),
    OptionDesc::new("backing_fmt", Kind::Str, "Image format of the base image"),
];

/// Bytes of locator data vdisk reads (a path of 32 Ki UTF-16 units).
const MAX_LOCATOR_BYTES: u64 = 64 << 10;

/// As QEMU: the cookie at offset 0 (dynamic and differencing disks). A fixed disk keeps
/// its footer only at the end and probes as raw, as in qemu-img.
fn probe(first: &[u8]) -> u32 {
    match first.get(..8) {
        Some(b) if b == footer::COOKIE => 100,
        _ => 0,
    }
}

fn open_storage(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Vhd<Arc<dyn Storage>>> {
    let storage = driver::open_file(ns, path, p.read_only, p)?;
    Vhd::open(storage, p.read_only).map_err(|e| crate::error::with_path(path, e))
}

fn open(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Opened> {
    let vhd = open_storage(ns, path, p)?;
    let backing = if vhd.footer().disk_type == DiskType::Differencing {
        if p.probed_backing {
            return Err(Error::unsupported(format!(
                "'{}' was probed as a backing file and names a parent of its own",
                path.display()
            )));
        }
        Some(find_parent(ns, path, &vhd)?)
    } else {
        None
    };
    Ok(Opened {
        device: Box::new(vhd),
        backing,
    })
}

/// The text of one locator: UTF-16LE, with Windows separators turned into `/` and a
/// leading `./` dropped. `None` for a locator that cannot be read.
fn locator_text<S: Storage + ?Sized>(storage: &S, l: &ParentLocator) -> Option<String> {
    let len = u64::from(l.data_length);
    if len == 0 || len > MAX_LOCATOR_BYTES {
        return None;
    }
    let mut b = vec![0u8; len as usize];
    storage.read_at(&mut b, l.data_offset).ok()?;
    let text = utf16_to_string(&b, false).replace('\\', "/");
    Some(text.strip_prefix("./").unwrap_or(&text).to_string())
}

/// The names a differencing disk gives its parent, in the order they are tried: the
/// relative locators (`W2ru`), the absolute ones (`W2ku`), then the parent name field.
fn parent_names<S: Storage>(vhd: &Vhd<S>) -> Vec<String> {
    let Some(h) = vhd.dynamic_header() else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for platform in [PLATFORM_W2RU, PLATFORM_W2KU] {
        for l in h.locators.iter().filter(|l| l.platform == platform) {
            names.extend(locator_text(vhd.storage(), l));
        }
    }
    if !h.parent_name.is_empty() {
        names.push(h.parent_name.replace('\\', "/"));
    }
    names.dedup();
    names
}

/// The parent of the differencing disk at `path`: the first name that is a plain host
/// path (the rules of every backing file), names an existing VHD, and whose UUID is the
/// one the child records.
fn find_parent(ns: &dyn Namespace, path: &Path, vhd: &Vhd<Arc<dyn Storage>>) -> Result<BackingRef> {
    let want = vhd
        .dynamic_header()
        .map(|h| h.parent_uuid)
        .unwrap_or([0; 16]);
    let mut tried = Vec::new();
    for name in parent_names(vhd) {
        if let Err(e) = crate::names::check_backing_name(&name) {
            tried.push(format!("'{name}' ({e})"));
            continue;
        }
        let candidate = create::resolve(path, &name);
        let opened = ns.open(
            &candidate,
            OpenOptions {
                force_share: true,
                ..Default::default()
            },
        );
        let Ok(st) = opened else {
            tried.push(format!("'{name}' (no such file)"));
            continue;
        };
        match image::read_footer(&*st) {
            Ok(f) if f.uuid == want => {
                return Ok(BackingRef {
                    name,
                    format: Some("vpc".into()),
                })
            }
            Ok(f) => tried.push(format!(
                "'{name}' (its UUID is {})",
                crate::uuid::to_string(&f.uuid)
            )),
            Err(e) => tried.push(format!("'{name}' ({e})")),
        }
    }
    Err(Error::invalid(format!(
        "could not find the parent of '{}' (UUID {}): tried {}",
        path.display(),
        crate::uuid::to_string(&want),
        if tried.is_empty() {
            "nothing: it records no parent name".to_string()
        } else {
            tried.join(", ")
        }
    )))
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

fn text4(b: &[u8; 4]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn footer_json(f: &footer::Footer, offset: u64) -> serde_json::Value {
    json!({
        "offset": driver::hex(offset),
        "features": driver::hex(u64::from(f.features)),
        "version": format!("{}.{}", f.version >> 16, f.version & 0xffff),
        "data_offset": driver::hex(f.data_offset),
        "timestamp": f.timestamp,
        "creator_app": text4(&f.creator_app),
        "creator_version": format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xffff),
        "creator_os": text4(&f.creator_os),
        "original_size": f.original_size,
        "current_size": f.current_size,
        "geometry": {
            "cylinders": f.geometry.cylinders,
            "heads": f.geometry.heads,
            "sectors_per_track": f.geometry.sectors_per_track,
        },
        "disk_type": format!("{:?}", f.disk_type),
        "checksum": driver::hex(u64::from(f.checksum)),
        "checksum_valid": f.computed_checksum() == f.checksum,
        "uuid": crate::uuid::to_string(&f.uuid),
        "saved_state": f.saved_state,
        "virtual_size": f.virtual_size(),
        "size_from": if f.sized_by_geometry() { "geometry" } else { "current_size" },
    })
}

fn dynamic_json<S: Storage>(vhd: &Vhd<S>, h: &dynamic::DynamicHeader) -> serde_json::Value {
    let locators: Vec<serde_json::Value> = h
        .locators
        .iter()
        .enumerate()
        .filter(|(_, l)| l.platform != 0)
        .map(|(i, l)| {
            json!({
                "slot": i,
                "platform": l.platform_name(),
                "data_space": l.data_space,
                "data_length": l.data_length,
                "data_offset": driver::hex(l.data_offset),
                "text": locator_text(vhd.storage(), l),
            })
        })
        .collect();
    json!({
        "offset": driver::hex(vhd.footer().data_offset),
        "table_offset": driver::hex(h.table_offset),
        "version": format!("{}.{}", h.version >> 16, h.version & 0xffff),
        "max_table_entries": h.max_table_entries,
        "block_size": h.block_size,
        "bitmap_size": h.bitmap_size(),
        "checksum": driver::hex(u64::from(h.checksum)),
        "checksum_valid": h.computed_checksum() == h.checksum,
        "parent_uuid": crate::uuid::to_string(&h.parent_uuid),
        "parent_timestamp": h.parent_timestamp,
        "parent_name": h.parent_name,
        "parent_locators": locators,
    })
}

/// The allocated BAT entries; with `bitmaps`, how many sectors each block's bitmap marks.
fn bat_json<S: Storage>(vhd: &Vhd<S>, bitmaps: bool) -> Result<serde_json::Value> {
    let Some(h) = vhd.dynamic_header() else {
        return Ok(json!([]));
    };
    let bitmap_size = h.bitmap_size();
    let sectors = u64::from(h.block_size) / SECTOR;
    let mut out = Vec::new();
    for (i, &e) in vhd.bat().iter().enumerate() {
        if e == UNALLOCATED {
            continue;
        }
        let at = u64::from(e) * SECTOR;
        let mut v = json!({
            "block": i,
            "entry_offset": driver::hex(h.table_offset + i as u64 * 4),
            "bitmap_offset": driver::hex(at),
            "data_offset": driver::hex(at + bitmap_size),
        });
        if bitmaps {
            let mut b = vec![0u8; bitmap_size as usize];
            vhd.storage()
                .read_at(&mut b, at)
                .map_err(|e| Error::io("vhd: reading a sector bitmap", e))?;
            let present: u64 = b[..sectors.div_ceil(8) as usize]
                .iter()
                .map(|x| u64::from(x.count_ones()))
                .sum();
            v["sectors_present"] = json!(present.min(sectors));
        }
        out.push(v);
    }
    Ok(out.into())
}

fn dump(
    ns: &dyn Namespace,
    path: &Path,
    opts: driver::DumpOptions,
    force_share: bool,
) -> Result<serde_json::Value> {
    let opts = opts.or_all();
    let vhd = open_storage(ns, path, &OpenParams::read_only(force_share))?;
    let mut doc = serde_json::Map::new();
    doc.insert("format".into(), "vpc".into());
    if opts.header {
        let len = vhd
            .storage()
            .len()
            .map_err(|e| Error::io("vhd: reading the file length", e))?;
        let fixed = vhd.footer().disk_type == DiskType::Fixed;
        let at = if fixed {
            len - footer::FOOTER_LEN as u64
        } else {
            0
        };
        doc.insert("footer".into(), footer_json(vhd.footer(), at));
        if !fixed {
            let mut end = [0u8; footer::FOOTER_LEN];
            let end_at = len.saturating_sub(footer::FOOTER_LEN as u64);
            let same = vhd.storage().read_at(&mut end, end_at).is_ok()
                && footer::Footer::parse(&end).is_ok_and(|f| f == *vhd.footer());
            doc.insert(
                "end_footer".into(),
                json!({"offset": driver::hex(end_at), "matches_copy": same}),
            );
        }
        if let Some(h) = vhd.dynamic_header() {
            doc.insert("dynamic_header".into(), dynamic_json(&vhd, h));
        }
    }
    if opts.l1 || opts.map {
        doc.insert("bat".into(), bat_json(&vhd, opts.map)?);
    }
    Ok(serde_json::Value::Object(doc))
}
