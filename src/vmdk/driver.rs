//! The VMDK row of the driver table: probing (sparse magics, text descriptors), opening
//! through a namespace, creating from qemu-img's `-o` options.

use super::{create_in, create_options, files, open_in, VmdkOpenOptions};
use crate::device::BlockDevice;
use crate::driver::{CreateParams, Driver, FormatInfo, OpenParams, Opened};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions};
use std::path::{Path, PathBuf};

/// The VMDK row of the driver table.
pub static DRIVER: Driver = Driver {
    name: "vmdk",
    probe: |first| if super::probe(first) { 100 } else { 0 },
    open,
    create,
    check_create_options: |options| create_options(options).map(|_| ()),
    create_files,
    create_options: super::create::CREATE_OPTIONS,
    amend_options: &[],
    supports_compression: true,
    info,
    measure: None,
    // Report only: VMDK repairs nothing, whatever `-r` asks.
    check: Some(|ns, path, _repair, force_share| {
        let mut v = open_read_only(ns, path, force_share)?;
        Ok(v.check()?.into_check_report())
    }),
    check_repairs: false,
    dump: Some(|ns, path, opts, force_share| {
        super::dump::document(&open_read_only(ns, path, force_share)?, opts)
    }),
    // As qemu-img: VMDK images keep their size (resize is refused once the new size has
    // been checked), have no amendable options, and are not emptied after a commit.
    resize: None,
    amend: None,
    make_empty: None,
};

fn open_read_only(ns: &dyn Namespace, path: &Path, force_share: bool) -> Result<super::Vmdk> {
    let opts = VmdkOpenOptions {
        read_only: true,
        force_share,
        ..Default::default()
    };
    open_in(ns, path, &opts).map_err(|e| crate::error::with_path(path, e))
}

fn info(ns: &dyn Namespace, path: &Path, force_share: bool) -> Result<FormatInfo> {
    let v = open_read_only(ns, path, force_share)?;
    let data = serde_json::to_value(v.info()).map_err(|e| Error::invalid(e.to_string()))?;
    Ok(FormatInfo {
        virtual_size: v.virtual_size(),
        cluster_size: v.cluster_size(),
        backing: parent_of(&v),
        format_specific: Some(data),
        ..Default::default()
    })
}

/// The parent image a VMDK names (`parentFileNameHint`); its format is VMDK.
fn parent_of(v: &super::Vmdk) -> Option<crate::driver::BackingRef> {
    v.parent_file_name_hint()
        .map(|name| crate::driver::BackingRef {
            name: name.to_string(),
            format: Some("vmdk".into()),
        })
}

fn open(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Opened> {
    if p.probed_backing {
        refuse_probed_descriptor(ns, path)?;
    }
    let opts = VmdkOpenOptions {
        read_only: p.read_only,
        force_share: p.force_share,
        ..Default::default()
    };
    let v = open_in(ns, path, &opts).map_err(|e| crate::error::with_path(path, e))?;
    let backing = parent_of(&v);
    Ok(Opened {
        device: Box::new(v),
        backing,
    })
}

fn create(ns: &dyn Namespace, path: &Path, p: &CreateParams<'_>) -> Result<Box<dyn BlockDevice>> {
    let opts = create_options(p.options)?;
    Ok(Box::new(create_in(ns, path, p.size.unwrap_or(0), &opts)?))
}

fn create_files(path: &Path, size: u64, options: &[(String, String)]) -> Vec<PathBuf> {
    // Options that do not parse make creation fail before any file is made.
    create_options(options)
        .and_then(|o| files(path, size, &o))
        .unwrap_or_else(|_| vec![path.to_path_buf()])
}

/// A backing file with no recorded format that probes as VMDK is opened only when it is a
/// self-contained sparse extent: a descriptor would make vdisk open the files it names,
/// chosen by whoever wrote the backing file's first sector.
fn refuse_probed_descriptor(ns: &dyn Namespace, path: &Path) -> Result<()> {
    let f = ns
        .open(
            path,
            OpenOptions {
                force_share: true,
                ..Default::default()
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))?;
    let mut first = [0u8; 512];
    f.read_at(&mut first, 0)
        .map_err(|e| Error::io("probing the image format", e))?;
    let sparse = &first[..4] == b"KDMV" || &first[..4] == b"COWD";
    // A sparse file of capacity 0 only carries a descriptor naming other extents.
    let capacity = u64::from_le_bytes(first[12..20].try_into().unwrap_or_default());
    if sparse && (capacity != 0 || &first[..4] == b"COWD") {
        return Ok(());
    }
    Err(Error::unsupported(format!(
        "backing file '{}' was probed as a VMDK descriptor naming extent files; record its format with 'vdisk rebase -u -F vmdk' to open it",
        path.display()
    )))
}
