//! Laying out a new qcow2 image, and the `-o` options qemu-img accepts for it.
//!
//! A new image has the header in cluster 0, the refcount table from cluster 1, then the
//! refcount blocks that describe all of this metadata, then the L1 table: the same order
//! qemu-img uses. Preallocation then goes through the ordinary allocator.

use super::entry::{write_refcount, L2Entry};
use super::header::{self, CompressionType, Header};
use super::limits::*;
pub use super::luks_ops::EncryptOptions;
use super::{OpenOptions, Qcow2};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::Preallocation;
use byteorder::{BigEndian, ByteOrder};

/// Options for a new qcow2 image (qemu-img's `-o` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size in bytes (a power of two from 512 to 2 MiB).
    pub cluster_size: u64,
    /// 2 (compat 0.10) or 3 (compat 1.1).
    pub version: u32,
    /// Refcount width in bits (1..64, a power of two).
    pub refcount_bits: u32,
    /// Set the lazy-refcounts compatible feature (v3 only).
    pub lazy_refcounts: bool,
    /// What to allocate up front.
    pub preallocation: Preallocation,
    /// Backing file name as stored in the header.
    pub backing_file: Option<String>,
    /// Backing format, stored in the backing-format extension.
    pub backing_format: Option<String>,
    /// Compression method for compressed clusters.
    pub compression_type: CompressionType,
    /// Encryption (`encrypt.*`); not encrypted unless a format is given.
    pub encrypt: EncryptOptions,
    /// External data file name as stored in the header (the driver creates the file).
    pub data_file: Option<String>,
    /// Keep the data file a valid raw image (every cluster mapped at its guest offset).
    pub data_file_raw: bool,
    /// Extended L2 entries (subclusters, 16-byte L2 entries).
    pub extended_l2: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            compression_type: CompressionType::Zlib,
            encrypt: EncryptOptions::default(),
            data_file: None,
            data_file_raw: false,
            extended_l2: false,
        }
    }
}

/// qemu's words for a cluster size out of range.
pub const CLUSTER_SIZE_RULE: &str = "Cluster size must be a power of two between 512 and 2048k";
/// qemu's words for a refcount width it does not take.
pub const REFCOUNT_WIDTH_RULE: &str =
    "Refcount width must be a power of two and may not exceed 64 bits";

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "true" | "yes" | "y" => Ok(true),
        "off" | "false" | "no" | "n" => Ok(false),
        _ => Err(Error::invalid(format!(
            "parameter '{key}' expects 'on' or 'off', got '{v}'"
        ))),
    }
}

