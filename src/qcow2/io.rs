//! The [`BlockDevice`] implementation: guest reads, writes, zeroing, discard and
//! allocation status, walking the guest range run by run (`mapping`) and allocating
//! through `refcount`.

use super::entry::L2Entry;
use super::mapping::Join;
use super::subcluster;
use super::Qcow2;
use crate::device::{check_range, BlockDevice, ClusterCodec, Extent, ExtentKind, StoredRead};
use crate::error::Result;
use crate::storage::Storage;
use std::sync::Arc;

/// Whether a write may overwrite the cluster in place: data this image alone owns.
fn writes_in_place(e: L2Entry) -> bool {
    matches!(e, L2Entry::Normal { copied: true, .. })
}

impl<S: Storage> Qcow2<S> {
    /// Read guest bytes of the run whose first cluster `gc` has entry `e` into `out`, which
    /// starts `in_off` bytes into the run (a compressed run is one cluster).
    pub(super) fn read_run_part(
        &mut self,
        gc: u64,
        e: L2Entry,
        in_off: u64,
        out: &mut [u8],
    ) -> Result<()> {
        match e {
            L2Entry::Normal { host, .. } => {
                self.read_guest(out, host + in_off, (gc << self.geo.cluster_bits) + in_off)
            }
            L2Entry::Zero { .. } => {
                out.fill(0);
                Ok(())
            }
            L2Entry::Unallocated => self.read_backing(out, (gc << self.geo.cluster_bits) + in_off),
            L2Entry::Compressed { host, len } => {
                let cluster = self.read_compressed(host, len)?;
                out.copy_from_slice(&cluster[in_off as usize..in_off as usize + out.len()]);
                Ok(())
            }
            L2Entry::Sub { host, bitmap, .. } => {
                self.read_subclusters(gc, host, bitmap, in_off, out)
            }
        }
    }

    /// Read `out` from byte `in_off` of guest cluster `gc`, whose extended entry has `host`
    /// and subcluster `bitmap`: run by run of subclusters alike.
    fn read_subclusters(
        &mut self,
        gc: u64,
        host: Option<u64>,
        bitmap: u64,
        in_off: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let cs = self.geo.cluster_size;
        let end = in_off + out.len() as u64;
        let mut pos = in_off;
        while pos < end {
            let (state, len) = subcluster::run(host, bitmap, pos, end, cs);
            let part = &mut out[(pos - in_off) as usize..(pos - in_off + len) as usize];
            match state {
                subcluster::State::Data(at) => {
                    self.read_guest(part, at, (gc << self.geo.cluster_bits) + pos)?
                }
                subcluster::State::Zero(_) => part.fill(0),
                subcluster::State::Unallocated(_) => {
                    self.read_backing(part, (gc << self.geo.cluster_bits) + pos)?
                }
            }
            pos += len;
        }
        Ok(())
    }

    /// Read from the backing image; past its end (or with none) the guest sees zeros.
    fn read_backing(&mut self, out: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = self.backing.as_mut() else {
            out.fill(0);
            return Ok(());
        };
        let bsize = b.virtual_size();
        let avail = bsize.saturating_sub(offset).min(out.len() as u64) as usize;
        if avail > 0 {
            b.read_at(&mut out[..avail], offset)?;
        }
        out[avail..].fill(0);
        Ok(())
    }

    /// Whether an unallocated guest cluster reads as zeros (true without a backing image).
    fn unallocated_is_zero(&self) -> bool {
        self.backing.is_none()
    }

