//! The qcow2 row of the driver table: probing by magic, opening (reporting the backing
//! file the header names), creating from qemu-img's `-o` options, resizing (with every
//! preallocation mode), amending, and emptying after a commit.

use super::{AmendOptions, CreateOptions, OpenOptions, Qcow2};
use crate::check_report::{CheckReport, Repair};
use crate::device::BlockDevice;
use crate::driver::{
    self, BackingRef, CreateParams, Driver, FormatInfo, MakeEmpty, OpenBacking, OpenParams, Opened,
    ResizeJob, ResizePolicy,
};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions as FileOptions, Storage};
use crate::Preallocation;
use std::path::Path;
use std::sync::Arc;

/// The qcow2 row of the driver table.
pub static DRIVER: Driver = Driver {
    name: "qcow2",
    probe,
    open,
    create,
    check_create_options,
    create_options: super::create::CREATE_OPTIONS,
    amend_options: super::create::AMEND_OPTIONS,
    create_files: driver::one_file,
    supports_compression: true,
    info,
    measure: Some(super::measure::measure),
    check: Some(check),
    check_repairs: true,
    dump: Some(|ns, path, opts, force_share| {
        let storage = driver::open_read_only(ns, path, force_share)?;
        super::dump::document(&storage, opts).map_err(|e| crate::error::with_path(path, e))
    }),
    resize: Some(ResizePolicy {
        shrink: true,
        preallocation: &[
            Preallocation::Off,
            Preallocation::Metadata,
            Preallocation::Falloc,
            Preallocation::Full,
        ],
        whole_sectors: true,
        resize,
    }),
    amend: Some(amend),
    make_empty: Some(MakeEmpty {
        check_writable: |ns, path| {
            let storage = driver::open_read_only(ns, path, true)?;
            super::check_writable_open(&storage).map_err(|e| crate::error::with_path(path, e))
        },
        run: |ns, path| open_image(ns, path, &OpenParams::default())?.0.make_empty(),
    }),
};

/// Open the image at `path` writable with its backing chain attached.
fn open_with_backing(
    ns: &dyn Namespace,
    path: &Path,
    open_backing: OpenBacking<'_>,
) -> Result<SharedQcow2> {
    let (mut q, backing) = open_image(ns, path, &OpenParams::default())?;
    if let Some(b) = backing {
        q.set_backing(Some(open_backing(&b)?));
    }
    Ok(q)
}

fn resize(ns: &dyn Namespace, path: &Path, job: ResizeJob<'_>) -> Result<()> {
    // With its backing chain, as qemu-img: the new area of an overlay must hide what a
    // longer backing image holds there.
    let mut q = open_with_backing(ns, path, job.open_backing)?;
    let size = (job.new_size)(q.virtual_size())?;
    q.resize_preallocated(size, job.preallocation)?;
    q.close()
}

fn amend(
    ns: &dyn Namespace,
    path: &Path,
    options: &[(String, String)],
    force: bool,
    open_backing: OpenBacking<'_>,
) -> Result<()> {
    let mut o = AmendOptions::default();
    for (k, v) in options {
        o.set(k, v)?;
    }
    o.keyslots.force = force;
    // With its backing chain when the size changes, as qemu-img: growing an overlay must
    // hide what a longer backing image holds in the new area.
    let mut q = if o.size.is_some() {
        open_with_backing(ns, path, open_backing)?
    } else {
        open_image(ns, path, &OpenParams::default())?.0
    };
    q.amend(&o)?;
    q.close()
}

fn check(
    ns: &dyn Namespace,
    path: &Path,
    repair: Repair,
    force_share: bool,
) -> Result<CheckReport> {
    let storage = ns
        .open(
            path,
            FileOptions {
                write: repair != Repair::None,
                unsafe_cache: false,
                force_share,
            },
        )
        .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
    super::check_image(&storage, repair).map_err(|e| crate::error::with_path(path, e))
}

fn info(ns: &dyn Namespace, path: &Path, force_share: bool) -> Result<FormatInfo> {
    let storage = driver::open_read_only(ns, path, force_share)?;
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let q = Qcow2::open(storage, ro).map_err(|e| crate::error::with_path(path, e))?;
    Ok(image_info(&q))
}

/// What `info` shows of an open qcow2 image.
pub fn image_info<S: Storage>(q: &Qcow2<S>) -> FormatInfo {
    let h = q.header();
    let mut format_specific = if h.version == 2 {
        serde_json::json!({
            "compat": "0.10",
            "compression-type": h.compression_type.name(),
            "refcount-bits": 1u32 << h.refcount_order,
        })
    } else {
        serde_json::json!({
            "compat": "1.1",
            "compression-type": h.compression_type.name(),
            "lazy-refcounts": h.compatible_features & super::header::compat::LAZY_REFCOUNTS != 0,
            "bitmaps": bitmaps_info(q),
            "refcount-bits": 1u32 << h.refcount_order,
            "encrypt": q.encrypt_info(),
            "corrupt": h.incompatible_features & super::header::incompat::CORRUPT != 0,
            "extended-l2": h.incompatible_features & super::header::incompat::EXTENDED_L2 != 0,
        })
    };
    if let (Some(data), Some(name)) = (format_specific.as_object_mut(), h.data_file()) {
        // After refcount-bits, as qemu-img lists them.
        let at = data
            .keys()
            .position(|k| k == "refcount-bits")
            .map_or(data.len(), |i| i + 1);
        data.shift_insert(at, "data-file".into(), name.into());
        data.shift_insert(at + 1, "data-file-raw".into(), h.data_file_raw().into());
    }
    if let Some(data) = format_specific.as_object_mut() {
        // shift_remove keeps the order of the keys after it (remove would swap the last
        // key into its place).
        for key in ["bitmaps", "encrypt"] {
            if data.get(key).is_some_and(serde_json::Value::is_null) {
                data.shift_remove(key);
            }
        }
    }
    FormatInfo {
        virtual_size: h.size,
        cluster_size: Some(h.cluster_size()),
        dirty: h.incompatible_features & super::header::incompat::DIRTY != 0,
        backing: h.backing_file.clone().map(|name| BackingRef {
            name,
            format: h.backing_format(),
        }),
        snapshots: q.snapshots().iter().map(|s| s.to_json()).collect(),
        format_specific: Some(format_specific),
        supports_persistent_bitmaps: h.version >= 3,
        encrypted: q.is_encrypted(),
    }
}

