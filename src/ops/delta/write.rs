//! Writing a delta: the changed extents of a source device, widened to whole clusters of
//! the output, copied into it.
//!
//! The output is an overlay whose backing file is not open while it is written, so it is
//! only ever written whole clusters at a time: a cluster it holds must hold all of that
//! cluster's guest data, which the source (the new state) supplies. A cluster wholly inside
//! extents that read as zeros becomes a zero cluster; one that is only partly inside them,
//! or inside an extent of data, is copied from the source (and still stored as a zero
//! cluster when all it reads is zeros).

use super::ChangedExtent;
use crate::device::BlockDevice;
use crate::error::{Error, Result};

/// Bytes read from the source at a time (whole output clusters, at least one).
const CHUNK_BYTES: u64 = 1 << 20;

/// What a delta holds, in output clusters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Clusters stored with data.
    pub data_clusters: u64,
    /// Clusters stored as zeros.
    pub zero_clusters: u64,
    /// Data clusters copied compressed, as the source stores them.
    pub compressed_clusters: u64,
}

/// A run of whole output clusters, `[start, end)` in guest bytes (the end may be the end
/// of the disk), and whether it reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub start: u64,
    pub end: u64,
    pub zero: bool,
}

/// Check that `extents` are in order, do not overlap, are not empty and lie inside a disk
/// of `size` bytes.
pub(super) fn check_extents(extents: &[ChangedExtent], size: u64) -> Result<()> {
    let mut prev_end = 0;
    for (i, e) in extents.iter().enumerate() {
        let end = e.start.checked_add(e.length);
        if e.length == 0 || end.is_none_or(|end| end > size) || (i > 0 && e.start < prev_end) {
            return Err(Error::invalid(format!(
                "changed extent {i} ({:#x}+{:#x}) is empty, out of order or past the end of the {size}-byte disk",
                e.start, e.length
            )));
        }
        prev_end = e.start + e.length;
    }
    Ok(())
}

/// `extents` (checked) widened to whole clusters of `cluster` bytes on a disk of `size`:
/// a cluster reads as zeros only when zero extents cover all of it.
///
/// The clusters of a zero extent that it covers wholly end at or before the start of the
/// next extent, so only a data cluster can be shared by two consecutive parts: the part
/// that comes second then starts after it, or joins it when it is data as well.
pub(super) fn cluster_runs(extents: &[ChangedExtent], cluster: u64, size: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for e in extents {
        let a = e.start / cluster * cluster;
        let b = e.end().div_ceil(cluster).saturating_mul(cluster).min(size);
        if !e.zero {
            push_run(&mut runs, a, b, false);
            continue;
        }
        // Clusters only partly inside a zero extent need the data around it.
        let head_end = if e.start > a { (a + cluster).min(b) } else { a };
        let tail_start = if e.end() < b {
            (b - cluster).max(head_end)
        } else {
            b
        };
        push_run(&mut runs, a, head_end, false);
        push_run(&mut runs, head_end, tail_start, true);
        push_run(&mut runs, tail_start, b, false);
    }
    runs
}

/// Append `[start, end)` to `runs`, merging it into the last run when it continues or
/// overlaps it with the same kind; a zero part overlapping a data run starts after it.
fn push_run(runs: &mut Vec<Run>, mut start: u64, end: u64, zero: bool) {
    if let Some(last) = runs.last_mut() {
        if start < last.end && zero && !last.zero {
            start = last.end;
        }
        if end <= start {
            return;
        }
        if last.zero == zero && last.end >= start {
            last.end = last.end.max(end);
            return;
        }
    }
    if end > start {
        runs.push(Run { start, end, zero });
    }
}

/// Copy the guest data of `extents` (in order, not overlapping) from `source` into `dst`,
/// widened to whole clusters of `dst` (see the module documentation). With
/// `copy_compressed` (the two images use one codec), a cluster the source stores
/// compressed, of the output's cluster size, is stored compressed as it is.
pub fn copy_extents(
    source: &mut dyn BlockDevice,
    extents: &[ChangedExtent],
    dst: &mut dyn BlockDevice,
    copy_compressed: bool,
) -> Result<DeltaStats> {
    let size = dst.virtual_size().min(source.virtual_size());
    check_extents(extents, size)?;
    let cluster = dst.cluster_size().unwrap_or(512).max(512);
    let copy_compressed = copy_compressed && source.cluster_size() == Some(cluster);
    let mut stats = DeltaStats::default();
    for run in cluster_runs(extents, cluster, size) {
        if run.zero {
            dst.write_zeroes(run.start, run.end - run.start)?;
            stats.zero_clusters += (run.end - run.start).div_ceil(cluster);
            continue;
        }
        let chunk = CHUNK_BYTES.max(cluster) / cluster * cluster;
        let mut pos = run.start;
        while pos < run.end {
            let len = chunk.min(run.end - pos);
            copy_chunk(source, dst, pos, len, cluster, copy_compressed, &mut stats)?;
            pos += len;
        }
    }
    Ok(stats)
}

