//! Writing images with extended L2 entries (`extended_l2=on`): what a guest write or a
//! zeroing does to a cluster of 32 subclusters. Clusters a write covers whole take the
//! same paths as in any image (`io`); this file owns the rest:
//!
//! * a write into a cluster this image owns (COPIED, with a host cluster) goes in place,
//!   and only a partly written subcluster that held no data is completed around the new
//!   bytes (from the backing file, or zeros);
//! * a write elsewhere (no host cluster, a shared or compressed one) takes a new host
//!   cluster and fills only the subclusters it touches, plus, when the old entry had
//!   allocated subclusters, every subcluster between them and the write, so the guest
//!   keeps reading what it read; untouched subclusters keep their state (unallocated ones
//!   still show the backing file);
//! * zeroing whole subclusters sets their zero bits and clears their allocation bits,
//!   keeping the host cluster; compressed clusters are zeroed by writing zeros.
//!
//! These are the choices QEMU makes, so that `qemu-img map` sees the same extents after
//! the same writes through either tool.

use super::entry::{L2Entry, COPIED};
use super::subcluster::{self, alloc_mask, bitmap_of, zero_mask, State, SUBCLUSTERS};
use super::Qcow2;
use crate::error::Result;
use crate::storage::Storage;

/// A range of the subclusters of one cluster.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// First and one-past-last subcluster the new data occupies.
    first: u64,
    end: u64,
}

impl<S: Storage> Qcow2<S> {
    /// Whether a write of guest `[pos, end)` into the cluster whose entry is `e` goes
    /// through [`Self::write_subclusters`]: it covers the cluster only in part, or the
    /// cluster has a host cluster of its own whose subclusters are not all data.
    pub(super) fn takes_subcluster_write(&self, pos: u64, end: u64, e: L2Entry) -> bool {
        let cs = self.geo.cluster_size;
        let base = pos & !(cs - 1);
        let whole = pos == base && end >= base + cs;
        !whole || (owned_host(e).is_some() && !matches!(e, L2Entry::Normal { .. }))
    }

    /// Write the part of `buf` (the request at guest `offset`) from guest `pos` to the end
    /// of its cluster or of the request, into the cluster whose entry is `old`. Returns
    /// where the write stopped.
    pub(super) fn write_subclusters(
        &mut self,
        buf: &[u8],
        offset: u64,
        pos: u64,
        old: L2Entry,
    ) -> Result<u64> {
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let sub = cs / SUBCLUSTERS;
        let gc = pos >> cb;
        let base = gc << cb;
        let end = (offset + buf.len() as u64).min(base + cs);
        let (in0, in1) = (pos - base, end - base);
        let touched = Span {
            first: in0 / sub,
            end: in1.div_ceil(sub),
        };
        let in_place = owned_host(old);
        let span = match in_place {
            Some(_) => touched,
            None => moved_span(old, touched),
        };
        // The bytes of the cluster the host write covers: the new data, and around it
        // what the guest read before in subclusters that had no data of their own.
        let (w0, w1) = match in_place {
            Some(_) => (
                self.completed_start(old, in0, sub),
                self.completed_end(old, in1, sub),
            ),
            None => (span.first * sub, span.end * sub),
        };
        let mut data = vec![0u8; (w1 - w0) as usize];
        if in0 > w0 {
            self.read_run_part(gc, old, w0, &mut data[..(in0 - w0) as usize])?;
        }
        if w1 > in1 {
            self.read_run_part(gc, old, in1, &mut data[(in1 - w0) as usize..])?;
        }
        data[(in0 - w0) as usize..(in1 - w0) as usize]
            .copy_from_slice(&buf[(pos - offset) as usize..(end - offset) as usize]);

        let l2_off = self.l2_for_write(gc >> self.geo.l2_bits)?;
        let host = match in_place {
            Some(h) => {
                if !self.has_external_data() {
                    self.check_data_write(h + w0, w1 - w0)?;
                }
                h
            }
            None if self.has_external_data() => base,
            None => self.alloc_clusters(1)?,
        };
        self.write_guest(&data, host + w0, base + w0)?;

        let mask = alloc_mask(span.first, span.end);
        let old_bits = bitmap_of(old);
        let bitmap = (old_bits | mask) & !(mask << 32);
        let external = self.has_external_data();
        let new = subcluster::decode_in(host | COPIED, bitmap, cb, external);
        if in_place.is_none() || new != old {
            let idx = gc & (self.geo.l2_entries() - 1);
            self.set_l2_entry(l2_off, idx, new)?;
        }
        if in_place.is_none() {
            self.release_entry(old);
        }
        Ok(end)
    }

