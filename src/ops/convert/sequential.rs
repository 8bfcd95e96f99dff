//! Converting into a qcow2 image laid out sequentially ([`crate::qcow2::sequential`]): the
//! output a storage that takes writes only in order needs (an upload stream, see
//! [`Storage::sequential`]).
//!
//! Two passes over the source, the second the ordinary convert engine:
//!
//! 1. **plan**: which output clusters hold data. Without a backing file for the output
//!    this is the source's allocation, read with `block_status` (the engine's own rules:
//!    zero runs and, when `unallocated_is_zero`, unallocated runs are left out; `-S 0`
//!    plans every cluster). With one (`-B`, a delta) the source and the backing file are
//!    compared cluster by cluster: a differing cluster is data, or a zero cluster when
//!    the source reads zeros there.
//! 2. **copy**: the header and all metadata are written from the plan, then the engine's
//!    reader and workers read, inflate and zero-check the planned data clusters in
//!    parallel as in any convert, and its writer hands them over in guest order.
//!
//! A cluster the source reports allocated but which holds only zeros keeps the place the
//! plan gave it and is never written: a gap that reads as zeros (a hole in a local file).
//! With [`SequentialTarget::scan_zeros`] the engine first reads the planned clusters once
//! more to leave such clusters out ([`scan_zeros`]), for sources whose allocation includes
//! the zeros written to them (raw files).
//!
//! What cannot be laid out before the data is seen is refused: compressed output (the
//! size of a compressed cluster is known only once it is compressed, and the metadata
//! that records it comes first), and the options [`SequentialImage::start`] refuses.

use super::{engine, ConvertOptions, Progress, CHUNK};
use crate::device::{BlockDevice, Extent, ExtentKind};
use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::qcow2::create::CreateOptions;
use crate::qcow2::sequential::{ClusterPlan, PlannedKind, SequentialImage};
use crate::storage::{self, HostFiles, Namespace, Storage};
use std::path::Path;
use std::sync::Arc;

/// Largest span one allocation-status query of the plan pass looks at.
const PROBE: u64 = 1 << 30;

/// The new qcow2 image a sequential convert writes.
pub struct SequentialTarget<'a, 'o> {
    /// Where the image goes: empty, taking writes in order.
    pub storage: Arc<dyn Storage>,
    /// qemu-img style `-o` options of the image (its backing file among them, as
    /// `backing_file` and `backing_fmt`, when `backing` is given).
    pub options: &'o [(String, String)],
    /// The image the output's backing file names, open, with its chain: the output holds
    /// only the clusters where the source differs from it.
    pub backing: Option<&'a mut dyn BlockDevice>,
    /// Read the planned data once before the copy to leave out the clusters that hold
    /// only zeros (see [`scan_zeros`]): worth it when the source's allocation includes
    /// written zeros (a raw disk) and the output goes over a network.
    pub scan_zeros: bool,
}

/// Copy `src` into a new qcow2 image laid out sequentially in `target` (see the module
/// documentation), calling `unreadable` as [`super::convert_salvaging`] does.
pub fn convert_sequential(
    src: &mut dyn BlockDevice,
    target: SequentialTarget<'_, '_>,
    copts: ConvertOptions,
    progress: Progress<'_>,
    unreadable: &mut dyn FnMut(u64),
) -> Result<()> {
    if copts.compress {
        return Err(Error::unsupported(
            "compressed clusters (-c) in a qcow2 image written sequentially (to an upload stream): their sizes are known only after the metadata that records them is written; convert to a local file to compress",
        ));
    }
    if copts.target_dirty {
        return Err(Error::invalid(
            "a qcow2 image written sequentially is a new image; -n cannot write into it",
        ));
    }
    let opts = create_options(target.options, src.virtual_size())?;
    let cs = opts.cluster_size;
    let plan = match target.backing {
        None if target.scan_zeros && !copts.fully_allocate => {
            let plan = plan_from_allocation(src, cs, &copts)?;
            scan_zeros(src, plan, cs, &copts)?
        }
        None => plan_from_allocation(src, cs, &copts)?,
        Some(b) => {
            if opts.backing_file.is_none() {
                return Err(Error::invalid(
                    "sequential qcow2: a backing device was given without a backing_file option",
                ));
            }
            plan_differences(src, b, cs)?
        }
    };
    copy_planned(
        src,
        target.storage,
        &opts,
        plan,
        copts,
        progress,
        unreadable,
    )
}

