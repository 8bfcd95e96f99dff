//! `delta`: a changed-block delta of a qcow2 image, as a file or as a list of ranges.
//!
//! A delta is what changed between two states of an image: written out, it is a qcow2
//! overlay (backing file recorded, not opened) that holds only the changed guest clusters,
//! so that the overlay over a copy of the old state reads as the new state; listed, it is
//! the changed guest ranges, each marked as reading data or zeros in the new state.
//!
//! The changed set is an explicit list of [`ChangedExtent`]s, so sources are pluggable:
//! [`Changes::Snapshots`] compares two states' L1/L2 tables
//! ([`crate::qcow2::Qcow2::changed_extents`]); [`Changes::Bitmap`] takes the dirty ranges
//! of a persistent bitmap, widened to whole clusters, with the image at its active state.
//! Ranges that read as zeros become zero clusters, so replaying a delta also replays
//! deletions. Into a storage that takes writes only in order the delta is laid out
//! sequentially ([`write_sequential`]): the changed set fixes every offset in advance.

mod write;

pub use crate::qcow2::state_diff::{push_merged, ChangedExtent, State};
pub use write::{copy_extents, DeltaStats};

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions};
use crate::ops::convert::sequential;
use crate::ops::convert::ConvertOptions;
use crate::qcow2::driver::SharedQcow2;
use crate::qcow2::sequential::{ClusterPlan, PlannedKind};
use crate::qcow2::CompressionType;
use crate::storage::{HostFiles, Namespace};
use std::path::Path;

/// Where the changed set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// From the snapshot `from` to the snapshot `to`, or to the active disk when `to` is
    /// `None` (each an ID, or else a name, as `snapshot -a` finds them).
    Snapshots {
        /// The old state.
        from: String,
        /// The new state (`None`: the active disk).
        to: Option<String>,
    },
    /// What the persistent dirty bitmap `name` marks as written since it was added or
    /// cleared, to the active disk (whole clusters of the image).
    Bitmap {
        /// The bitmap.
        name: String,
    },
}

/// The image a delta is taken of.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its file.
    pub path: &'a Path,
    /// Its format (qcow2; probed when `None`).
    pub format: Option<Format>,
    /// Read without locking out other users (qemu-img's `-U`).
    pub force_share: bool,
}

/// The image at the new state of a delta, and what changed to reach it.
pub struct Changed {
    /// The image, open read-only with its backing chain, reading as the new state.
    pub image: SharedQcow2,
    /// The changed guest ranges, in order, merged into maximal runs of one kind.
    pub extents: Vec<ChangedExtent>,
}

/// Open the image of `source` and find what `changes` names.
pub fn changed(source: &Source<'_>, changes: &Changes) -> Result<Changed> {
    let mut q = open_source(source)?;
    match changes {
        Changes::Snapshots { from, to } => {
            let from = find(&q, from)?;
            let to = match to {
                Some(name) => State::Snapshot(find(&q, name)?),
                None => State::Active,
            };
            let extents = q.changed_extents(State::Snapshot(from), to)?;
            if let State::Snapshot(i) = to {
                q.load_snapshot_read_only(i)?;
            }
            Ok(Changed { image: q, extents })
        }
        Changes::Bitmap { name } => {
            let dirty = q.bitmap_dirty_ranges(name)?;
            let extents = bitmap_extents(&mut q, &dirty)?;
            Ok(Changed { image: q, extents })
        }
    }
}

/// The changed extents of the dirty ranges `dirty` of the image `q` (at its active state):
/// each range widened to whole clusters (a granule may be smaller than a cluster, and the
/// delta stores whole clusters), then split into what reads as data and what reads as
/// zeros now.
fn bitmap_extents(q: &mut SharedQcow2, dirty: &[(u64, u64)]) -> Result<Vec<ChangedExtent>> {
    let cs = q.geometry().cluster_size;
    let size = q.virtual_size();
    let mut out = Vec::new();
    for &(off, len) in dirty {
        let mut pos = off / cs * cs;
        let end = (off + len).next_multiple_of(cs).min(size);
        // A range widened into one already listed starts after it.
        if let Some(last) = out.last() {
            let last: &ChangedExtent = last;
            pos = pos.max(last.end());
        }
        while pos < end {
            let ext = q.block_status(pos, end - pos)?;
            let length = ext.length.clamp(1, end - pos);
            let zero = ext.kind != crate::device::ExtentKind::Data;
            push_merged(
                &mut out,
                ChangedExtent {
                    start: pos,
                    length,
                    zero,
                },
            );
            pos += length;
        }
    }
    Ok(out)
}

