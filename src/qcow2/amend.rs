//! Changing the options of an existing image (qemu-img amend).
//!
//! [`Qcow2::amend`] checks every option before it changes anything (QEMU refuses some only
//! after earlier steps ran), then applies the changes in QEMU's order: upgrade to v3 first,
//! then the refcount width, lazy refcounts and size, and a downgrade to v2 last. The backing
//! file cannot be changed (QEMU points to rebase). Each step leaves a consistent image after
//! a power cut at any write:
//!
//! - compat upgrade: snapshot entries that lack the v3 extra data get it through a metadata
//!   transaction; then one header write switches the version.
//! - compat downgrade: every zero cluster (in the active and every snapshot L1 table) is
//!   made unallocated (no backing file: reads stay zeros) or turned into an allocated
//!   cluster of zero bytes that is written and synced, with its refcount, before the L2
//!   entry changes. The image stays a valid v3 image until one header write makes it v2.
//! - refcount width: the new refcount table and blocks are laid out after the end of the
//!   file, where nothing the old header reaches lives, written and synced; then one write
//!   inside the first header sector switches refcount_table_offset, refcount_table_clusters
//!   and refcount_order together. The old structures become free clusters.
//! - lazy refcounts: a header rewrite.
//! - size: [`Qcow2::resize_to`] (see `resize`; the new area of an overlay hides a longer
//!   backing image only when the backing is attached).

use super::entry::read_refcount;
use super::entry::{self, L2Entry, COPIED};
use super::header::{self, compat, ext, incompat};
use super::luks_ops::KeySlotChange;
use super::refcount_area::{self, TableSize, VecSpace};
use super::snapshot::{self, Snapshot};
use super::{ioerr, Geometry, Qcow2};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use std::collections::BTreeSet;

/// The options `qemu-img amend -o` accepts for qcow2; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmendOptions {
    /// 2 (compat 0.10) or 3 (compat 1.1).
    pub version: Option<u32>,
    /// The lazy-refcounts compatible feature.
    pub lazy_refcounts: Option<bool>,
    /// Refcount width in bits.
    pub refcount_bits: Option<u32>,
    /// The backing file name: accepted only when it and `backing_format` restate the
    /// current values (as QEMU; `vdisk rebase` changes the backing file).
    pub backing_file: Option<String>,
    /// The backing format: likewise only the current one.
    pub backing_format: Option<String>,
    /// New virtual size in bytes.
    pub size: Option<u64>,
    /// Key slot changes of a LUKS image (`encrypt.*`).
    pub keyslots: KeySlotChange,
    /// A new name for the external data file.
    pub data_file: Option<String>,
    /// Keep (on) or stop keeping (off) the data file a raw image.
    pub data_file_raw: Option<bool>,
}

impl AmendOptions {
    /// Apply one `-o key=value` option, with qemu-img's messages for the ones it refuses.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if self.keyslots.set(key, value)? {
            return Ok(());
        }
        match key {
            "compat" => {
                self.version = Some(match value {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Unknown compatibility level {value}"
                        )))
                    }
                })
            }
            "lazy_refcounts" => {
                self.lazy_refcounts = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(Error::invalid(
                            "Parameter 'lazy_refcounts' expects 'on' or 'off'",
                        ))
                    }
                })
            }
            "refcount_bits" => {
                let bits: u32 = value.parse().map_err(|_| {
                    Error::invalid(format!(
                        "Parameter 'refcount_bits' expects a number, not '{value}'"
                    ))
                })?;
                if !bits.is_power_of_two() || bits > 64 {
                    return Err(Error::invalid(
                        "Refcount width must be a power of two and may not exceed 64 bits",
                    ));
                }
                self.refcount_bits = Some(bits);
            }
            "backing_file" => self.backing_file = Some(value.to_string()),
            "backing_fmt" => self.backing_format = Some(value.to_string()),
            "size" => self.size = Some(crate::create_opts::option_size("size", value)?),
            "cluster_size" | "preallocation" | "encryption" | "compression_type"
            | "extended_l2" => {
                return Err(Error::invalid(format!(
                    "Invalid parameter '{key}'\nThis option is only supported for image creation"
                )))
            }
            "data_file" => self.data_file = Some(value.to_string()),
            "data_file_raw" => {
                self.data_file_raw = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(Error::invalid(
                            "Parameter 'data_file_raw' expects 'on' or 'off'",
                        ))
                    }
                })
            }
            _ if key.starts_with("encrypt.") => {
                return Err(Error::invalid(format!("Invalid parameter '{key}'")))
            }
            _ => return Err(Error::invalid(format!("Invalid parameter '{key}'"))),
        }
        Ok(())
    }
}

