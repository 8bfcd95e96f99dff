//! What `map` reports for a qcow2 run: the cluster mapping, and for an image that looks
//! metadata-preallocated, the image file's holes (a preallocated cluster over a hole
//! reads zeros), as QEMU reports them.

use super::entry::L2Entry;
use super::{ioerr, Qcow2};
use crate::device::{BlockDevice, Extent, ExtentKind, MapStatus};
use crate::error::Result;
use crate::storage::Storage;

impl<S: Storage> Qcow2<S> {
    /// [`BlockDevice::map_status`] for qcow2: runs answered by a backing image come from
    /// that image's own `map_status`; data clusters of a metadata-preallocated image are
    /// checked against the file's holes.
    pub(super) fn map_status_run(&mut self, offset: u64, max_len: u64) -> Result<MapStatus> {
        let extent = self.block_status(offset, max_len)?;
        if extent.depth > 0 {
            if let Some(backing) = self.backing.as_mut() {
                let mut status = backing.map_status(offset, extent.length)?;
                status.extent.depth += 1;
                return Ok(status);
            }
        }
        if extent.kind == ExtentKind::Zero && !self.is_encrypted() {
            if let L2Entry::Sub { .. } = self.l2_entry(offset >> self.geo.cluster_bits)? {
                // Zero subclusters: block status has the run and its host offset.
                return Ok(MapStatus::from_extent(extent));
            }
            return self.zero_run(extent);
        }
        let mut status = MapStatus::from_extent(extent);
        if self.has_external_data() {
            if extent.kind == ExtentKind::Data {
                status.file = self.data_file_name().map(str::to_string);
            }
            return Ok(status);
        }
        match extent.host_offset {
            Some(host)
                if extent.kind == ExtentKind::Data
                    && !extent.compressed
                    && self.looks_metadata_preallocated()? =>
            {
                let found = self
                    .storage
                    .data_extent(host)
                    .map_err(ioerr("querying holes in the image file"))?;
                Ok(status.with_host_extent(found))
            }
            _ => Ok(status),
        }
    }

    /// A run of zero clusters split as QEMU reports it: preallocated zero clusters keep
    /// their host offset, so a run ends where the next one is not contiguous on the host
    /// or is a plain zero cluster.
    fn zero_run(&mut self, mut extent: Extent) -> Result<MapStatus> {
        let cb = self.geo.cluster_bits;
        let offset = extent.start;
        let end = offset + extent.length;
        let host_of = |e: L2Entry| match e {
            L2Entry::Zero { host, .. } => host,
            _ => None,
        };
        let first = (offset >> cb) << cb;
        let host = host_of(self.l2_entry(offset >> cb)?);
        let mut run_end = (first + (1 << cb)).min(end);
        while run_end < end {
            let next = host_of(self.l2_entry(run_end >> cb)?);
            let contiguous = match (host, next) {
                (Some(a), Some(b)) => b == a + (run_end - first),
                (None, None) => true,
                _ => false,
            };
            if !contiguous {
                break;
            }
            run_end = (run_end + (1 << cb)).min(end);
        }
        extent.length = run_end - offset;
        extent.host_offset = host.map(|h| h + (offset - first));
        Ok(MapStatus::from_extent(extent))
    }

    /// Whether clearly more host clusters are in use (nonzero refcount) than the file has
    /// allocated on the host: QEMU's test for metadata preallocation, which decides whether
    /// its block status looks through data clusters at the file's holes.
    fn looks_metadata_preallocated(&mut self) -> Result<bool> {
        if let Some(known) = self.metadata_preallocation {
            return Ok(known);
        }
        let io = ioerr("reading the file size");
        let cs = self.geo.cluster_size;
        let file_len = self.storage.len().map_err(&io)?;
        let real_clusters = self.storage.allocated_bytes().map_err(&io)? / cs;
        let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
        let end = file_len.div_ceil(cs);
        let mut in_use = 0;
        let mut cluster = 0;
        while cluster < end && in_use < threshold {
            in_use += u64::from(self.refcount(cluster)? != 0);
            cluster += 1;
        }
        let found = in_use >= threshold;
        self.metadata_preallocation = Some(found);
        Ok(found)
    }
}
