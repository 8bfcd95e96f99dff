//! qcow2 images: QEMU's copy-on-write format, versions 2 and 3.
//!
//! # Map of the module
//!
//! This file is the top of the driver: opening an image (reading and validating the header,
//! the L1 table and the refcount table), the in-memory [`Qcow2`] state and its accessors.
//! The files under it, from the floor (pure codecs, the tables layer) up to the operations:
//!
//! | file | owns |
//! | --- | --- |
//! | [`limits`] | every hard limit, and `validate_table` |
//! | [`header`] | the header, header extensions, feature bits, backing name |
//! | [`header_fields`] | the table of fixed header fields: name, offset, width |
//! | [`entry`] | decoding and encoding L1/L2 entries and refcount block entries (pure functions) |
//! | [`cache`] | the bounded LRU cache of L2 tables and refcount blocks |
//! | `tables` | loading, caching, evicting and flushing metadata tables in the write order |
//! | `overlap` | the one overlap check: refusing writes that would overwrite metadata |
//! | `refcount` | refcounts of host clusters, cluster allocation and freeing |
//! | `refcount_area` | the one planner that places a new refcount table and blocks (growth, transactions, repair, width changes) |
//! | `cluster` | L2 lookup and validation, L2 allocation and copy-on-write of L2 tables |
//! | `mapping` | a guest range as runs of clusters of one kind at contiguous host offsets |
//! | `io` | the [`BlockDevice`] implementation: read, write, zero, discard, status |
//! | `data_file` | external data files: guest data at host offset = guest offset in another file |
//! | `subcluster` | extended L2 entries: the subcluster bitmap, decoded, encoded and walked |
//! | `subcluster_write` | extended L2 entries: writes and zeroing of single subclusters |
//! | `map_status` | what `map` reports for a run: the mapping refined by the file's holes |
//! | [`compress`] | compressed clusters: the zlib and zstd codecs, packing, compressed writes |
//! | [`create`] | laying out a new image |
//! | [`sequential`] | a new image laid out front to back from a plan of its clusters, written once in order |
//! | [`encryption`] | encrypted images: loading and unlocking LUKS or legacy AES, and the only path guest data takes to and from the host file |
//! | `luks_ops` | creating the LUKS header of a new image, and amending its key slots |
//! | [`driver`] | the qcow2 row of the driver table (probe, open, create) |
//! | [`check`] | the consistency check (`vdisk check`) and the host-cluster usage map |
//! | `repair` | check's repairs, and repairing a dirty image on a writable open |
//! | `txn` | metadata transactions: new structures, then one header write to switch |
//! | [`snapshot`] | the snapshot table: parsing, validating, writing its entries |
//! | `snapshot_ops` | internal snapshots: create, apply, delete (each a transaction) |
//! | [`state_diff`] | the guest ranges that differ between two states (snapshots, active disk), from their tables |
//! | [`bitmap`] | persistent dirty bitmaps: directory, tables, tracking guest writes, `vdisk bitmap` |
//! | `resize` | growing and shrinking the virtual size |
//! | `amend` | changing compat, refcount width, lazy refcounts, size (qemu-img amend) |
//! | [`measure`] | `qemu-img measure` for qcow2 targets |
//! | [`dump`] | `dump` for qcow2: every structure as JSON |
//!
//! # Write order
//!
//! Metadata reaches the disk through `tables` ([`Qcow2::flush_metadata`], and cache
//! eviction), which writes it in the order that keeps the image consistent after a power
//! cut at any point; the rules are written once, at the top of `tables.rs`. See also
//! `format-spec/qcow2.md`, section 7.

mod amend;
pub mod bitmap;
pub mod cache;
pub mod check;
mod cluster;
pub mod compress;
pub mod create;
mod data_file;
pub mod driver;
pub mod dump;
pub mod encryption;
pub mod entry;
pub mod header;
pub mod header_fields;
mod io;
pub mod limits;
mod luks_ops;
mod map_status;
mod mapping;
pub mod measure;
mod overlap;
mod refcount;
mod refcount_area;
mod repair;
mod resize;
pub mod sequential;
pub mod snapshot;
pub mod snapshot_load;
mod snapshot_ops;
pub mod state_diff;
pub(crate) mod subcluster;
mod subcluster_write;
mod tables;
mod txn;

pub use amend::AmendOptions;
pub use create::{create, CreateOptions};
pub use driver::DRIVER;
pub use header::{CompressionType, Header};
pub use repair::check as check_image;
pub use snapshot::Snapshot;
pub use snapshot_ops::SnapshotTime;

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::storage::Storage;
use cache::TableCache;
use header::incompat;
use limits::*;
use tables::read_u64_table;
use tables::Table;