impl<S: Storage> Qcow2<S> {
    /// Apply `o` (see the module documentation for the order and crash safety).
    pub fn amend(&mut self, o: &AmendOptions) -> Result<()> {
        self.check_writable()?;
        let old_version = self.header.version;
        let new_version = o.version.unwrap_or(old_version);
        let new_bits = o.refcount_bits.unwrap_or(1 << self.header.refcount_order);
        if new_version < 3 && new_bits != 16 {
            return Err(Error::invalid(if o.refcount_bits.is_some() {
                "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
            } else {
                "compat=0.10 requires refcount_bits=16"
            }));
        }
        if new_version < 3 && o.lazy_refcounts == Some(true) {
            return Err(Error::invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
        if new_version < old_version {
            let blocking = self.header.incompatible_features & !incompat::DIRTY;
            if blocking != 0 {
                return Err(Error::unsupported(format!(
                    "Cannot downgrade an image with incompatible features {blocking:#x} set"
                )));
            }
        }
        // As QEMU: backing_file and backing_fmt may only restate the current values (an
        // omitted one counts as "none"); changing what the guest reads is rebase's job.
        if (o.backing_file.is_some() || o.backing_format.is_some())
            && (o.backing_file != self.header.backing_file
                || o.backing_format != self.header.backing_format())
        {
            return Err(Error::invalid(
                "Cannot amend the backing file\nYou can use 'vdisk rebase' instead.",
            ));
        }
        if new_version < 3 && old_version >= 3 {
            // A v2 snapshot has no disk size of its own: it takes the image's. QEMU refuses
            // the downgrade (after any resize) when that would change a snapshot.
            let final_size = o.size.unwrap_or(self.header.size);
            let blocked = self.snapshots.iter().any(|s| {
                s.vm_state_size() > u64::from(u32::MAX)
                    || s.disk_size().is_some_and(|d| d != final_size)
            });
            if blocked {
                return Err(Error::invalid(
                    "Internal snapshots prevent downgrade of image",
                ));
            }
        }
        if new_version < old_version {
            // (After QEMU's own refusals, so that an image both refuse reads as in QEMU.)
            // Stricter than QEMU, which downgrades and leaves the bitmaps' clusters leaked:
            // compat 0.10 cannot hold bitmaps, so they must be removed knowingly first.
            if !self.bitmaps.list.is_empty() {
                return Err(Error::unsupported(
                    "Cannot downgrade an image with persistent dirty bitmaps; remove them first ('vdisk bitmap --remove')",
                ));
            }
        }
        if let Some(size) = o.size {
            if !self.snapshots.is_empty() && new_version.max(old_version) < 3 {
                return Err(Error::unsupported(
                    "Can't resize a v2 image which has snapshots",
                ));
            }
            if size % 512 != 0 {
                return Err(Error::invalid("The new size must be a multiple of 512"));
            }
            // Refused before anything changes (the resize runs after other steps).
            if new_version.max(old_version) < 3
                && self.growth_needs_zero_clusters(size, crate::Preallocation::Off)
            {
                return Err(super::resize::no_zero_clusters_in_v2());
            }
        }

        if o.keyslots.requested {
            self.amend_keyslots(&o.keyslots)?;
        }
        if new_version > old_version {
            self.upgrade_to_v3()?;
        }
        if new_bits != 1 << self.header.refcount_order {
            self.change_refcount_width(new_bits)?;
        }
        if let (Some(lazy), true) = (o.lazy_refcounts, new_version >= 3) {
            self.set_lazy_refcounts(lazy)?;
        }
        self.amend_data_file(o.data_file.as_deref(), o.data_file_raw)?;
        if let Some(size) = o.size {
            self.resize_to(size)?;
        }
        if new_version < old_version {
            self.downgrade_to_v2()?;
        }
        self.flush_metadata()
    }

    /// Set or clear the lazy-refcounts compatible feature (a header rewrite).
    fn set_lazy_refcounts(&mut self, lazy: bool) -> Result<()> {
        let want = if lazy {
            self.header.compatible_features | compat::LAZY_REFCOUNTS
        } else {
            self.header.compatible_features & !compat::LAZY_REFCOUNTS
        };
        if want != self.header.compatible_features {
            self.flush_metadata()?;
            self.header.compatible_features = want;
            self.write_header()?;
        }
        Ok(())
    }

    /// compat 0.10 → 1.1.
    fn upgrade_to_v3(&mut self) -> Result<()> {
        self.flush_metadata()?;
        // v3 snapshot entries carry at least the large VM state size and the disk size.
        if self.snapshots.iter().any(|s| s.extra.len() < 16) {
            let size = self.header.size;
            let mut snaps = self.snapshots.clone();
            for s in &mut snaps {
                if s.extra.len() < 16 {
                    let mut e = Snapshot::new_extra(size);
                    BigEndian::write_u64(&mut e[0..], u64::from(s.vm_state_size32));
                    BigEndian::write_u64(&mut e[16..], u64::MAX);
                    s.extra = e;
                }
            }
            let mut txn = self.txn_begin()?;
            let old_len: u64 = self.snapshots.iter().map(|s| s.encoded_len() as u64).sum();
            self.txn_free_range(&mut txn, self.header.snapshots_offset, old_len)?;
            let bytes = snapshot::encode_table(&snaps);
            let off = self.txn_write_bytes(&mut txn, &bytes)?;
            self.txn_commit(txn, |h| h.snapshots_offset = off)?;
            self.snapshots = snaps;
        }
        self.header.version = 3;
        self.header.refcount_order = 4;
        self.header.compression_type = header::CompressionType::Zlib;
        if self.header.extension(ext::FEATURE_TABLE).is_none() {
            self.header.extensions.push(header::Extension {
                kind: ext::FEATURE_TABLE,
                data: header::default_feature_table(),
            });
        }
        self.write_header()
    }

    /// compat 1.1 → 0.10: expand zero clusters, then switch the header.
    fn downgrade_to_v2(&mut self) -> Result<()> {
        self.flush_metadata()?;
        let mut tables: Vec<u64> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut l1s = vec![self.l1.clone()];
        for s in self.snapshots.clone() {
            l1s.push(self.read_snapshot_l1(&s)?);
        }
        for l1 in l1s {
            for raw in l1 {
                let t = entry::l1_l2_offset(raw);
                if t != 0 && seen.insert(t) {
                    tables.push(t);
                }
            }
        }
        for t in tables {
            self.expand_zero_clusters_in(t)?;
        }
        self.flush_metadata()?;
        self.header.version = 2;
        self.header.compatible_features = 0;
        self.header.autoclear_features = 0;
        self.header.incompatible_features = 0;
        self.header.header_length = super::limits::V2_HEADER_LEN;
        self.header.unknown_header_tail.clear();
        self.header.set_extension(ext::FEATURE_TABLE, None);
        self.write_header()
    }

    /// Replace the zero entries of the L2 table at `t` (see the module documentation).
    fn expand_zero_clusters_in(&mut self, t: u64) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let entries = self.read_l2_entries(t)?;
        if !entries
            .iter()
            .any(|&e| matches!(L2Entry::decode(e, cb), L2Entry::Zero { .. }))
        {
            return Ok(());
        }
        let table_refs = self.refcount(t >> cb)?;
        let has_backing = self.header.backing_file.is_some();
        let zeros = vec![0u8; cs as usize];
        let mut new_entries = entries.clone();
        // Preallocated clusters that other tables also reference (a snapshot may still read
        // data there): this table's references move to a fresh zeroed cluster instead.
        let mut unshared = Vec::new();
        for (i, &raw) in entries.iter().enumerate() {
            let L2Entry::Zero { host, copied } = L2Entry::decode(raw, cb) else {
                continue;
            };
            new_entries[i] = match host {
                Some(h) if self.refcount(h >> cb)? == table_refs => {
                    self.storage
                        .write_at(&zeros, h)
                        .map_err(ioerr("writing zeros for a zero cluster"))?;
                    h | if copied { COPIED } else { 0 }
                }
                None if !has_backing => 0,
                old => {
                    let h = self.alloc_clusters(1)?;
                    for _ in 1..table_refs {
                        self.increase_refcount(h)?;
                    }
                    self.storage
                        .write_at(&zeros, h)
                        .map_err(ioerr("writing zeros for a zero cluster"))?;
                    if let Some(o) = old {
                        unshared.push(o);
                    }
                    h | if table_refs == 1 { COPIED } else { 0 }
                }
            };
        }
        // Zero data and refcounts reach the disk before the L2 table that uses them.
        self.flush_metadata()?;
        let mut buf = vec![0u8; cs as usize];
        BigEndian::write_u64_into(&new_entries, &mut buf);
        self.storage
            .write_at(&buf, t)
            .map_err(ioerr("writing an L2 table"))?;
        self.sync()?;
        self.l2_cache.remove(t);
        // The old references are dropped only once nothing on disk uses them.
        for o in unshared {
            for _ in 0..table_refs {
                self.decrease_refcount(o)?;
            }
        }
        self.flush_metadata()
    }

    /// Rebuild every refcount structure with entries of `bits` bits (see the module
    /// documentation), laid out by the refcount-area planner after everything the old header
    /// reaches.
    fn change_refcount_width(&mut self, bits: u32) -> Result<()> {
        self.flush_metadata()?;
        let cs = self.geo.cluster_size;
        let cb = self.geo.cluster_bits;
        let new = Geometry::new(cb, bits.trailing_zeros());
        let counts = self.refcounts_without_refcount_structures()?;
        if let Some((c, &v)) = counts
            .iter()
            .enumerate()
            .find(|(_, &v)| v > new.max_refcount())
        {
            return Err(Error::invalid(format!(
                "Cannot decrease refcount entry width to {bits} bits: Cluster at offset {:#x} has a refcount of {v}",
                (c as u64) << cb
            )));
        }
        let file_clusters = self
            .storage
            .len()
            .map_err(ioerr("reading the file length"))?
            .div_ceil(cs);
        let start = file_clusters.max(counts.len() as u64).max(1);
        let mut space = VecSpace::new(0, counts, Vec::new(), start, new);
        let plan = refcount_area::plan(&mut space, cb, 1, TableSize::Exact)?;
        let new_table = plan.table_entries(&[], cb);
        let max = new.max_refcount();
        refcount_area::write_area(&self.storage, &plan, cb, &new_table, |bi| {
            Ok(space.block_bytes(bi, new.refcount_order, cs, max))
        })?;
        // One write inside the first sector switches all three fields.
        let mut h = self.header.clone();
        h.refcount_table_offset = plan.table << cb;
        h.refcount_table_clusters = plan.table_clusters as u32;
        h.refcount_order = new.refcount_order;
        use header::field;
        let span = field::span(field::REFCOUNT_TABLE_OFFSET, field::REFCOUNT_ORDER);
        refcount_area::switch_header(&self.storage, &h.write()?, span)?;

        self.header = h;
        self.geo = new;
        self.refcount_table = new_table;
        self.rc_cache.clear();
        self.free_hint = 0;
        self.file_len = self.file_len.max(space.end() * cs);
        Ok(())
    }

    /// Every refcount as it is now, with the refcount table and blocks counted 0 (they are
    /// free once the header points at new ones).
    fn refcounts_without_refcount_structures(&mut self) -> Result<Vec<u64>> {
        let cs = self.geo.cluster_size;
        let cb = self.geo.cluster_bits;
        let old = self.geo;
        let mut counts: Vec<u64> = Vec::new();
        let table = self.refcount_table.clone();
        let mut block = vec![0u8; cs as usize];
        for (bi, &off) in table.iter().enumerate() {
            if off == 0 {
                continue;
            }
            self.storage
                .read_at(&mut block, off)
                .map_err(ioerr("reading a refcount block"))?;
            for i in 0..1usize << old.rb_bits {
                let v = read_refcount(&block, old.refcount_order, i);
                if v != 0 {
                    let c = (bi << old.rb_bits) + i;
                    if counts.len() <= c {
                        counts.resize(c + 1, 0);
                    }
                    counts[c] = v;
                }
            }
        }
        let mut clear = |off: u64, n: u64| {
            for k in 0..n {
                if let Some(v) = counts.get_mut(((off >> cb) + k) as usize) {
                    *v = 0;
                }
            }
        };
        clear(
            self.header.refcount_table_offset,
            u64::from(self.header.refcount_table_clusters),
        );
        for &off in table.iter().filter(|&&o| o != 0) {
            clear(off, 1);
        }
        Ok(counts)
    }
}