/// The changed ranges of `changes` in the image of `source` (`delta --list`).
pub fn list(source: &Source<'_>, changes: &Changes) -> Result<Vec<ChangedExtent>> {
    Ok(changed(source, changes)?.extents)
}

/// Write the delta of `changes` in the image of `source` to a new qcow2 image at
/// `output`, created with qemu-img style `options` (its backing file among them, as
/// `backing_file` and `backing_fmt`).
pub fn write(
    source: &Source<'_>,
    changes: &Changes,
    output: &Path,
    options: &[(String, String)],
) -> Result<DeltaStats> {
    if HostFiles.same_file(source.path, output) {
        return Err(Error::invalid(format!(
            "'{}' is the image the delta is taken of; name another output file",
            output.display()
        )));
    }
    let mut c = changed(source, changes)?;
    let codec = c.image.header().compression_type;
    write_delta(&mut c.image, &c.extents, output, options, Some(codec))
}

/// Write a delta holding `extents` of `source` (the image at the new state) to a new qcow2
/// image at `output` of `source`'s size, created with `options` (see [`write`]). When
/// `source` stores compressed clusters with `source_codec`, those are copied as they are
/// if the output uses the same codec (it does unless `options` choose another). A failed
/// write removes the output it created.
pub fn write_delta(
    source: &mut dyn BlockDevice,
    extents: &[ChangedExtent],
    output: &Path,
    options: &[(String, String)],
    source_codec: Option<CompressionType>,
) -> Result<DeltaStats> {
    let (options, copy_compressed) = output_options(options, source_codec)?;
    let size = source.virtual_size();
    let options = image::check_create_options(Format::QCOW2, &options)
        .map_err(|e| crate::ops::create::refusal(output, e))?;
    let files = image::NewFiles::before_create(output, Format::QCOW2, size, &options);
    if let Some(storage) = sequential::remote_qcow2_storage(output, Format::QCOW2, false)? {
        let options: Vec<_> = options
            .into_iter()
            .filter(|(k, _)| !crate::create_opts::is_file_only(k))
            .collect();
        let stats = write_sequential(source, extents, storage, &options)?;
        files.keep();
        return Ok(stats);
    }
    let mut dst = image::create(output, Format::QCOW2, Some(size), &options)?;
    // Unallocated clusters of a delta show its backing file (named now or by a later
    // `rebase -u`), which is not opened: zeros must be stored as zeros, so that the delta
    // replays deletions, and nothing may be read from it.
    dst.attach_backing(Box::new(UnopenedBacking { size }))?;
    let stats = copy_extents(source, extents, dst.as_mut(), copy_compressed)?;
    dst.close()?;
    files.keep();
    Ok(stats)
}

/// Write a delta holding `extents` of `source` as a new qcow2 image laid out sequentially
/// in `storage` (see [`crate::qcow2::sequential`]), created with `options` (checked). The
/// changed clusters are known before anything is written, so the whole layout is too:
/// clusters wholly inside zero extents are zero clusters, the others data clusters copied
/// by the convert engine (a data cluster that reads all zeros stays a gap, reading zeros).
/// Compressed source clusters are stored uncompressed.
pub fn write_sequential(
    source: &mut dyn BlockDevice,
    extents: &[ChangedExtent],
    storage: std::sync::Arc<dyn crate::storage::Storage>,
    options: &[(String, String)],
) -> Result<DeltaStats> {
    let size = source.virtual_size();
    let opts = sequential::create_options(options, size)?;
    write::check_extents(extents, size)?;
    let mut plan = ClusterPlan::new();
    let cs = opts.cluster_size;
    for run in write::cluster_runs(extents, cs, size) {
        let kind = match run.zero {
            true => PlannedKind::Zero,
            false => PlannedKind::Data,
        };
        plan.push(run.start / cs, run.end.div_ceil(cs) - run.start / cs, kind);
    }
    let stats = DeltaStats {
        data_clusters: plan.count(PlannedKind::Data),
        zero_clusters: plan.count(PlannedKind::Zero),
        compressed_clusters: 0,
    };
    let copts = ConvertOptions::default();
    sequential::copy_planned(
        source,
        storage,
        &opts,
        plan,
        copts,
        &mut |_, _| {},
        &mut |_| {},
    )?;
    Ok(stats)
}

