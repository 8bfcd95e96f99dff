//! Internal snapshots of an image by path: create, apply and delete with qemu-img's lookups
//! and messages, and the retention policy (`--prune`) that picks which to delete.
//!
//! Only qcow2 has internal snapshots, so this works on the qcow2 driver itself.

use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::qcow2::driver::SharedQcow2;
use crate::qcow2::SnapshotTime;
use std::path::Path;

/// What to do with one snapshot.
pub enum Action<'a> {
    /// Create a snapshot of this name (its first 255 bytes, as qemu-img stores it).
    Create(&'a str),
    /// Roll back to the snapshot of this ID, or else of this name.
    Apply(&'a str),
    /// Delete the first snapshot of this name (never found by ID).
    Delete(&'a str),
}

/// Open the image at `file` for snapshots: `None` when it opens but is not qcow2 (only
/// qcow2 has internal snapshots; a second format with them would make this a row of the
/// driver table).
fn open(
    file: &Path,
    format: Option<Format>,
    read_only: bool,
    force_share: bool,
) -> Result<Option<SharedQcow2>> {
    let format = match (format, read_only) {
        (Some(f), _) => f,
        (None, true) => image::probe_path(file, force_share)?,
        (None, false) => image::probe_for_writing(file)?,
    };
    let opts = image::ImageOptions {
        format: Some(format),
        read_only,
        force_share,
        no_backing: true,
        ..Default::default()
    };
    if format != Format::QCOW2 {
        // As qemu-img: the image must open before the format is refused.
        image::open(file, &opts)?;
        return Ok(None);
    }
    Ok(Some(image::open_qcow2(file, &opts)?.0))
}

/// Do `action` on the image at `file` (format `format`, probed when `None`).
pub fn change(file: &Path, format: Option<Format>, action: Action<'_>) -> Result<()> {
    let Some(mut img) = open(file, format, false, false)? else {
        // qemu-img's words for each action on an image without snapshots.
        return Err(Error::invalid(match action {
            Action::Create(name) => {
                format!("Could not create snapshot '{name}': Operation not supported")
            }
            Action::Apply(name) => format!(
                "Could not apply snapshot '{name}': Block driver does not support snapshots"
            ),
            Action::Delete(name) => {
                format!("Could not delete snapshot '{name}': snapshot not found")
            }
        }));
    };
    match action {
        Action::Create(name) => {
            let name = truncate_name(name);
            img.snapshot_create(name, SnapshotTime::now())
                .map_err(|e| Error::invalid(format!("Could not create snapshot '{name}': {e}")))?;
        }
        Action::Apply(name) => {
            if img.find_snapshot(name).is_none() {
                return Err(Error::invalid(format!(
                    "Could not apply snapshot '{name}': Failed to load snapshot: No such file or directory"
                )));
            }
            img.snapshot_apply(name)
                .map_err(|e| Error::invalid(format!("Could not apply snapshot '{name}': {e}")))?;
        }
        Action::Delete(name) => {
            if img.find_snapshot_by_name(name).is_none() {
                return Err(Error::invalid(format!(
                    "Could not delete snapshot '{name}': snapshot not found"
                )));
            }
            img.snapshot_delete(&[name])
                .map_err(|e| Error::invalid(format!("Could not delete snapshot '{name}': {e}")))?;
        }
    }
    crate::BlockDevice::close(&mut img)
}

/// The first 255 bytes of `name` (cut at a character boundary), as qemu-img stores it.
fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The retention policy of `--prune`.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep this many of the newest snapshots.
    pub keep_last: usize,
    /// Also keep snapshots younger than this many seconds.
    pub keep_within: Option<u64>,
}

/// The snapshots a retention policy deletes from an open image, before any is deleted.
pub struct PrunePlan {
    img: SharedQcow2,
    /// (ID, name) of each snapshot to delete, oldest first.
    pub doomed: Vec<(String, String)>,
    /// Snapshots that stay.
    pub kept: usize,
    /// Bytes deleting them gives back.
    pub gain: u64,
}

/// Pick the snapshots of the image at `file` outside `policy` (opened read-only when
/// `dry_run`; `force_share` then reads without locking out other users).
pub fn plan_prune(
    file: &Path,
    format: Option<Format>,
    policy: Retention,
    dry_run: bool,
    force_share: bool,
) -> Result<PrunePlan> {
    let mut img = open(file, format, dry_run, force_share && dry_run)?.ok_or_else(|| {
        Error::unsupported(format!(
            "'{}' is not a qcow2 image; only qcow2 has internal snapshots",
            file.display()
        ))
    })?;
    let now = SnapshotTime::now().sec as u64;
    // Newest first by date (then by table order).
    let mut order: Vec<usize> = (0..img.snapshots().len()).collect();
    order.sort_by_key(|&i| {
        let s = &img.snapshots()[i];
        std::cmp::Reverse((s.date_sec, s.date_nsec, i))
    });
    let mut doomed: Vec<usize> = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        let s = &img.snapshots()[i];
        let young = policy
            .keep_within
            .is_some_and(|w| now.saturating_sub(u64::from(s.date_sec)) <= w);
        if rank >= policy.keep_last && !young {
            doomed.push(i);
        }
    }
    doomed.reverse(); // oldest first
    let doomed: Vec<(String, String)> = doomed
        .iter()
        .map(|&i| {
            (
                img.snapshots()[i].id.clone(),
                img.snapshots()[i].name.clone(),
            )
        })
        .collect();
    let ids: Vec<&str> = doomed.iter().map(|(id, _)| id.as_str()).collect();
    let gain = if ids.is_empty() {
        0
    } else {
        img.snapshot_delete_gain(&ids)?
    };
    let kept = img.snapshots().len() - doomed.len();
    Ok(PrunePlan {
        img,
        doomed,
        kept,
        gain,
    })
}

impl PrunePlan {
    /// Delete the planned snapshots (nothing to do when none is planned).
    pub fn apply(mut self) -> Result<()> {
        if self.doomed.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = self.doomed.iter().map(|(id, _)| id.as_str()).collect();
        self.img.snapshot_delete_by_id(&ids)?;
        crate::BlockDevice::close(&mut self.img)
    }
}