    /// Write `buf` at guest `offset` without the range check (resize writes past the old
    /// end before the new size takes effect).
    pub(crate) fn do_write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let gc = pos >> cb;
            let first = self.l2_entry(gc)?;
            if self.geo.extended_l2 && self.takes_subcluster_write(pos, end, first) {
                pos = self.write_subclusters(buf, offset, pos, first)?;
                continue;
            }
            let L2Entry::Normal { host, copied: true } = first else {
                pos = self.write_allocating(buf, offset, pos, first)?;
                continue;
            };
            // Data this image alone owns: write in place, over the whole run.
            let run = self.extend_run(gc, first, end.div_ceil(cs), Join::Entries)?;
            let run_end = (run.end() << cb).min(end);
            let at = host + (pos & (cs - 1));
            if !self.has_external_data() {
                self.check_data_write(at, run_end - pos)?;
            }
            let src = &buf[(pos - offset) as usize..(run_end - offset) as usize];
            self.write_guest(src, at, pos)?;
            pos = run_end;
        }
        Ok(())
    }

    /// The entries of the clusters from `gc0` (whose entry is `first`) on, before `limit`,
    /// that a write must give new host clusters: all up to the first it may write in place.
    fn allocation_run(&mut self, gc0: u64, first: L2Entry, limit: u64) -> Result<Vec<L2Entry>> {
        let cs = self.geo.cluster_size;
        let mut olds = Vec::new();
        let mut run = self.extend_run(gc0, first, limit, Join::Entries)?;
        loop {
            olds.extend((0..run.n).map(|k| run.entry(k, cs)));
            if run.end() >= limit {
                return Ok(olds);
            }
            let e = self.l2_entry(run.end())?;
            if writes_in_place(e) {
                return Ok(olds);
            }
            run = self.extend_run(run.end(), e, limit, Join::Entries)?;
        }
    }

    /// Write a run of clusters that all need a new host cluster, starting at guest `pos`
    /// (inside the request `buf` at `offset`), within one L2 table. Returns where the run
    /// ended.
    fn write_allocating(
        &mut self,
        buf: &[u8],
        offset: u64,
        pos: u64,
        first: L2Entry,
    ) -> Result<u64> {
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let end = offset + buf.len() as u64;
        let gc0 = pos >> cb;
        let l1_index = gc0 >> self.geo.l2_bits;
        let table_end = (l1_index + 1) << self.geo.l2_bits;
        // With subclusters, only clusters the write covers whole come here.
        let last = match self.geo.extended_l2 {
            true => end >> cb,
            false => end.div_ceil(cs),
        };
        let limit = table_end.min(last).min(gc0 + self.max_alloc_run());
        let olds = self.allocation_run(gc0, first, limit)?;
        let n = olds.len() as u64;
        let run_start = gc0 << cb;
        let run_end = ((gc0 + n) << cb).min(end);
        let l2_off = self.l2_for_write(l1_index)?;
        // An external data file holds each cluster at its guest offset.
        let host = match self.has_external_data() {
            true => run_start,
            false => self.alloc_clusters(n)?,
        };
        let head = pos - run_start;
        let tail = ((gc0 + n) << cb) - run_end;
        if head == 0 && tail == 0 {
            let src = &buf[(pos - offset) as usize..(run_end - offset) as usize];
            self.write_guest(src, host, pos)?;
        } else {
            let mut data = vec![0u8; (n * cs) as usize];
            if head > 0 {
                self.read_run_part(gc0, olds[0], 0, &mut data[..head as usize])?;
            }
            if tail > 0 {
                let last = gc0 + n - 1;
                let t0 = (n * cs - tail) as usize;
                self.read_run_part(last, olds[n as usize - 1], cs - tail, &mut data[t0..])?;
            }
            data[head as usize..(run_end - run_start) as usize]
                .copy_from_slice(&buf[(pos - offset) as usize..(run_end - offset) as usize]);
            self.write_guest(&data, host, run_start)?;
        }
        for (k, old) in olds.into_iter().enumerate() {
            let k = k as u64;
            let idx = (gc0 + k) & (self.geo.l2_entries() - 1);
            let new = L2Entry::Normal {
                host: host + k * cs,
                copied: true,
            };
            self.set_l2_entry(l2_off, idx, new)?;
            self.release_entry(old);
        }
        Ok(run_end)
    }

    /// Set whole guest clusters `[gc, gc+n)` to `new` (unallocated or zero), releasing
    /// what they held.
    pub(crate) fn set_clusters(&mut self, gc: u64, n: u64, zero: bool) -> Result<()> {
        let want = match zero {
            true => L2Entry::Zero {
                host: None,
                copied: false,
            },
            false => L2Entry::Unallocated,
        };
        // Unallocated clusters already read as zeros without a backing file.
        let keep_unallocated = self.unallocated_is_zero();
        let skip_empty_tables = keep_unallocated || !zero;
        self.replace_entries(gc, n, skip_empty_tables, &|e| {
            (!(keep_unallocated && e == L2Entry::Unallocated)).then_some(want)
        })
    }

    /// Discard whole guest clusters `[gc, gc+n)` as QEMU's guest discard does: a cluster
    /// with a host cluster, or any cluster over a backing file, becomes a zero cluster
    /// (version 3) or unallocated (version 2); clusters without one that already read as
    /// zeros stay as they are.
    fn discard_clusters(&mut self, gc: u64, n: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let want = match self.header.version >= 3 {
            true => L2Entry::Zero {
                host: None,
                copied: false,
            },
            false => L2Entry::Unallocated,
        };
        let backing = !self.unallocated_is_zero();
        self.replace_entries(gc, n, !backing, &|e| {
            (backing || e.host_cluster(cs).is_some()).then_some(want)
        })
    }

    /// Give whole guest clusters `[gc, gc+n)` the zero flag, as qemu's write-zeroes does
    /// (unallocated clusters too). With `keep`, an uncompressed cluster keeps its host
    /// cluster (and reference) under the flag; otherwise what it held is released.
    pub(super) fn zero_clusters(&mut self, gc: u64, n: u64, keep: bool) -> Result<()> {
        self.replace_entries(gc, n, false, &|old| {
            Some(match old {
                L2Entry::Normal { host, copied }
                | L2Entry::Zero {
                    host: Some(host),
                    copied,
                }
                | L2Entry::Sub {
                    host: Some(host),
                    copied,
                    ..
                } if keep => L2Entry::Zero {
                    host: Some(host),
                    copied,
                },
                _ => L2Entry::Zero {
                    host: None,
                    copied: false,
                },
            })
        })
    }

    /// Give each guest cluster of `[gc, gc+n)` the entry `new_for` picks from its current
    /// one (`None`: leave it), releasing what the old entry held when the new one holds no
    /// host cluster. With `skip_empty_tables`, clusters whose L2 table is unallocated are
    /// left as they are without being looked at.
    fn replace_entries(
        &mut self,
        gc: u64,
        n: u64,
        skip_empty_tables: bool,
        new_for: &dyn Fn(L2Entry) -> Option<L2Entry>,
    ) -> Result<()> {
        let cs = self.geo.cluster_size;
        let mut c = gc;
        while c < gc + n {
            let l1_index = c >> self.geo.l2_bits;
            let table_end = ((l1_index + 1) << self.geo.l2_bits).min(gc + n);
            if skip_empty_tables && self.l2_offset(l1_index).is_none() {
                c = table_end;
                continue;
            }
            let mut changes = Vec::new();
            for g in c..table_end {
                let old = self.l2_entry(g)?;
                match new_for(old) {
                    Some(new) if self.entry_words(new) != self.l2_words(g)? => {
                        changes.push((g, old, new))
                    }
                    _ => {}
                }
            }
            if !changes.is_empty() {
                let l2_off = self.l2_for_write(l1_index)?;
                for (g, old, new) in changes {
                    let idx = g & (self.geo.l2_entries() - 1);
                    self.set_l2_entry(l2_off, idx, new)?;
                    if new.host_cluster(cs).is_none() {
                        self.release_entry(old);
                    }
                }
            }
            c = table_end;
        }
        Ok(())
    }

    /// Make the whole clusters of guest `[offset, offset + len)` unallocated, releasing
    /// what they held, whatever lies below (QEMU's full discard: emptying an overlay after
    /// a commit, dropping what a shrink cuts off). The range counts as written for dirty
    /// bitmaps.
    pub(crate) fn full_discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.track_guest_write(offset, len)?;
        let (a, b, _) = self.aligned_parts(offset, len);
        if b > a {
            let cb = self.geo.cluster_bits;
            self.set_clusters(a >> cb, (b - a).div_ceil(self.geo.cluster_size), false)?;
        }
        Ok(())
    }

    /// Zero whole guest clusters `[a, b)` of a version 3 image with the zero flag,
    /// releasing what they held.
    fn zero_whole_clusters(&mut self, a: u64, b: u64) -> Result<()> {
        let cb = self.geo.cluster_bits;
        self.set_clusters(a >> cb, (b - a).div_ceil(self.geo.cluster_size), true)?;
        self.zero_raw_data(a, b - a)
    }

    /// Zero a range that covers part of one zeroing unit (a cluster, or a subcluster with
    /// extended L2 entries). As QEMU: when the unit holds no data of its own and the rest
    /// of it reads as zeros, the whole unit is zeroed in the metadata; otherwise explicit
    /// zero bytes are written, unless the range reads as zeros already.
    pub(super) fn zero_partial(&mut self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.zero_whole_unit(offset, len)? {
            return Ok(());
        }
        let e = self.l2_entry(offset >> self.geo.cluster_bits)?;
        if !self.reads_as_zero(e, offset, len) {
            self.do_write(&vec![0u8; len as usize], offset)?;
        }
        Ok(())
    }

    fn aligned_parts(&self, offset: u64, len: u64) -> (u64, u64, u64) {
        self.aligned_to(offset, len, self.geo.cluster_size)
    }

    /// Split guest `[offset, offset + len)` at multiples of `unit`: returns `(a, b, end)`
    /// where `[a, b)` is the whole units inside (a last unit cut short by the end of the
    /// disk counts as whole).
    pub(super) fn aligned_to(&self, offset: u64, len: u64, unit: u64) -> (u64, u64, u64) {
        let end = offset + len;
        let a = offset.next_multiple_of(unit).min(end);
        let b = if end == self.virtual_size_raw() {
            end.max(a)
        } else {
            (end / unit * unit).max(a)
        };
        (a, b, end)
    }

    /// Block status at guest `offset` (before `end`) inside a cluster of subclusters not all
    /// alike: the run of subclusters alike, resolved through the backing file when
    /// unallocated.
    fn subcluster_status(
        &mut self,
        offset: u64,
        end: u64,
        host: Option<u64>,
        bitmap: u64,
    ) -> Result<Extent> {
        let cs = self.geo.cluster_size;
        let base = offset & !(cs - 1);
        let (state, len) = subcluster::run(host, bitmap, offset - base, (end - base).min(cs), cs);
        let (kind, host_offset) = match state {
            subcluster::State::Data(h) => (ExtentKind::Data, Some(h)),
            subcluster::State::Zero(h) => (ExtentKind::Zero, h),
            subcluster::State::Unallocated(h) => {
                if let Some(b) = self.backing.as_mut() {
                    let bsize = b.virtual_size();
                    if offset < bsize {
                        let mut sub = b.block_status(offset, len.min(bsize - offset))?;
                        sub.depth += 1;
                        return Ok(sub);
                    }
                }
                (ExtentKind::Unallocated, h)
            }
        };
        Ok(Extent {
            start: offset,
            length: len,
            kind,
            host_offset,
            compressed: false,
            depth: 0,
        })
    }

    fn virtual_size_raw(&self) -> u64 {
        self.header.size
    }
}