impl CreateOptions {
    /// Apply one qemu-img `-o key=value` option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if self.encrypt.set(key, value)? {
            return Ok(());
        }
        match key {
            "size" => self.size = crate::size::parse_size(value)?,
            "cluster_size" => self.cluster_size = crate::size::parse_size(value)?,
            "compat" => {
                self.version = match value {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Parameter 'version' does not accept value '{value}'"
                        )))
                    }
                }
            }
            "refcount_bits" => {
                self.refcount_bits = value
                    .parse()
                    .map_err(|_| Error::invalid(format!("invalid refcount_bits '{value}'")))?
            }
            "lazy_refcounts" => self.lazy_refcounts = parse_bool(key, value)?,
            "preallocation" => {
                self.preallocation = value.parse().map_err(|_| {
                    Error::invalid(format!(
                        "Parameter 'preallocation' does not accept value '{value}'"
                    ))
                })?
            }
            "backing_file" => self.backing_file = Some(value.to_string()),
            "backing_fmt" => self.backing_format = Some(value.to_string()),
            "compression_type" => {
                self.compression_type = match value {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Parameter 'compression-type' does not accept value '{value}'"
                        )))
                    }
                }
            }
            "data_file" => self.data_file = Some(value.to_string()),
            "data_file_raw" => self.data_file_raw = parse_bool(key, value)?,
            "extended_l2" => self.extended_l2 = parse_bool(key, value)?,
            "encryption" | "encrypt.format" => {
                if value == "off" || value == "false" {
                    return Ok(());
                }
                return Err(Error::unsupported(format!("qcow2 option '{key}'")));
            }
            _ => {
                return Err(Error::invalid(format!(
                    "invalid parameter '{key}' for qcow2"
                )))
            }
        }
        Ok(())
    }

    /// Check the combination of options.
    pub fn validate(&self) -> Result<()> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two()
            || !(1u64 << MIN_CLUSTER_BITS..=1u64 << MAX_CLUSTER_BITS).contains(&cs)
        {
            return Err(Error::invalid(CLUSTER_SIZE_RULE));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return Err(Error::invalid(REFCOUNT_WIDTH_RULE));
        }
        if self.version == 2 && self.refcount_bits != 16 {
            return Err(Error::invalid("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"));
        }
        if self.version == 2 && self.lazy_refcounts {
            return Err(Error::invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if self.version == 2 && self.compression_type != CompressionType::Zlib {
            return Err(Error::invalid(
                "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)",
            ));
        }
        if self.extended_l2 && cs < 1 << super::subcluster::MIN_CLUSTER_BITS {
            return Err(Error::invalid(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
        if self.extended_l2 && self.version == 2 {
            return Err(Error::invalid("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if self.data_file_raw && self.data_file.is_none() {
            return Err(Error::invalid("data-file-raw requires data-file"));
        }
        if self.data_file.is_some() && self.version == 2 {
            return Err(Error::invalid("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if self.data_file_raw && self.backing_file.is_some() {
            return Err(Error::invalid(
                "Backing file and data-file-raw cannot be used at the same time",
            ));
        }
        if self.backing_file.is_some()
            && self.preallocation != Preallocation::Off
            && !self.extended_l2
        {
            return Err(Error::invalid("backing file and preallocation can only be used at the same time if extended_l2 is on"));
        }
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid("image size is too large"));
        }
        self.encrypt.validate()?;
        let l1 = header::l1_entries_for(
            self.size.next_multiple_of(512),
            cs.trailing_zeros(),
            self.extended_l2,
        )
        .ok_or_else(|| Error::invalid("image size is too large for this cluster size"))?;
        if l1 * 8 > MAX_L1_BYTES {
            return Err(Error::invalid(
                "image size is too large for this cluster size",
            ));
        }
        Ok(())
    }
}

/// Where the metadata of a new image goes: cluster 0 the header, then the refcount table,
/// the refcount blocks and the L1 table.
struct Layout {
    cluster_size: u64,
    refcount_order: u32,
    /// Virtual size, rounded up to whole sectors.
    size: u64,
    /// L1 entries.
    l1_size: u64,
    /// Refcount entries per refcount block.
    rb_entries: u64,
    /// Clusters of the refcount table.
    rt_clusters: u64,
    /// Refcount blocks.
    blocks: u64,
    rt_offset: u64,
    blocks_offset: u64,
    l1_offset: u64,
    /// Clusters in use: header, refcount table, refcount blocks and L1 table.
    total: u64,
}

impl Layout {
    /// The layout for `opts` (already validated).
    fn plan(opts: &CreateOptions) -> Layout {
        let cs = opts.cluster_size;
        let cluster_bits = cs.trailing_zeros();
        let size = opts.size.next_multiple_of(512);
        let l1_size = header::l1_entries_for(size, cluster_bits, opts.extended_l2).unwrap_or(0);
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let rb_entries = cs * 8 / u64::from(opts.refcount_bits);
        // Fixed point: header + refcount table + refcount blocks + L1, all described by the
        // blocks.
        let (mut rt_clusters, mut blocks) = (1u64, 1u64);
        loop {
            let total = 1 + rt_clusters + blocks + l1_clusters;
            let b = total.div_ceil(rb_entries);
            let r = (b * 8).div_ceil(cs).max(1);
            if b == blocks && r == rt_clusters {
                break;
            }
            (blocks, rt_clusters) = (b.max(blocks), r.max(rt_clusters));
        }
        let rt_offset = cs;
        let blocks_offset = rt_offset + rt_clusters * cs;
        Layout {
            cluster_size: cs,
            refcount_order: opts.refcount_bits.trailing_zeros(),
            size,
            l1_size,
            rb_entries,
            rt_clusters,
            blocks,
            rt_offset,
            blocks_offset,
            l1_offset: blocks_offset + blocks * cs,
            total: 1 + rt_clusters + blocks + l1_clusters,
        }
    }

    /// The header of the new image (see [`new_header`]).
    fn header(&self, opts: &CreateOptions) -> Header {
        new_header(
            opts,
            self.l1_size,
            self.l1_offset,
            self.rt_offset,
            self.rt_clusters,
        )
    }

    /// Empty `storage`, then write the refcount table and blocks, size the file to the end
    /// of the L1 table, and write the header last: until it is written the file is not a
    /// qcow2 image.
    fn write<S: Storage>(&self, storage: &S, header_bytes: &[u8]) -> Result<()> {
        let io = |e| Error::io("qcow2: creating the image", e);
        let cs = self.cluster_size;
        if storage.len().map_err(io)? > 0 {
            storage.set_len(0).map_err(io)?;
        }
        // Refcount table and blocks.
        let mut rt = vec![0u8; (self.rt_clusters * cs) as usize];
        for b in 0..self.blocks {
            BigEndian::write_u64(&mut rt[(b * 8) as usize..], self.blocks_offset + b * cs);
        }
        let mut blocks_buf = vec![0u8; (self.blocks * cs) as usize];
        for c in 0..self.total {
            let (b, i) = (c / self.rb_entries, c % self.rb_entries);
            let block = &mut blocks_buf[(b * cs) as usize..((b + 1) * cs) as usize];
            write_refcount(block, self.refcount_order, i as usize, 1);
        }
        storage.write_at(&rt, self.rt_offset).map_err(io)?;
        storage
            .write_at(&blocks_buf, self.blocks_offset)
            .map_err(io)?;
        let l1_bytes = self.l1_size * 8;
        storage
            .set_len(
                self.l1_offset
                    + l1_bytes
                        .next_multiple_of(512)
                        .max(if l1_bytes == 0 { 0 } else { 512 }),
            )
            .map_err(io)?;
        storage.flush().map_err(io)?;
        storage.write_at(header_bytes, 0).map_err(io)?;
        storage.flush().map_err(io)
    }
}

/// The header of a new image whose L1 table (`l1_size` entries) is at `l1_offset` and
/// refcount table (`rt_clusters` clusters) at `rt_offset`: the options' features, a backing
/// format extension if one is given and, in version 3, the feature name table. Shared by
/// [`create`] and the sequential layout.
pub(super) fn new_header(
    opts: &CreateOptions,
    l1_size: u64,
    l1_offset: u64,
    rt_offset: u64,
    rt_clusters: u64,
) -> Header {
    let mut h = Header {
        version: opts.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: opts.cluster_size.trailing_zeros(),
        size: opts.size.next_multiple_of(512),
        crypt_method: 0,
        l1_size: l1_size as u32,
        l1_table_offset: l1_offset,
        refcount_table_offset: rt_offset,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: if opts.lazy_refcounts {
            header::compat::LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: opts.refcount_bits.trailing_zeros(),
        header_length: if opts.version == 2 {
            V2_HEADER_LEN
        } else {
            header::V3_WITH_COMPRESSION_LEN
        },
        compression_type: opts.compression_type,
        unknown_header_tail: Vec::new(),
        extensions: Vec::new(),
        backing_file: opts.backing_file.clone(),
    };
    if opts.compression_type != CompressionType::Zlib {
        h.incompatible_features |= header::incompat::COMPRESSION_TYPE;
    }
    if opts.extended_l2 {
        h.incompatible_features |= header::incompat::EXTENDED_L2;
    }
    if let Some(name) = &opts.data_file {
        h.incompatible_features |= header::incompat::EXTERNAL_DATA;
        if opts.data_file_raw {
            h.autoclear_features |= header::autoclear::RAW_EXTERNAL;
        }
        h.extensions.push(header::Extension {
            kind: header::ext::DATA_FILE,
            data: name.as_bytes().to_vec(),
        });
    }
    if let Some(fmt) = &opts.backing_format {
        h.extensions.push(header::Extension {
            kind: header::ext::BACKING_FORMAT,
            data: fmt.as_bytes().to_vec(),
        });
    }
    if opts.version >= 3 {
        h.extensions.push(header::Extension {
            kind: header::ext::FEATURE_TABLE,
            data: header::default_feature_table(),
        });
    }
    h
}

/// Create a qcow2 image in `storage` (whose old contents are discarded) and open it.
pub fn create<S: Storage>(storage: S, opts: &CreateOptions) -> Result<Qcow2<S>> {
    create_with_data_file(storage, opts, None)
}

/// [`create`], with the external data file `data` (storage and the name `map` shows) that
/// `opts.data_file` names, already created empty.
pub fn create_with_data_file<S: Storage>(
    storage: S,
    opts: &CreateOptions,
    data: Option<(std::sync::Arc<dyn Storage>, String)>,
) -> Result<Qcow2<S>> {
    opts.validate()?;
    opts.encrypt.check_secret()?;
    let layout = Layout::plan(opts);
    let header_bytes = layout.header(opts).write()?;
    layout.write(&storage, &header_bytes)?;
    let mut img = Qcow2::open(storage, OpenOptions::default())?;
    if let Some((st, name)) = data {
        st.set_len(layout.size)
            .map_err(|e| Error::io("qcow2: sizing the data file", e))?;
        img.attach_data_file(st, name);
    }
    if opts.encrypt.format.is_some() {
        img.enable_encryption(&opts.encrypt)?;
    }
    let prealloc = match (opts.data_file_raw, opts.preallocation) {
        // A raw data file maps every cluster from the start, as QEMU does.
        (true, Preallocation::Off) => Preallocation::Metadata,
        (_, p) => p,
    };
    if prealloc != Preallocation::Off {
        img.preallocate(prealloc)?;
    }
    Ok(img)
}

impl<S: Storage> Qcow2<S> {
    /// Allocate every guest cluster (and L2 table) of the image, as qemu-img's
    /// `preallocation=metadata|falloc|full` do. Data clusters read as zeros.
    pub fn preallocate(&mut self, mode: Preallocation) -> Result<()> {
        let cs = self.geo.cluster_size;
        let size = self.virtual_size();
        let clusters = size.div_ceil(cs);
        let per_table = self.geo.l2_entries();
        let mut gc = 0;
        while gc < clusters {
            let l1_index = gc >> self.geo.l2_bits;
            let n = per_table.min(clusters - gc).min(self.max_alloc_run());
            let l2_off = self.l2_for_write(l1_index)?;
            let host = match self.has_external_data() {
                true => gc * cs,
                false => self.alloc_clusters(n)?,
            };
            for k in 0..n {
                if self.l2_words(gc + k)? == (0, 0) {
                    let e = self.preallocated_entry(host + k * cs, false);
                    self.set_l2_entry(l2_off, (gc + k) & (per_table - 1), e)?;
                }
            }
            self.preallocate_data(mode, host, n * cs)?;
            gc += n;
        }
        self.flush_metadata()
    }
}

impl<S: Storage> Qcow2<S> {
    /// The entry of a guest cluster preallocated at `host` (reading as zeros with `zero`).
    /// With extended L2 entries its subclusters stay unallocated, as QEMU leaves them: the
    /// backing file, if any, still shows through until a write.
    pub(crate) fn preallocated_entry(&self, host: u64, zero: bool) -> L2Entry {
        let copied = true;
        match (zero, self.geo.extended_l2) {
            (true, _) => L2Entry::Zero {
                host: Some(host),
                copied,
            },
            (false, false) => L2Entry::Normal { host, copied },
            (false, true) => L2Entry::Sub {
                host: Some(host),
                copied,
                bitmap: 0,
            },
        }
    }

    /// Give `[host, host + len)` of the file holding guest data the space `mode` asks for.
    fn preallocate_data(&self, mode: Preallocation, host: u64, len: u64) -> Result<()> {
        let io = |e| Error::io("qcow2: preallocating", e);
        let file: &dyn Storage = match self.data_storage() {
            Some(d) => d,
            None => &self.storage,
        };
        match mode {
            Preallocation::Off => {}
            Preallocation::Metadata => {
                if host + len > file.len().map_err(io)? {
                    file.set_len(host + len).map_err(io)?;
                }
            }
            Preallocation::Falloc => file.allocate(host, len).map_err(io)?,
            Preallocation::Full => crate::storage::write_zero_bytes(file, host, len).map_err(io)?,
        }
        Ok(())
    }
}

use crate::create_opts::{Kind, OptionDesc, SIZE};

const BACKING_FILE: OptionDesc =
    OptionDesc::new("backing_file", Kind::Str, "File name of a base image");
const BACKING_FMT: OptionDesc =
    OptionDesc::new("backing_fmt", Kind::Str, "Image format of the base image");
const COMPAT: OptionDesc = OptionDesc::new(
    "compat",
    Kind::Str,
    "Compatibility level (v2 [0.10] or v3 [1.1])",
);
const DATA_FILE: OptionDesc =
    OptionDesc::new("data_file", Kind::Str, "File name of an external data file");
const DATA_FILE_RAW: OptionDesc = OptionDesc::new(
    "data_file_raw",
    Kind::Bool,
    "The external data file must stay valid as a raw image",
);
const KEY_SECRET: OptionDesc = OptionDesc::new(
    "encrypt.key-secret",
    Kind::Str,
    "ID of secret providing qcow AES key or LUKS passphrase",
);
const ITER_TIME: OptionDesc = OptionDesc::new(
    "encrypt.iter-time",
    Kind::Number,
    "Time to spend in PBKDF in milliseconds",
);
const LAZY_REFCOUNTS: OptionDesc =
    OptionDesc::new("lazy_refcounts", Kind::Bool, "Postpone refcount updates");
const REFCOUNT_BITS: OptionDesc = OptionDesc::new(
    "refcount_bits",
    Kind::Number,
    "Width of a reference count entry in bits",
);

/// qcow2's creation options in qemu-img's order.
pub const CREATE_OPTIONS: &[OptionDesc] = &[
    OptionDesc::new(
        "encryption",
        Kind::Bool,
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    ),
    OptionDesc::new(
        "encrypt.format",
        Kind::Str,
        "Encrypt the image, format choices: 'aes', 'luks'",
    ),
    KEY_SECRET,
    OptionDesc::new(
        "encrypt.cipher-alg",
        Kind::Str,
        "Name of encryption cipher algorithm",
    ),
    OptionDesc::new(
        "encrypt.cipher-mode",
        Kind::Str,
        "Name of encryption cipher mode",
    ),
    OptionDesc::new(
        "encrypt.ivgen-alg",
        Kind::Str,
        "Name of IV generator algorithm",
    ),
    OptionDesc::new(
        "encrypt.ivgen-hash-alg",
        Kind::Str,
        "Name of IV generator hash algorithm",
    ),
    OptionDesc::new(
        "encrypt.hash-alg",
        Kind::Str,
        "Name of encryption hash algorithm",
    ),
    ITER_TIME,
    OptionDesc::new("cluster_size", Kind::Size, "qcow2 cluster size").with_default("65536"),
    OptionDesc::new("extended_l2", Kind::Bool, "Extended L2 tables").with_default("off"),
    OptionDesc::new(
        "preallocation",
        Kind::Str,
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    OptionDesc::new(
        "compression_type",
        Kind::Str,
        "Compression method used for image cluster compression",
    )
    .with_default("zlib"),
    SIZE,
    COMPAT,
    BACKING_FILE,
    BACKING_FMT,
    DATA_FILE,
    DATA_FILE_RAW,
    LAZY_REFCOUNTS.with_default("off"),
    REFCOUNT_BITS.with_default("16"),
];

/// The options `amend` takes, as qemu-img lists them.
pub const AMEND_OPTIONS: &[OptionDesc] = &[
    BACKING_FILE,
    BACKING_FMT,
    COMPAT,
    DATA_FILE,
    DATA_FILE_RAW,
    ITER_TIME,
    OptionDesc::new(
        "encrypt.keyslot",
        Kind::Number,
        "Select a single keyslot to modify explicitly",
    ),
    OptionDesc::new(
        "encrypt.new-secret",
        Kind::Str,
        "New secret to set in the matching keyslots. Empty string to erase",
    ),
    OptionDesc::new(
        "encrypt.old-secret",
        Kind::Str,
        "Select all keyslots that match this password",
    ),
    OptionDesc::new(
        "encrypt.state",
        Kind::Str,
        "Select new state of affected keyslots (active/inactive)",
    ),
    LAZY_REFCOUNTS,
    REFCOUNT_BITS,
    SIZE,
];