/// Default memory for cached L2 tables.
pub const DEFAULT_L2_CACHE_BYTES: u64 = 16 << 20;
/// Default memory for cached refcount blocks.
pub const DEFAULT_REFCOUNT_CACHE_BYTES: u64 = 4 << 20;

/// Sizes derived from the header.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// log2 of the entries per L2 table.
    pub l2_bits: u32,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// log2 of the entries per refcount block.
    pub rb_bits: u32,
    /// L2 entries are 16 bytes with subcluster bitmaps (`subcluster`).
    pub extended_l2: bool,
}

impl Geometry {
    fn new(cluster_bits: u32, refcount_order: u32) -> Self {
        Geometry {
            cluster_bits,
            cluster_size: 1 << cluster_bits,
            l2_bits: cluster_bits - 3,
            refcount_order,
            rb_bits: cluster_bits + 3 - refcount_order,
            extended_l2: false,
        }
    }

    /// The same geometry with extended (16-byte) L2 entries.
    fn with_extended_l2(mut self, extended: bool) -> Self {
        self.extended_l2 = extended;
        self.l2_bits = self.cluster_bits - if extended { 4 } else { 3 };
        self
    }

    /// Bytes of one L2 entry.
    pub fn l2_entry_bytes(&self) -> usize {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    /// 64-bit words per L2 entry: the standard entry first, then (extended) its bitmap.
    pub fn l2_stride(&self) -> usize {
        self.l2_entry_bytes() / 8
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits
    }

    /// Guest bytes mapped by one L2 table.
    pub fn bytes_per_l2(&self) -> u64 {
        1 << (self.l2_bits + self.cluster_bits)
    }

    /// Largest refcount value.
    pub fn max_refcount(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.refcount_order)) - 1
        }
    }
}

/// How to open a qcow2 image.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Refuse writes.
    pub read_only: bool,
    /// Memory for cached L2 tables, in bytes.
    pub l2_cache_bytes: u64,
    /// Memory for cached refcount blocks, in bytes.
    pub refcount_cache_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            l2_cache_bytes: DEFAULT_L2_CACHE_BYTES,
            refcount_cache_bytes: DEFAULT_REFCOUNT_CACHE_BYTES,
        }
    }
}

/// An open qcow2 image.
pub struct Qcow2<S: Storage> {
    storage: S,
    header: Header,
    geo: Geometry,
    read_only: bool,
    /// The active L1 table, always fully in memory (bounded by `MAX_L1_BYTES`).
    l1: Vec<u64>,
    /// L1 indices changed since the last flush.
    l1_dirty: Vec<bool>,
    l1_any_dirty: bool,
    /// The refcount table, fully in memory (bounded by `MAX_REFTABLE_BYTES`).
    refcount_table: Vec<u64>,
    l2_cache: TableCache,
    rc_cache: TableCache,
    /// No cluster below this index is free.
    free_hint: u64,
    /// Clusters whose refcount decreases wait for the next flush (after the L2 tables that
    /// dropped them are on disk), as (host offset, count).
    pending_frees: Vec<u64>,
    /// File length as known to the allocator (never shrinks while open).
    file_len: u64,
    /// Backing image, read when a cluster is not allocated here.
    backing: Option<Box<dyn BlockDevice>>,
    /// The snapshot table.
    snapshots: Vec<snapshot::Snapshot>,
    /// Where the next compressed cluster is appended (0: start a new host cluster).
    compressed_cursor: u64,
    /// Whether the image looks metadata-preallocated (found on `map`'s first question).
    metadata_preallocation: Option<bool>,
    /// The encryption of guest data (`None`: not encrypted).
    crypt: Option<encryption::Crypt>,
    /// The persistent dirty bitmaps.
    bitmaps: bitmap::State,
    /// The external data file, once attached (see `data_file`).
    data_file: Option<std::sync::Arc<dyn Storage>>,
    /// The path the data file was opened by.
    data_file_name: Option<String>,
}

fn ioerr(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("qcow2: {what}"), e)
}