/// Copy the whole clusters `[pos, pos+len)` (the last may end at the end of the disk):
/// runs of data clusters in one write, all-zero clusters as zero clusters, compressed ones
/// as they are stored (with `copy_compressed`).
fn copy_chunk(
    source: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    pos: u64,
    len: u64,
    cluster: u64,
    copy_compressed: bool,
    stats: &mut DeltaStats,
) -> Result<()> {
    let mut buf = vec![0u8; len as usize];
    source.read_at(&mut buf, pos)?;
    // Start (in `buf`) of the data clusters not yet written.
    let mut pending = None;
    let mut off = 0u64;
    loop {
        let n = cluster.min(len - off);
        let data = &buf[off as usize..(off + n) as usize];
        let at = pos + off;
        let kind = if n == 0 {
            Stored::End
        } else if copy_compressed && n == cluster && copy_one_compressed(source, dst, at, cluster)?
        {
            Stored::Compressed
        } else if data.iter().all(|&b| b == 0) {
            Stored::Zero
        } else {
            Stored::Data
        };
        if kind == Stored::Data {
            pending.get_or_insert(off);
            stats.data_clusters += 1;
            off += n;
            continue;
        }
        if let Some(p) = pending.take() {
            dst.write_at(&buf[p as usize..off as usize], pos + p)?;
        }
        match kind {
            Stored::End => return Ok(()),
            Stored::Zero => {
                dst.write_zeroes(at, n)?;
                stats.zero_clusters += 1;
            }
            _ => {
                stats.compressed_clusters += 1;
                stats.data_clusters += 1;
            }
        }
        off += n;
    }
}

/// How one output cluster is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Written with its data.
    Data,
    /// A zero cluster.
    Zero,
    /// Copied compressed.
    Compressed,
    /// Past the chunk.
    End,
}

/// If the source stores the cluster at `at` compressed, store its bytes in `dst` as they
/// are (once they are known to inflate) and say so.
fn copy_one_compressed(
    source: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    at: u64,
    cluster: u64,
) -> Result<bool> {
    let Some((host, stored)) = source.read_compressed_cluster(at)? else {
        return Ok(false);
    };
    if stored.is_empty() || stored.len() as u64 >= cluster {
        return Ok(false);
    }
    let Some(codec) = source.cluster_codec() else {
        return Ok(false);
    };
    let mut check = vec![0u8; cluster as usize];
    codec.decompress(&stored, &mut check, host)?;
    dst.write_compressed_cluster(at, &stored)?;
    Ok(true)
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

    fn run(start: u64, end: u64, zero: bool) -> Run {
        Run { start, end, zero }
    }

    #[test]
    fn extents_on_cluster_boundaries_stay_as_they_are() {
        let e = [ext(0, 8, false), ext(8, 8, true), ext(32, 8, false)];
        assert_eq!(
            cluster_runs(&e, 4, 64),
            vec![run(0, 8, false), run(8, 16, true), run(32, 40, false)]
        );
    }

    #[test]
    fn clusters_partly_zeroed_are_copied_as_data() {
        // Zeros from 2 to 14 in 4-byte clusters: clusters 0 and 3 are partly inside.
        assert_eq!(
            cluster_runs(&[ext(2, 12, true)], 4, 64),
            vec![run(0, 4, false), run(4, 12, true), run(12, 16, false)]
        );
        // Inside one cluster: data.
        assert_eq!(
            cluster_runs(&[ext(1, 2, true)], 4, 64),
            vec![run(0, 4, false)]
        );
        // Two zero extents splitting a cluster between them leave it as data.
        assert_eq!(
            cluster_runs(&[ext(0, 6, true), ext(7, 9, true)], 4, 64),
            vec![run(0, 4, true), run(4, 8, false), run(8, 16, true)]
        );
    }

    #[test]
    fn a_cluster_shared_by_data_and_zeros_is_data() {
        assert_eq!(
            cluster_runs(&[ext(0, 6, false), ext(6, 10, true)], 4, 64),
            vec![run(0, 8, false), run(8, 16, true)]
        );
        assert_eq!(
            cluster_runs(&[ext(0, 10, true), ext(10, 6, false)], 4, 64),
            vec![run(0, 8, true), run(8, 16, false)]
        );
    }

    #[test]
    fn the_last_cluster_may_end_with_the_disk() {
        assert_eq!(
            cluster_runs(&[ext(60, 2, true)], 8, 62),
            vec![run(56, 62, false)]
        );
        assert_eq!(
            cluster_runs(&[ext(56, 6, true)], 8, 62),
            vec![run(56, 62, true)]
        );
    }

    #[test]
    fn bad_extent_lists_are_refused() {
        assert!(check_extents(&[ext(0, 0, false)], 64).is_err());
        assert!(check_extents(&[ext(60, 8, false)], 64).is_err());
        assert!(check_extents(&[ext(u64::MAX, 2, false)], 64).is_err());
        assert!(check_extents(&[ext(8, 8, false), ext(4, 2, true)], 64).is_err());
        assert!(check_extents(&[ext(0, 8, false), ext(8, 8, true)], 64).is_ok());
    }
}