/// Lay out a new qcow2 image with `opts` mapping `plan` in `storage`, then copy the
/// planned data clusters of `src` into it with the convert engine, and close it.
pub fn copy_planned(
    src: &mut dyn BlockDevice,
    storage: Arc<dyn Storage>,
    opts: &CreateOptions,
    plan: ClusterPlan,
    copts: ConvertOptions,
    progress: Progress<'_>,
    unreadable: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut img = SequentialImage::start(storage, opts, &plan)?;
    let cs = opts.cluster_size;
    let mut planned = PlannedSource {
        inner: src,
        plan,
        cs,
    };
    engine::run(&mut planned, &mut img, copts, progress, unreadable)?;
    img.close()
}

/// The storage of a new `format` image at `path`, created here, when the image is a qcow2
/// image on a storage that takes writes only in order; `None` for every other target,
/// which its driver creates as usual. Host files and RBD images take writes anywhere, so
/// only other remote names (object storage) are created here; one of those that is not
/// sequential is refused.
pub fn remote_qcow2_storage(
    path: &Path,
    format: Format,
    unsafe_cache: bool,
) -> Result<Option<Arc<dyn Storage>>> {
    if format != Format::QCOW2 || !storage::is_remote(path) || storage::rbd::is_rbd_name(path) {
        return Ok(None);
    }
    let created = HostFiles
        .create(path, unsafe_cache)
        .map_err(|e| Error::io(format!("could not create '{}'", path.display()), e))?;
    if !created.sequential() {
        return Err(Error::unsupported(format!(
            "'{}': qcow2 output to a remote storage that is neither an RBD image nor an upload stream",
            path.display()
        )));
    }
    Ok(Some(created))
}

/// [`convert_sequential`] with `-o` options as the command line gives them: normalised as
/// qemu-img does, the host file's own (`nocow`, `extent_size_hint`) left out.
pub fn convert_remote(
    src: &mut dyn BlockDevice,
    target: SequentialTarget<'_, '_>,
    copts: ConvertOptions,
    progress: Progress<'_>,
    unreadable: &mut dyn FnMut(u64),
) -> Result<()> {
    let options: Vec<_> = image::normalise_create_options(Format::QCOW2, target.options)?
        .into_iter()
        .filter(|(k, _)| !crate::create_opts::is_file_only(k))
        .collect();
    let target = SequentialTarget {
        storage: target.storage,
        options: &options,
        backing: target.backing,
        scan_zeros: target.scan_zeros,
    };
    convert_sequential(src, target, copts, progress, unreadable)
}

/// The qcow2 options `options` name, for a disk of `size` bytes.
pub fn create_options(options: &[(String, String)], size: u64) -> Result<CreateOptions> {
    let mut o = CreateOptions::default();
    for (k, v) in options {
        o.set(k, v)?;
    }
    o.size = size;
    o.validate()?;
    Ok(o)
}

/// The output clusters of `cs` bytes that the source's allocation says hold data, as the
/// engine decides what to read.
pub fn plan_from_allocation(
    src: &mut dyn BlockDevice,
    cs: u64,
    copts: &ConvertOptions,
) -> Result<ClusterPlan> {
    let size = src.virtual_size();
    let mut plan = ClusterPlan::new();
    if copts.fully_allocate {
        plan.push(0, size.div_ceil(cs), PlannedKind::Data);
        return Ok(plan);
    }
    let mut pos = 0;
    while pos < size {
        let ext = src.block_status(pos, (size - pos).min(PROBE))?;
        let end = pos.saturating_add(ext.length.max(1)).min(size);
        let skip = match ext.kind {
            ExtentKind::Zero => true,
            ExtentKind::Unallocated => copts.unallocated_is_zero,
            ExtentKind::Data => false,
        };
        if !skip {
            let first = pos / cs;
            plan.push(first, end.div_ceil(cs) - first, PlannedKind::Data);
        }
        pos = end;
    }
    Ok(plan)
}