/// The persistent bitmaps as qemu-img's `info` lists them (name, granularity, flags);
/// null when there are none (qemu-img then shows no `bitmaps` key).
fn bitmaps_info<S: Storage>(q: &Qcow2<S>) -> serde_json::Value {
    let st = q.storage();
    let entries = st
        .len()
        .ok()
        .and_then(|len| super::bitmap::read_directory(st, q.header(), len).ok())
        .unwrap_or_default();
    if entries.is_empty() {
        return serde_json::Value::Null;
    }
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "flags": e.flag_names(),
                "name": e.name,
                "granularity": 1u64 << e.granularity_bits,
            })
        })
        .collect()
}

fn probe(first: &[u8]) -> u32 {
    use super::header::{field, QCOW2_MAGIC};
    if field::MAGIC.read(first) == Some(u64::from(QCOW2_MAGIC)) {
        100
    } else {
        0
    }
}

/// A qcow2 image on storage opened through a namespace.
pub type SharedQcow2 = Qcow2<Arc<dyn Storage>>;

/// Open the qcow2 image at `path` as the driver itself (for the operations that need more
/// than a [`BlockDevice`]: snapshots, amend, resize with preallocation), without its
/// backing chain; the backing file it names is returned beside it.
pub fn open_image(
    ns: &dyn Namespace,
    path: &Path,
    p: &OpenParams,
) -> Result<(SharedQcow2, Option<BackingRef>)> {
    let storage = ns
        .open(
            path,
            FileOptions {
                write: !p.read_only,
                unsafe_cache: p.unsafe_cache,
                force_share: p.force_share,
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))?;
    // An encrypted image needs its secret (`encrypt.key-secret`, bound to the file),
    // unless only its metadata is wanted.
    let key = crate::crypto::keyring::image_secret(path)?;
    let q = Qcow2::open_with_key(
        storage,
        OpenOptions {
            read_only: p.read_only,
            ..Default::default()
        },
        key.as_ref(),
        !p.metadata_only,
    )
    .map_err(|e| crate::error::with_path(path, e))?;
    let mut q = q;
    if let Some(name) = q.header().data_file() {
        let dir = path.parent().unwrap_or(Path::new(""));
        let dpath = crate::names::resolve_data_file(dir, &name)?;
        let st = ns
            .open(
                &dpath,
                FileOptions {
                    write: !p.read_only,
                    unsafe_cache: p.unsafe_cache,
                    force_share: p.force_share,
                },
            )
            .map_err(|e| Error::io(format!("could not open data file '{}'", dpath.display()), e))?;
        q.attach_data_file(st, dpath.display().to_string());
    }
    let backing = q.header().backing_file.clone().map(|name| BackingRef {
        name,
        format: q.header().backing_format(),
    });
    if backing.is_some() && p.probed_backing {
        return Err(Error::unsupported(format!(
            "'{}' was probed as a backing image (no backing format recorded) and has a backing file itself; record the format with 'vdisk rebase -u -F'",
            path.display()
        )));
    }
    Ok((q, backing))
}

fn open(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Opened> {
    let (q, backing) = open_image(ns, path, p)?;
    Ok(Opened {
        device: Box::new(q),
        backing,
    })
}

fn create(ns: &dyn Namespace, path: &Path, p: &CreateParams<'_>) -> Result<Box<dyn BlockDevice>> {
    let mut o = CreateOptions::default();
    for (k, v) in p.options {
        o.set(k, v)?;
    }
    if let Some(s) = p.size {
        o.size = s;
    }
    o.validate()?;
    let storage = ns
        .create(path, p.unsafe_cache)
        .map_err(|e| Error::io(format!("could not create '{}'", path.display()), e))?;
    let data = match &o.data_file {
        Some(name) => {
            let dir = path.parent().unwrap_or(Path::new(""));
            let dpath = crate::names::resolve_data_file(dir, name)?;
            let st = ns.create(&dpath, p.unsafe_cache).map_err(|e| {
                Error::io(
                    format!("could not create data file '{}'", dpath.display()),
                    e,
                )
            })?;
            Some((st, dpath.display().to_string()))
        }
        None => None,
    };
    Ok(Box::new(super::create::create_with_data_file(
        storage, &o, data,
    )?))
}

fn check_create_options(options: &[(String, String)]) -> Result<()> {
    let mut o = CreateOptions::default();
    // String-typed options are only checked when the image is created.
    const STRINGS: [&str; 5] = [
        "compat",
        "preallocation",
        "compression_type",
        "backing_file",
        "backing_fmt",
    ];
    for (k, v) in options
        .iter()
        .filter(|(k, _)| !STRINGS.contains(&k.as_str()))
    {
        o.set(k, v)?;
    }
    if o.extended_l2 {
        // Refused before the "Formatting" line (measure takes the option).
        o.validate()?;
    }
    Ok(())
}
