//! `vdisk bitmap`: change the persistent dirty bitmaps of a qcow2 image, as `qemu-img
//! bitmap` does (operations in order; a merge source may be another image's bitmap).

use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::qcow2::bitmap::Op;
use std::path::Path;

/// One operation as the command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `--add`
    Add,
    /// `--remove`
    Remove,
    /// `--clear`
    Clear,
    /// `--enable`
    Enable,
    /// `--disable`
    Disable,
    /// `--merge SOURCE`
    Merge(String),
}

/// What `vdisk bitmap` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The operations, in order.
    pub actions: Vec<Action>,
    /// `-g`: bytes per bit for `--add`.
    pub granularity: Option<u64>,
    /// `-b`: the image holding the merge source bitmaps.
    pub source_file: Option<&'a Path>,
    /// `-F`: its format.
    pub source_format: Option<Format>,
}

/// Apply `req` to the bitmap `name` of the image at `file` (format `format`, probed when
/// `None`).
pub fn run(file: &Path, format: Option<Format>, name: &str, req: &Request<'_>) -> Result<()> {
    if req.actions.is_empty() {
        return Err(Error::invalid(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ));
    }
    if req.granularity.is_some() && !req.actions.contains(&Action::Add) {
        return Err(Error::invalid("granularity only supported with --add"));
    }
    let merges = req.actions.iter().any(|a| matches!(a, Action::Merge(_)));
    if req.source_file.is_some() && !merges {
        return Err(Error::invalid(
            "Merge bitmap source file only supported with --merge",
        ));
    }
    if req.source_format.is_some() && req.source_file.is_none() {
        return Err(Error::invalid("-F only supported with -b"));
    }
    if let Some(f) = format.filter(|&f| f != Format::QCOW2) {
        return Err(Error::unsupported(format!(
            "persistent dirty bitmaps in {} images",
            f.name()
        )));
    }
    let ops = req
        .actions
        .iter()
        .map(|a| to_op(a, name, req))
        .collect::<Result<Vec<_>>>()?;
    let mut q =
        image::open_qcow2_alone_as(file, format, false, false, "only qcow2 images have bitmaps")?;
    q.bitmap_ops(name, &ops)
}

/// The library operation for `a`: a merge from another image loads that image's bitmap.
fn to_op(a: &Action, name: &str, req: &Request<'_>) -> Result<Op> {
    Ok(match a {
        Action::Add => Op::Add {
            granularity: req.granularity,
        },
        Action::Remove => Op::Remove,
        Action::Clear => Op::Clear,
        Action::Enable => Op::Enable,
        Action::Disable => Op::Disable,
        Action::Merge(src) => match req.source_file {
            None => Op::MergeNamed(src.clone()),
            Some(path) => {
                if req.source_format.is_some_and(|f| f != Format::QCOW2) {
                    return Err(Error::unsupported(
                        "merging from a bitmap outside a qcow2 image",
                    ));
                }
                let q =
                    image::open_qcow2_alone(path, true, true, "only qcow2 images have bitmaps")?;
                // As qemu-img: a source missing from the other image fails the merge.
                Op::MergeBits(q.bitmap_bits(src).map_err(|e| {
                    Error::invalid(format!(
                        "Operation merge on bitmap {name} failed: {}",
                        e.bare_message()
                    ))
                })?)
            }
        },
    })
}