    /// Where an in-place write starting at byte `in0` of a cluster must start writing: at
    /// `in0` itself when its subcluster holds data, else at the subcluster's start (the
    /// bytes before `in0` are completed from what the guest read there).
    fn completed_start(&self, e: L2Entry, in0: u64, sub: u64) -> u64 {
        match subcluster_has_data(e, in0 / sub) {
            true => in0,
            false => in0 / sub * sub,
        }
    }

    /// Where an in-place write ending before byte `in1` of a cluster must stop: the mirror
    /// of [`Self::completed_start`].
    fn completed_end(&self, e: L2Entry, in1: u64, sub: u64) -> u64 {
        if in1 % sub == 0 || subcluster_has_data(e, in1 / sub) {
            in1
        } else {
            in1.next_multiple_of(sub)
        }
    }

    /// Zero subclusters `[first, end)` of guest cluster `gc`: zero bits set, allocation bits
    /// cleared, the host cluster kept. A compressed cluster has no subclusters: its bytes
    /// are written as zeros instead.
    pub(super) fn zero_subclusters(&mut self, gc: u64, first: u64, end: u64) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let sub = self.geo.cluster_size / SUBCLUSTERS;
        let old = self.l2_entry(gc)?;
        let (host, copied) = match old {
            L2Entry::Compressed { .. } => {
                let start = (gc << cb) + first * sub;
                let len = ((end - first) * sub).min(self.header.size.saturating_sub(start));
                return self.do_write(&vec![0u8; len as usize], start);
            }
            L2Entry::Normal { host, copied } => (Some(host), copied),
            L2Entry::Zero { host, copied } | L2Entry::Sub { host, copied, .. } => (host, copied),
            L2Entry::Unallocated => (None, false),
        };
        let bitmap = (bitmap_of(old) | zero_mask(first, end)) & !alloc_mask(first, end);
        let raw = host.map_or(0, |h| h | if copied { COPIED } else { 0 });
        let new = subcluster::decode_in(raw, bitmap, cb, self.has_external_data());
        if new != old {
            let l2_off = self.l2_for_write(gc >> self.geo.l2_bits)?;
            let idx = gc & (self.geo.l2_entries() - 1);
            self.set_l2_entry(l2_off, idx, new)?;
        }
        Ok(())
    }

    /// Zero guest `[offset, offset + len)` of an image with subclusters: bytes outside
    /// whole subclusters are written (unless they read as zeros already), whole subclusters
    /// of a partly covered cluster get their zero bits, and whole clusters go to `whole`.
    pub(super) fn zero_with_subclusters(
        &mut self,
        offset: u64,
        len: u64,
        whole: &mut dyn FnMut(&mut Self, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let cs = self.geo.cluster_size;
        let sub = cs / SUBCLUSTERS;
        let (sa, sb, end) = self.aligned_to(offset, len, sub);
        self.zero_partial(offset, sa - offset)?;
        let (a, b, _) = self.aligned_to(sa, sb - sa, cs);
        self.zero_within_cluster(sa, a)?;
        if b > a {
            whole(self, a, b)?;
        }
        self.zero_within_cluster(b.max(a), sb)?;
        self.zero_partial(sb, end - sb)
    }

    /// Zero the whole subclusters of guest `[start, end)`, which lies in one cluster.
    fn zero_within_cluster(&mut self, start: u64, end: u64) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        let cb = self.geo.cluster_bits;
        let sub = self.geo.cluster_size / SUBCLUSTERS;
        let base = start >> cb << cb;
        self.zero_subclusters(
            start >> cb,
            (start - base) / sub,
            (end - base).div_ceil(sub),
        )
    }

    /// Zero the whole zeroing unit (cluster, or subcluster with extended L2 entries) that
    /// holds guest `[offset, offset + len)` in the metadata, if it holds no data of its
    /// own and the rest of it reads as zeros (through the backing chain). Returns whether
    /// it did. Version 2 images have no zero flag, and data-file images keep their own rules.
    pub(super) fn zero_whole_unit(&mut self, offset: u64, len: u64) -> Result<bool> {
        if self.header.version < 3 || (self.has_external_data() && !self.geo.extended_l2) {
            return Ok(false);
        }
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let unit = if self.geo.extended_l2 {
            cs / SUBCLUSTERS
        } else {
            cs
        };
        let gc = offset >> cb;
        let start = offset / unit * unit;
        let stop = (offset + len).next_multiple_of(unit).min(self.header.size);
        let e = self.l2_entry(gc)?;
        let i = (start - (gc << cb)) / unit;
        let no_data = match e {
            L2Entry::Unallocated | L2Entry::Zero { .. } => true,
            L2Entry::Sub { host, bitmap, .. } => {
                !matches!(subcluster::state(host, bitmap, i, cs), State::Data(_))
            }
            L2Entry::Normal { .. } | L2Entry::Compressed { .. } => false,
        };
        if !no_data
            || !self.reads_zeros(start, offset - start)?
            || !self.reads_zeros(offset + len, stop.saturating_sub(offset + len))?
        {
            return Ok(false);
        }
        match self.geo.extended_l2 {
            true => self.zero_subclusters(gc, i, i + 1)?,
            false => self.zero_clusters(gc, 1, true)?,
        }
        Ok(true)
    }

    /// Whether guest `[offset, offset + len)` reads as zeros by its block status (through
    /// the backing chain; unallocated at the bottom reads as zeros).
    fn reads_zeros(&mut self, offset: u64, len: u64) -> Result<bool> {
        use crate::device::{BlockDevice, ExtentKind};
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let ext = self.block_status(pos, end - pos)?;
            if ext.kind == ExtentKind::Data || ext.length == 0 {
                return Ok(false);
            }
            pos += ext.length;
        }
        Ok(true)
    }

    /// Whether guest `[offset, offset + len)`, inside the cluster whose entry is `e`, reads
    /// as zeros from this image's metadata alone.
    pub(super) fn reads_as_zero(&self, e: L2Entry, offset: u64, len: u64) -> bool {
        let cs = self.geo.cluster_size;
        match e {
            L2Entry::Zero { .. } => true,
            L2Entry::Unallocated => self.backing.is_none(),
            L2Entry::Sub { host, bitmap, .. } => {
                let base = offset & !(cs - 1);
                let (mut pos, stop) = (offset - base, offset - base + len);
                while pos < stop {
                    let (state, n) = subcluster::run(host, bitmap, pos, stop, cs);
                    match state {
                        State::Zero(_) => {}
                        State::Unallocated(_) if self.backing.is_none() => {}
                        _ => return false,
                    }
                    pos += n;
                }
                true
            }
            _ => false,
        }
    }
}