/// `options` checked for a backing file without a format (refused as qemu-img refuses
/// it) and for preallocation (which would hide the backing file), with the source's
/// compression type added when none is chosen and the output can
/// use it; and whether compressed clusters can be copied as they are.
fn output_options(
    options: &[(String, String)],
    source_codec: Option<CompressionType>,
) -> Result<(Vec<(String, String)>, bool)> {
    let last = |key: &str| {
        options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if last("backing_file").is_some() && last("backing_fmt").is_none() {
        return Err(Error::invalid(
            "Use of backing file requires explicit backing format",
        ));
    }
    if let Some(p) = last("preallocation").filter(|&p| p != "off") {
        return Err(Error::invalid(format!(
            "a delta holds only what changed: preallocation={p} would allocate every cluster and hide its backing file"
        )));
    }
    let mut options = options.to_vec();
    let Some(codec) = source_codec else {
        return Ok((options, false));
    };
    let same = match last("compression_type") {
        Some(given) => given == codec.name(),
        None if codec == CompressionType::default() => true,
        None if matches!(last("compat"), Some("0.10" | "v2")) => false,
        None => {
            options.push(("compression_type".into(), codec.name().into()));
            true
        }
    };
    // An external data file holds no compressed clusters.
    let external = last("data_file").is_some();
    Ok((options, same && !external))
}

/// Open the image of `source` as qcow2 with its backing chain, read-only; another format
/// is refused as qemu-img refuses to read a snapshot of it.
fn open_source(source: &Source<'_>) -> Result<SharedQcow2> {
    let format = match source.format {
        Some(f) => f,
        None => image::probe_path(source.path, source.force_share)?,
    };
    if format != Format::QCOW2 {
        return Err(Error::invalid(format!(
            "Failed to load snapshot: Block format '{}' used by device '' does not support temporarily loading internal snapshots",
            format.name()
        )));
    }
    let opts = ImageOptions {
        format: Some(Format::QCOW2),
        read_only: true,
        force_share: source.force_share,
        ..Default::default()
    };
    Ok(image::open_qcow2(source.path, &opts)?.0)
}

/// The index of the snapshot `id_or_name` (an ID first, then a name).
fn find(q: &SharedQcow2, id_or_name: &str) -> Result<usize> {
    q.find_snapshot(id_or_name).ok_or_else(|| {
        Error::invalid(format!(
            "Failed to load snapshot '{id_or_name}': Can't find snapshot"
        ))
    })
}

/// `delta --list --output=json`: qemu-img map's JSON layout, one object per line.
pub fn to_json(extents: &[ChangedExtent]) -> String {
    let lines: Vec<String> = extents
        .iter()
        .map(|e| {
            format!(
                "{{ \"start\": {}, \"length\": {}, \"zero\": {}, \"data\": {}}}",
                e.start, e.length, e.zero, !e.zero
            )
        })
        .collect();
    format!("[{}]", lines.join(",\n"))
}

/// `delta --list`: a table in qemu-img map's human layout, one changed range a line.
pub fn to_human(extents: &[ChangedExtent]) -> String {
    let mut text = format!("{:<16}{:<16}{}\n", "Offset", "Length", "Reads");
    for e in extents {
        let kind = if e.zero { "zero" } else { "data" };
        text += &format!("{:<16}{:<16}{}\n", c_hex(e.start), c_hex(e.length), kind);
    }
    text
}

/// A number as C's `%#x` prints it: `0x` before every value but zero.
fn c_hex(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("{n:#x}")
    }
}

/// The backing file of a delta being written: recorded in its header (or not yet) but not
/// opened. It makes the delta store zeros explicitly (an unallocated cluster would show
/// the backing file), and fails any read (the delta is written in whole clusters, so none
/// is made).
struct UnopenedBacking {
    size: u64,
}