/// The output clusters of `cs` bytes where `src` differs from `backing`: data where the
/// source holds data, zero clusters where it reads zeros. Ranges both report as reading
/// zeros are not read.
pub fn plan_differences(
    src: &mut dyn BlockDevice,
    backing: &mut dyn BlockDevice,
    cs: u64,
) -> Result<ClusterPlan> {
    let size = src.virtual_size();
    let chunk = CHUNK.max(cs) / cs * cs;
    let mut plan = ClusterPlan::new();
    let (mut a, mut b) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut pos = 0;
    while pos < size {
        // Skip, in one step, what both read as zeros by their allocation alone.
        let zeros_to = zeros_until(src, pos, size)?.min(zeros_until(backing, pos, size)?);
        if zeros_to / cs * cs > pos {
            pos = zeros_to / cs * cs;
            continue;
        }
        let n = chunk.min(size - pos);
        let (sa, sb) = (&mut a[..n as usize], &mut b[..n as usize]);
        src.read_at(sa, pos)?;
        read_backing(backing, sb, pos)?;
        for (i, (x, y)) in sa
            .chunks(cs as usize)
            .zip(sb.chunks(cs as usize))
            .enumerate()
        {
            if x != y {
                let kind = match super::is_zero(x) {
                    true => PlannedKind::Zero,
                    false => PlannedKind::Data,
                };
                plan.push(pos / cs + i as u64, 1, kind);
            }
        }
        pos += n;
    }
    Ok(plan)
}

/// `plan` (data clusters only) less the clusters that hold only zeros: the convert engine
/// reads and zero-checks the planned clusters in parallel, as for the copy itself, into a
/// device that only records which clusters it is given.
pub fn scan_zeros(
    src: &mut dyn BlockDevice,
    plan: ClusterPlan,
    cs: u64,
    copts: &ConvertOptions,
) -> Result<ClusterPlan> {
    let size = src.virtual_size();
    let mut planned = PlannedSource {
        inner: src,
        plan,
        cs,
    };
    let mut recorder = Recorder {
        size,
        cs,
        plan: ClusterPlan::new(),
    };
    let scan = ConvertOptions {
        zero_granularity: 0,
        compress: false,
        fully_allocate: false,
        target_dirty: false,
        rate_limit: 0,
        ..*copts
    };
    engine::run(
        &mut planned,
        &mut recorder,
        scan,
        &mut |_, _| {},
        &mut |_| {},
    )?;
    Ok(recorder.plan)
}

/// The destination of [`scan_zeros`]: records the clusters written to it, in order.
struct Recorder {
    size: u64,
    cs: u64,
    plan: ClusterPlan,
}