/// The host cluster of an entry a write may fill in place: one this image alone owns.
fn owned_host(e: L2Entry) -> Option<u64> {
    match e {
        L2Entry::Normal { host, copied: true }
        | L2Entry::Zero {
            host: Some(host),
            copied: true,
        }
        | L2Entry::Sub {
            host: Some(host),
            copied: true,
            ..
        } => Some(host),
        _ => None,
    }
}

/// The subclusters a new host cluster for `old` must hold when a write touches `touched`:
/// a compressed cluster whole; otherwise the touched ones, widened to take in every
/// subcluster that held data in the old host cluster.
fn moved_span(old: L2Entry, touched: Span) -> Span {
    if matches!(old, L2Entry::Compressed { .. }) {
        return Span {
            first: 0,
            end: SUBCLUSTERS,
        };
    }
    let alloc = bitmap_of(old) as u32;
    if alloc == 0 {
        return touched;
    }
    Span {
        first: touched.first.min(u64::from(alloc.trailing_zeros())),
        end: touched.end.max(32 - u64::from(alloc.leading_zeros())),
    }
}

/// Whether subcluster `i` of the cluster whose entry is `e` holds data in its host cluster.
fn subcluster_has_data(e: L2Entry, i: u64) -> bool {
    i < SUBCLUSTERS && bitmap_of(e) >> i & 1 == 1
}