impl BlockDevice for UnopenedBacking {
    fn format_name(&self) -> &'static str {
        "unopened backing file"
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, _buf: &mut [u8], offset: u64) -> Result<()> {
        Err(Error::invalid(format!(
            "the delta's backing file is not open; a read at {offset:#x} cannot be served"
        )))
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly(
            "the delta's backing file is not open".into(),
        ))
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly(
            "the delta's backing file is not open".into(),
        ))
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly(
            "the delta's backing file is not open".into(),
        ))
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<crate::device::Extent> {
        Ok(crate::device::Extent {
            start: offset,
            length: max_len.max(1),
            kind: crate::device::ExtentKind::Unallocated,
            host_offset: None,
            compressed: false,
            depth: 0,
        })
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: u64, length: u64, zero: bool) -> ChangedExtent {
        ChangedExtent {
            start,
            length,
            zero,
        }
    }

    #[test]
    fn the_list_prints_in_qemu_img_maps_layouts() {
        let e = [ext(0, 0x10000, false), ext(0x30000, 0x20000, true)];
        assert_eq!(
            to_json(&e),
            "[{ \"start\": 0, \"length\": 65536, \"zero\": false, \"data\": true},\n\
             { \"start\": 196608, \"length\": 131072, \"zero\": true, \"data\": false}]"
        );
        assert_eq!(to_json(&[]), "[]");
        assert_eq!(
            to_human(&e),
            "Offset          Length          Reads\n\
             0               0x10000         data\n\
             0x30000         0x20000         zero\n"
        );
    }

    #[test]
    fn copied_extents_are_whole_clusters_and_zeros_are_stored_over_a_backing_file() {
        use crate::device::ExtentKind;
        use crate::qcow2::{create, CreateOptions};
        use crate::storage::MemStorage;
        const CS: u64 = 4096;
        let image = |version: u32| {
            let o = CreateOptions {
                size: 16 * CS,
                cluster_size: CS,
                version,
                ..Default::default()
            };
            create(MemStorage::new(), &o).unwrap()
        };
        let mut src = image(3);
        let data: Vec<u8> = (0..8 * CS).map(|i| (i % 251) as u8 + 1).collect();
        src.write_at(&data, 0).unwrap();
        let extents = [
            ext(0, 2 * CS, false),
            ext(2 * CS, 2 * CS, true),
            ext(4 * CS + 100, 200, true), // inside cluster 4: copied whole
        ];
        for version in [2, 3] {
            let mut dst = image(version);
            dst.attach_backing(Box::new(UnopenedBacking { size: 16 * CS }))
                .unwrap();
            let stats = copy_extents(&mut src, &extents, &mut dst, false).unwrap();
            assert_eq!(stats.data_clusters, 3, "v{version}");
            let mut got = vec![0u8; 5 * CS as usize];
            dst.read_at(&mut got, 0).unwrap();
            assert_eq!(&got[..2 * CS as usize], &data[..2 * CS as usize]);
            assert!(got[2 * CS as usize..4 * CS as usize]
                .iter()
                .all(|&b| b == 0));
            assert_eq!(
                &got[4 * CS as usize..],
                &data[4 * CS as usize..5 * CS as usize]
            );
            let zeros = dst.block_status(2 * CS, 2 * CS).unwrap();
            let want = if version == 3 {
                ExtentKind::Zero
            } else {
                ExtentKind::Data
            };
            assert_eq!(zeros.kind, want, "v{version}");
            let rest = dst.block_status(5 * CS, 11 * CS).unwrap();
            assert_eq!(
                (rest.kind, rest.length),
                (ExtentKind::Unallocated, 11 * CS),
                "v{version}"
            );
            // Reading what the delta does not hold asks the unopened backing file.
            assert!(dst.read_at(&mut got[..10], 6 * CS).is_err());
        }
    }

    #[test]
    fn the_output_takes_the_sources_codec_when_it_can() {
        let o = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let zstd = Some(CompressionType::Zstd);
        let zlib = Some(CompressionType::Zlib);
        assert_eq!(
            output_options(&[], zstd).unwrap(),
            (o(&[("compression_type", "zstd")]), true)
        );
        assert_eq!(output_options(&[], zlib).unwrap(), (vec![], true));
        assert_eq!(
            output_options(&o(&[("compat", "0.10")]), zstd).unwrap(),
            (o(&[("compat", "0.10")]), false)
        );
        assert!(
            !output_options(&o(&[("compression_type", "zlib")]), zstd)
                .unwrap()
                .1
        );
        assert!(!output_options(&[], None).unwrap().1);
        assert!(output_options(&o(&[("backing_file", "b")]), None).is_err());
        assert!(output_options(&o(&[("preallocation", "metadata")]), None).is_err());
        assert!(output_options(&o(&[("preallocation", "off")]), None).is_ok());
        assert!(!output_options(&o(&[("data_file", "d")]), zlib).unwrap().1);
    }
}