/// Read and parse the header (with its extensions and backing file name) of the image in
/// `storage`; also returns the file length.
pub(crate) fn read_header<S: Storage + ?Sized>(storage: &S) -> Result<(Header, u64)> {
    let file_len = storage.len().map_err(ioerr("reading the file length"))?;
    if file_len < u64::from(V2_HEADER_LEN) {
        return Err(Error::corrupt(
            "qcow2 header",
            0,
            format!("file of {file_len} bytes is too short for a qcow2 header"),
        ));
    }
    // Read the first cluster (at most 2 MiB) so header, extensions and name are in hand.
    let mut first = vec![0u8; 512];
    storage
        .read_at(&mut first, 0)
        .map_err(ioerr("reading the header"))?;
    let cluster_bits = header::field::CLUSTER_BITS.get(&first) as u32;
    if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        let want = (1u64 << cluster_bits).min(file_len) as usize;
        if want > first.len() {
            first.resize(want, 0);
            storage
                .read_at(&mut first, 0)
                .map_err(ioerr("reading the header"))?;
        } else {
            first.truncate(want.max(V2_HEADER_LEN as usize));
        }
    }
    Ok((Header::parse(&first, file_len)?, file_len))
}

/// Refuse, as a writable [`Qcow2::open`] would, to write the qcow2 image in `storage` (for
/// a caller that must know before it starts a longer operation), without opening it.
pub fn check_writable_open<S: Storage + ?Sized>(storage: &S) -> Result<()> {
    let (header, _) = read_header(storage)?;
    refuse_writable(&header)
}

/// Refuse to write an image whose header is `header` when it is marked corrupt.
pub(crate) fn refuse_writable(header: &Header) -> Result<()> {
    if header.incompatible_features & incompat::CORRUPT != 0 {
        return Err(Error::ReadOnly(
            "qcow2 image is marked corrupt; it can be opened read-only, or repaired with 'vdisk check -r all'".into(),
        ));
    }
    Ok(())
}

impl<S: Storage> Qcow2<S> {
    /// Open the qcow2 image in `storage`.
    ///
    /// A writable open is refused for an image marked corrupt, before anything is written;
    /// then a dirty image (lazy refcounts) is repaired, and the enabled persistent bitmaps
    /// are loaded to track writes.
    pub fn open(storage: S, opts: OpenOptions) -> Result<Self> {
        Self::open_with_key(storage, opts, None, false)
    }

    /// [`open`](Self::open) an image that may be encrypted: unlocked with `key` when one is
    /// given; without one, refused when `key_required`, else opened locked (its header
    /// can be shown, its data cannot be read). The key is tried before anything is
    /// written, so a wrong passphrase leaves the file untouched.
    pub fn open_with_key(
        storage: S,
        opts: OpenOptions,
        key: Option<&crate::crypto::Passphrase>,
        key_required: bool,
    ) -> Result<Self> {
        let read_only = opts.read_only;
        let (mut header, mut file_len) = read_header(&storage)?;
        // Checked before anything is written; kept for the open image (a dirty image's
        // repair below changes refcounts only).
        let dir = bitmap::read_directory(&storage, &header, file_len)?;
        if header.incompatible_features & incompat::EXTERNAL_DATA != 0
            && header.data_file().is_none_or(|n| n.is_empty())
        {
            // QEMU would need the data file named on its command line; vdisk opens only
            // the file the image names.
            return Err(Error::corrupt(
                "qcow2 header",
                header::field::INCOMPATIBLE_FEATURES.file_offset(),
                "the external data file bit is set but the image names no data file",
            ));
        }
        let crypt = encryption::load(&storage, &header, file_len, key)?;
        if key_required && crypt.as_ref().is_some_and(|c| !c.is_unlocked()) {
            return Err(Error::invalid(encryption::KEY_REQUIRED));
        }
        if !read_only {
            refuse_writable(&header)?;
            if header.incompatible_features & incompat::DIRTY != 0 {
                // The repair rewrites refcounts only: the header it leaves is re-read.
                repair::repair_if_dirty(&storage)?;
                (header, file_len) = read_header(&storage)?;
            }
        }
        let extended = header.incompatible_features & incompat::EXTENDED_L2 != 0;
        if extended {
            subcluster::check_openable(&header)?;
        }
        let geo =
            Geometry::new(header.cluster_bits, header.refcount_order).with_extended_l2(extended);

        let mut l1 = vec![0u64; header.l1_size as usize];
        read_u64_table(&storage, header.l1_table_offset, &mut l1, "L1 table")?;
        let rt_entries =
            (u64::from(header.refcount_table_clusters) * geo.cluster_size / 8) as usize;
        let mut refcount_table = vec![0u64; rt_entries];
        read_u64_table(
            &storage,
            header.refcount_table_offset,
            &mut refcount_table,
            "refcount table",
        )?;

        let snapshots = snapshot::read_table(
            &storage,
            header.snapshots_offset,
            header.nb_snapshots,
            geo.cluster_size,
            file_len,
            header.version,
        )?;
        let cs = geo.cluster_size;
        let mut img = Qcow2 {
            snapshots,
            storage,
            l1_dirty: vec![false; l1.len()],
            l1_any_dirty: false,
            l1,
            refcount_table,
            l2_cache: TableCache::new((opts.l2_cache_bytes / cs) as usize),
            rc_cache: TableCache::new((opts.refcount_cache_bytes / cs) as usize),
            free_hint: 0,
            pending_frees: Vec::new(),
            file_len,
            backing: None,
            compressed_cursor: 0,
            metadata_preallocation: None,
            crypt,
            bitmaps: bitmap::State::default(),
            data_file: None,
            data_file_name: None,
            read_only,
            header,
            geo,
        };
        img.validate_tables()?;
        img.set_bitmap_state(bitmap::State::from_directory(dir));
        if !read_only {
            img.load_tracking_bitmaps()?;
            img.clear_unknown_autoclear()?;
        }
        Ok(img)
    }