impl<S: Storage> BlockDevice for Qcow2<S> {
    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        self.set_backing(Some(backing));
        Ok(())
    }

    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_stored(&mut self, buf: &mut [u8], offset: u64) -> Result<Option<StoredRead>> {
        self.read_leaving_encrypted(buf, offset)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.header.size, offset, buf.len() as u64)?;
        let cb = self.geo.cluster_bits;
        let end = offset + buf.len() as u64;
        let limit = end.div_ceil(self.geo.cluster_size);
        let mut pos = offset;
        while pos < end {
            let run = self.map_run(pos >> cb, limit, Join::Reads)?;
            let run_end = (run.end() << cb).min(end);
            let out = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            self.read_run_part(run.gc, run.first, pos - (run.gc << cb), out)?;
            pos = run_end;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.header.size, offset, buf.len() as u64)?;
        self.track_guest_write(offset, buf.len() as u64)?;
        self.do_write(buf, offset)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.header.size, offset, len)?;
        self.track_guest_write(offset, len)?;
        if self.geo.extended_l2 {
            return self.zero_with_subclusters(offset, len, &mut |img, a, b| {
                img.zero_whole_clusters(a, b)
            });
        }
        let (a, b, end) = self.aligned_parts(offset, len);
        self.zero_partial(offset, a - offset)?;
        if b > a {
            let cb = self.geo.cluster_bits;
            let n = (b - a).div_ceil(self.geo.cluster_size);
            if self.header.version >= 3 {
                self.zero_whole_clusters(a, b)?;
            } else if self.unallocated_is_zero() {
                self.set_clusters(a >> cb, n, false)?;
            } else {
                // Version 2 over a backing image: zeros must be stored.
                let chunk = 1u64 << 20;
                let mut p = a;
                while p < b {
                    let l = chunk.min(b - p);
                    self.do_write(&vec![0u8; l as usize], p)?;
                    p += l;
                }
            }
        }
        if end > b {
            self.zero_partial(b, end - b)?;
        }
        Ok(())
    }

    fn zero_range(&mut self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if self.header.version < 3 || (self.has_external_data() && !self.geo.extended_l2) {
            // No zero flag in version 2; an external data file has its own zeroing rules:
            // the plain zeroing is what there is.
            return self.write_zeroes(offset, len);
        }
        self.check_writable()?;
        check_range(self.header.size, offset, len)?;
        self.track_guest_write(offset, len)?;
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        if self.geo.extended_l2 {
            return self.zero_with_subclusters(offset, len, &mut |img, a, b| {
                img.zero_clusters(a >> cb, (b - a).div_ceil(cs), !may_unmap)
            });
        }
        let (a, b, end) = self.aligned_parts(offset, len);
        self.zero_partial(offset, a - offset)?;
        if b > a {
            self.zero_clusters(a >> cb, (b - a).div_ceil(cs), !may_unmap)?;
        }
        if end > b {
            self.zero_partial(b, end - b)?;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.header.size, offset, len)?;
        // As QEMU: the whole requested range is dirty, even the parts left as they were.
        self.track_guest_write(offset, len)?;
        let (a, b, _) = self.aligned_parts(offset, len);
        if b <= a {
            return Ok(());
        }
        let cb = self.geo.cluster_bits;
        let n = (b - a).div_ceil(self.geo.cluster_size);
        if self.header.version < 3 && !self.unallocated_is_zero() {
            return Ok(()); // v2 over a backing image cannot hide backing data: advisory
        }
        self.discard_clusters(a >> cb, n)?;
        self.zero_raw_data(a, b - a)
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_metadata()
    }

    fn close(&mut self) -> Result<()> {
        self.flush_metadata()?;
        self.store_bitmaps()
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(self.header.size, offset, max_len.min(1))?;
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let end = offset.saturating_add(max_len.max(1)).min(self.header.size);
        let run = self.map_run(offset >> cb, end.div_ceil(cs), Join::Reads)?;
        let run_end = (run.end() << cb).min(end);
        if let L2Entry::Sub { host, bitmap, .. } = run.first {
            let mut e = self.subcluster_status(offset, end, host, bitmap)?;
            e.host_offset = e.host_offset.filter(|_| !self.is_encrypted());
            return Ok(e);
        }
        let (kind, host_offset, compressed) = match run.first {
            L2Entry::Normal { host, .. } => {
                (ExtentKind::Data, Some(host + (offset & (cs - 1))), false)
            }
            L2Entry::Compressed { host, .. } => (ExtentKind::Data, Some(host), true),
            L2Entry::Zero { .. } => (ExtentKind::Zero, None, false),
            L2Entry::Unallocated | L2Entry::Sub { .. } => (ExtentKind::Unallocated, None, false),
        };
        if kind == ExtentKind::Unallocated {
            if let Some(b) = self.backing.as_mut() {
                // Resolve through the backing chain; past its end the guest sees zeros.
                let bsize = b.virtual_size();
                if offset < bsize {
                    let mut sub = b.block_status(offset, (run_end - offset).min(bsize - offset))?;
                    sub.depth += 1;
                    return Ok(sub);
                }
            }
        }
        Ok(Extent {
            start: offset,
            length: run_end - offset,
            kind,
            // As QEMU: where encrypted data lies on the host is no use to a reader.
            host_offset: host_offset.filter(|_| !self.is_encrypted()),
            compressed,
            depth: 0,
        })
    }

    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<crate::device::MapStatus> {
        self.map_status_run(offset, max_len)
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.geo.cluster_size)
    }

    fn cluster_codec(&self) -> Option<Arc<dyn ClusterCodec>> {
        if self.is_encrypted() {
            return None;
        }
        Some(Arc::new(self.codec()))
    }

    fn write_compressed_cluster(&mut self, offset: u64, compressed: &[u8]) -> Result<()> {
        self.refuse_compressed_if_encrypted()?;
        self.refuse_with_data_file("compressed clusters")?;
        self.track_guest_write(offset, self.geo.cluster_size)?;
        self.store_compressed(offset, compressed)
    }

    fn read_compressed_cluster(&mut self, offset: u64) -> Result<Option<(u64, Vec<u8>)>> {
        check_range(self.header.size, offset, 1)?;
        match self.l2_entry(offset >> self.geo.cluster_bits)? {
            L2Entry::Compressed { host, len } => {
                Ok(Some((host, self.read_compressed_bytes(host, len)?)))
            }
            _ => Ok(None),
        }
    }

    fn resize(&mut self, new_size: u64) -> Result<()> {
        self.resize_to(new_size)
    }

    fn dirty_run(&mut self, name: &str, offset: u64, max_len: u64) -> Option<(u64, bool)> {
        self.bitmap_dirty_run(name, offset, max_len)
    }
}

impl<S: Storage> Drop for Qcow2<S> {
    fn drop(&mut self) {
        if !self.read_only {
            // A close that was not asked for: errors cannot be reported, and bitmaps that
            // could not be stored stay marked in use (inconsistent), as after a crash.
            if self.flush_metadata().is_ok() {
                let _ = self.store_bitmaps();
            }
        }
    }
}