impl BlockDevice for Recorder {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, _buf: &mut [u8], offset: u64) -> Result<()> {
        Err(Error::unsupported(format!(
            "sequential qcow2: the zero scan reads nothing back (read at {offset:#x})"
        )))
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if !buf.is_empty() {
            let first = offset / self.cs;
            let end = (offset + buf.len() as u64).div_ceil(self.cs);
            self.plan.push(first, end - first, PlannedKind::Data);
        }
        Ok(())
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn block_status(&mut self, offset: u64, _max_len: u64) -> Result<Extent> {
        Err(Error::unsupported(format!(
            "sequential qcow2: the zero scan has no allocation (at {offset:#x})"
        )))
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn cluster_size(&self) -> Option<u64> {
        Some(self.cs)
    }
    fn requires_sequential_writes(&self) -> bool {
        true
    }
}

/// Where the run of `dev` from `pos` that reads as zeros by its allocation status alone
/// ends (at most `limit`; `pos` when data starts there). A device shorter than the disk
/// (a backing file) reads zeros past its end.
fn zeros_until(dev: &mut dyn BlockDevice, pos: u64, limit: u64) -> Result<u64> {
    let end = limit.min(dev.virtual_size());
    let mut p = pos;
    while p < end {
        let ext = dev.block_status(p, (end - p).min(PROBE))?;
        if ext.kind == ExtentKind::Data {
            return Ok(p);
        }
        p = p.saturating_add(ext.length.max(1));
    }
    Ok(limit)
}

/// Read `buf` at `pos` from the backing device, zeros past its end.
fn read_backing(backing: &mut dyn BlockDevice, buf: &mut [u8], pos: u64) -> Result<()> {
    let have = backing
        .virtual_size()
        .saturating_sub(pos)
        .min(buf.len() as u64) as usize;
    buf[have..].fill(0);
    if have > 0 {
        backing.read_at(&mut buf[..have], pos)?;
    }
    Ok(())
}

/// The source as the engine sees it in a sequential convert: its planned data clusters
/// are data (with the source's own answer inside them, so compressed clusters are still
/// fetched as stored), everything else reads as zeros and is not read.
struct PlannedSource<'a> {
    inner: &'a mut dyn BlockDevice,
    plan: ClusterPlan,
    /// The output's cluster size, the unit of the plan.
    cs: u64,
}

impl PlannedSource<'_> {
    /// The planned data run holding guest byte `pos`, or the start of the next one (as
    /// byte offsets `(start, end)`), or `None`.
    fn data_run(&self, pos: u64) -> Option<(u64, u64)> {
        let cs = self.cs;
        let runs = self.plan.runs();
        let i = runs.partition_point(|r| (r.first + r.count) * cs <= pos);
        runs[i..]
            .iter()
            .find(|r| r.kind == PlannedKind::Data)
            .map(|r| (r.first * cs, (r.first + r.count) * cs))
    }
}

impl BlockDevice for PlannedSource<'_> {
    fn format_name(&self) -> &'static str {
        self.inner.format_name()
    }
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly("the source of a convert".into()))
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly("the source of a convert".into()))
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly("the source of a convert".into()))
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        let zeros = |length: u64| Extent {
            start: offset,
            length: length.max(1),
            kind: ExtentKind::Zero,
            host_offset: None,
            compressed: false,
            depth: 0,
        };
        match self.data_run(offset) {
            None => Ok(zeros(max_len)),
            Some((start, _)) if start > offset => Ok(zeros(max_len.min(start - offset))),
            Some((_, end)) => {
                let mut ext = self.inner.block_status(offset, max_len.min(end - offset))?;
                ext.length = ext.length.clamp(1, end - offset);
                ext.kind = ExtentKind::Data;
                Ok(ext)
            }
        }
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn cluster_size(&self) -> Option<u64> {
        self.inner.cluster_size()
    }
    fn cluster_codec(&self) -> Option<Arc<dyn crate::device::ClusterCodec>> {
        self.inner.cluster_codec()
    }
    fn read_compressed_cluster(&mut self, offset: u64) -> Result<Option<(u64, Vec<u8>)>> {
        self.inner.read_compressed_cluster(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_and_rbd_images_are_created_by_their_driver() {
        let dir = std::env::temp_dir().join("vdisk-sequential-unit-never-created.qcow2");
        for (path, format) in [
            (dir.as_path(), Format::QCOW2),
            (Path::new("rbd:pool/image"), Format::QCOW2),
            (Path::new("rbd:pool/image"), Format::RAW),
        ] {
            assert!(remote_qcow2_storage(path, format, false).unwrap().is_none());
        }
        assert!(!dir.exists(), "nothing is created for a host file");
    }

    #[test]
    fn a_plan_from_allocation_covers_every_cluster_data_touches() {
        use crate::storage::MemStorage;
        let raw = crate::raw::Raw::open(MemStorage::from_vec(vec![1u8; 10_000]), true).unwrap();
        let mut dev: Box<dyn BlockDevice> = Box::new(raw);
        let plan = plan_from_allocation(dev.as_mut(), 4096, &ConvertOptions::default()).unwrap();
        assert_eq!(plan.count(PlannedKind::Data), 3);
    }
}