    /// Clear the autoclear bits of features vdisk does not maintain: that tells QEMU the
    /// structures they guard may be stale. The bitmaps bit stays while the image has
    /// bitmaps (vdisk keeps them valid); without the extension it guards nothing.
    fn clear_unknown_autoclear(&mut self) -> Result<()> {
        let mut keep = if bitmap::has_persistent_bitmaps(&self.header) {
            header::autoclear::BITMAPS
        } else {
            0
        };
        if self.header.data_file_raw() {
            // vdisk keeps a raw data file raw.
            keep |= header::autoclear::RAW_EXTERNAL;
        }
        if self.header.autoclear_features & !keep != 0 {
            self.header.autoclear_features &= keep;
            self.write_header()?;
        }
        Ok(())
    }

    /// Check every L1 and refcount table entry for alignment and range.
    fn validate_tables(&self) -> Result<()> {
        let cs = self.geo.cluster_size;
        for (i, &raw) in self.l1.iter().enumerate() {
            let off = entry::l1_l2_offset(raw);
            if raw & entry::L1_RESERVED_MASK != 0 && off != 0 && raw & 0x1ff != 0 {
                return Err(Error::corrupt(
                    "L1 table",
                    self.header.l1_table_offset,
                    format!("entry {i} ({raw:#x}) has reserved bits set"),
                ));
            }
            if off != 0 && off % cs != 0 {
                return Err(Error::corrupt(
                    "L1 table",
                    self.header.l1_table_offset,
                    format!("entry {i} points at an unaligned L2 table offset {off:#x}"),
                ));
            }
        }
        for (i, &raw) in self.refcount_table.iter().enumerate() {
            let off = raw & entry::OFFSET_MASK;
            if raw & 0x1ff != 0 || (off != 0 && off % cs != 0) {
                return Err(Error::corrupt(
                    "refcount table",
                    self.header.refcount_table_offset,
                    format!("entry {i} ({raw:#x}) is not a cluster-aligned offset"),
                ));
            }
        }
        Ok(())
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Derived sizes.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Attach a backing image; unallocated clusters read from it.
    pub fn set_backing(&mut self, backing: Option<Box<dyn BlockDevice>>) {
        self.backing = backing;
    }

    /// Record a new backing file name and its format in the header (`None` removes both),
    /// and rewrite the header. A name needs a format (see [`crate::chain::check_new_backing`]).
    /// Guest data must already be durable (the caller flushes first).
    pub fn set_backing_file(&mut self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        self.check_writable()?;
        crate::names::check_new_backing(name, format)?;
        self.flush_metadata()?;
        self.header.backing_file = name.map(str::to_string);
        let fmt = if name.is_some() {
            format.map(|f| f.as_bytes().to_vec())
        } else {
            None
        };
        self.header.set_extension(header::ext::BACKING_FORMAT, fmt);
        self.write_header()
    }

    /// Remove every cluster mapping of the active disk so all reads fall through to the
    /// backing image (qemu-img commit's "empty the overlay").
    pub fn make_empty(&mut self) -> Result<()> {
        self.full_discard(0, self.header.size)?;
        self.flush_metadata()
    }

    /// The backing image, if one is attached.
    pub fn backing(&mut self) -> Option<&mut Box<dyn BlockDevice>> {
        self.backing.as_mut()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("qcow2 image is open read-only".into()));
        }
        if self.crypt.as_ref().is_some_and(|c| !c.is_unlocked()) {
            return Err(Error::invalid(encryption::KEY_REQUIRED));
        }
        Ok(())
    }

    /// Rewrite the header cluster from `self.header` and sync.
    pub(crate) fn write_header(&mut self) -> Result<()> {
        let bytes = self.header.write()?;
        self.storage
            .write_at(&bytes, 0)
            .map_err(ioerr("writing the header"))?;
        self.storage.flush().map_err(ioerr("flushing the header"))
    }
}
