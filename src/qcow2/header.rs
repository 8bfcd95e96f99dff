//! The qcow2 header, its extensions and the backing file name: parse, validate, write.
//!
//! [`field`] (the module [`super::header_fields`]) is the one table of the fixed header
//! fields: name, offset and width, for version 2 and the version 3 additions.
//! [`Header::parse`] reads the fixed fields through it (rather than with a nom tuple, so
//! that the layout is written down once) and checks each against [`super::limits`];
//! [`Header::write`] lays them out through it; code that rewrites a few header bytes in
//! place names them by their [`Field`]. Header
//! extensions are kept as raw `(type, bytes)` pairs in file order so that any extension,
//! known or not, is written back byte for byte; typed accessors decode the ones vdisk uses.

/// The table of fixed header fields ([`super::header_fields`]).
pub use super::header_fields as field;
pub use super::header_fields::Field;
use super::limits::*;
use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

/// `QFI\xfb`.
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be stale (lazy refcounts after an unclean shutdown).
    pub const DIRTY: u64 = 1 << 0;
    /// Metadata is known to be corrupt; writes are refused.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external file.
    pub const EXTERNAL_DATA: u64 = 1 << 2;
    /// The compression_type header field is not zlib.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// L2 entries are 128 bits with subcluster bitmaps.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// The bits this implementation understands.
    pub const SUPPORTED: u64 = DIRTY | CORRUPT | EXTERNAL_DATA | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Compatible feature bits.
pub mod compat {
    /// Lazy refcounts: refcounts may be updated late, guarded by the dirty bit.
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Autoclear feature bits.
pub mod autoclear {
    /// The bitmaps extension is consistent with the image.
    pub const BITMAPS: u64 = 1 << 0;
    /// The external data file is a raw image.
    pub const RAW_EXTERNAL: u64 = 1 << 1;
}

/// Header extension types.
pub mod ext {
    /// Terminates the extension list.
    pub const END: u32 = 0;
    /// Backing file format name.
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    /// Feature name table.
    pub const FEATURE_TABLE: u32 = 0x6803_f857;
    /// Persistent dirty bitmaps directory.
    pub const BITMAPS: u32 = 0x2385_2875;
    /// Full disk encryption header pointer.
    pub const CRYPTO: u32 = 0x0537_be77;
    /// External data file name.
    pub const DATA_FILE: u32 = 0x4441_5441;
}

/// Compression methods recorded in the compression_type header byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Raw deflate (the default, and the only one before the field existed).
    #[default]
    Zlib,
    /// Zstandard.
    Zstd,
}

impl CompressionType {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// One header extension as stored: its type and its unpadded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Extension type (see [`ext`]).
    pub kind: u32,
    /// The data, without the padding to 8 bytes.
    pub data: Vec<u8>,
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Name, without trailing NULs.
    pub name: String,
}

/// The qcow2 header as read from (or to be written to) the start of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
    /// Header bytes past the fields vdisk knows (up to `header_length`), kept as they are.
    pub unknown_header_tail: Vec<u8>,
    /// Header extensions in file order.
    pub extensions: Vec<Extension>,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
}

/// Size of the fields vdisk parses in a v3 header that has a compression_type byte (112:
/// the byte is padded to a multiple of 8), and the header_length of the v3 headers it
/// writes.
pub const V3_WITH_COMPRESSION_LEN: u32 = field::COMPRESSION_TYPE.end().next_multiple_of(8) as u32;

fn short(structure: &'static str, at: Field) -> Error {
    Error::corrupt(structure, at.file_offset(), "structure is truncated")
}

/// The structure name in errors about the fixed header fields.
const HEADER: &str = "qcow2 header";

/// The compression_type byte of a header longer than 104 bytes.
fn parse_compression_type(buf: &[u8]) -> Result<CompressionType> {
    let at = field::COMPRESSION_TYPE;
    match at.read(buf).ok_or_else(|| short(HEADER, at))? {
        0 => Ok(CompressionType::Zlib),
        1 => Ok(CompressionType::Zstd),
        other => Err(Error::corrupt(
            HEADER,
            at.file_offset(),
            format!("unknown compression type {other}"),
        )),
    }
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parse and validate a header from the first cluster of the file (`buf` should hold
    /// at least the first `min(file_len, 2 MiB)` bytes). `file_len` is the image file length.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        let mut h = Header::parse_v2_fields(buf)?;
        if h.version == 3 {
            h.parse_v3_fields(buf)?;
        }
        h.validate(file_len)?;
        // QEMU keeps the virtual size in 512-byte sectors (`total_sectors = size / 512`):
        // a size field that is not a multiple of 512 is rounded down, for reading and for
        // every header it writes back. (Validation above uses the field as stored, as
        // QEMU's does.)
        h.size &= !(SECTOR_SIZE - 1);
        h.parse_extensions(buf)?;
        h.parse_backing_name(buf)?;
        Ok(h)
    }

    /// The fields every version has, after checking the magic, the version and the
    /// cluster bits; the version 3 fields get their version 2 defaults.
    fn parse_v2_fields(buf: &[u8]) -> Result<Header> {
        use field::*;
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(short(HEADER, MAGIC));
        }
        let u32_at = |f: Field| f.get(buf) as u32;
        let magic = u32_at(MAGIC);
        let version = u32_at(VERSION);
        let cluster_bits = u32_at(CLUSTER_BITS);
        if magic != QCOW2_MAGIC {
            return Err(Error::not_format("Image is not in qcow2 format"));
        }
        if version != 2 && version != 3 {
            return Err(Error::unsupported(format!("qcow2 version {version}")));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::corrupt(
                HEADER,
                CLUSTER_BITS.file_offset(),
                format!(
                    "cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
                ),
            ));
        }
        Ok(Header {
            version,
            backing_file_offset: BACKING_FILE_OFFSET.get(buf),
            backing_file_size: u32_at(BACKING_FILE_SIZE),
            cluster_bits,
            size: SIZE.get(buf),
            crypt_method: u32_at(CRYPT_METHOD),
            l1_size: u32_at(L1_SIZE),
            l1_table_offset: L1_TABLE_OFFSET.get(buf),
            refcount_table_offset: REFCOUNT_TABLE_OFFSET.get(buf),
            refcount_table_clusters: u32_at(REFCOUNT_TABLE_CLUSTERS),
            nb_snapshots: u32_at(NB_SNAPSHOTS),
            snapshots_offset: SNAPSHOTS_OFFSET.get(buf),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: CompressionType::Zlib,
            unknown_header_tail: Vec::new(),
            extensions: Vec::new(),
            backing_file: None,
        })
    }

    /// The version 3 additions: feature bits, refcount order, header length (checked
    /// against the cluster and the file), and the compression type and unknown tail when
    /// the header is longer than 104 bytes.
    fn parse_v3_fields(&mut self, buf: &[u8]) -> Result<()> {
        use field::*;
        if buf.len() < V3_MIN_HEADER_LEN as usize {
            return Err(short(HEADER, INCOMPATIBLE_FEATURES));
        }
        self.incompatible_features = INCOMPATIBLE_FEATURES.get(buf);
        self.compatible_features = COMPATIBLE_FEATURES.get(buf);
        self.autoclear_features = AUTOCLEAR_FEATURES.get(buf);
        self.refcount_order = REFCOUNT_ORDER.get(buf) as u32;
        let hlen = HEADER_LENGTH.get(buf) as u32;
        self.header_length = hlen;
        if hlen < V3_MIN_HEADER_LEN {
            return Err(Error::corrupt(
                HEADER,
                HEADER_LENGTH.file_offset(),
                format!("header_length {hlen} is below 104"),
            ));
        }
        if u64::from(hlen) > self.cluster_size() {
            return Err(Error::corrupt(
                HEADER,
                HEADER_LENGTH.file_offset(),
                format!("header_length {hlen} exceeds the cluster size"),
            ));
        }
        if hlen as usize > buf.len() {
            return Err(Error::corrupt(
                HEADER,
                HEADER_LENGTH.file_offset(),
                "header extends past the end of the file",
            ));
        }
        if hlen > V3_MIN_HEADER_LEN {
            self.compression_type = parse_compression_type(buf)?;
            let known = V3_WITH_COMPRESSION_LEN.min(hlen) as usize;
            self.unknown_header_tail = buf[known..hlen as usize].to_vec();
        }
        Ok(())
    }

    /// Check the parsed fields against the format's limits and the file, one concern at a
    /// time, in the order qemu-img reports them.
    fn validate(&self, file_len: u64) -> Result<()> {
        self.validate_refcount_order_crypt_and_size()?;
        self.validate_backing_name_location()?;
        self.validate_l1_table(file_len)?;
        self.validate_refcount_table(file_len)?;
        self.validate_snapshot_table()?;
        self.validate_feature_bits()
    }

    /// Refcount order (at most 6; 4 in version 2), a known encryption method, a virtual size within
    /// [`MAX_VIRTUAL_SIZE`].
    fn validate_refcount_order_crypt_and_size(&self) -> Result<()> {
        if self.refcount_order > MAX_REFCOUNT_ORDER {
            return Err(Error::corrupt(
                HEADER,
                field::REFCOUNT_ORDER.file_offset(),
                format!("refcount_order {} exceeds 6", self.refcount_order),
            ));
        }
        if self.version == 2 && self.refcount_order != 4 {
            return Err(Error::corrupt(
                HEADER,
                field::REFCOUNT_ORDER.file_offset(),
                "version 2 images must use 16-bit refcounts",
            ));
        }
        if self.crypt_method > 2 {
            return Err(Error::unsupported(format!(
                "qcow2 encryption method {} (known: 1, AES; 2, LUKS)",
                self.crypt_method
            )));
        }
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(Error::corrupt(
                HEADER,
                field::SIZE.file_offset(),
                format!("virtual size {} is too large", self.size),
            ));
        }
        Ok(())
    }

    /// The backing file name, if there is one: within [`MAX_BACKING_NAME`], inside the
    /// first cluster and after the header.
    fn validate_backing_name_location(&self) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        if self.backing_file_size > MAX_BACKING_NAME {
            return Err(Error::corrupt(
                HEADER,
                field::BACKING_FILE_SIZE.file_offset(),
                format!(
                    "backing file name length {} exceeds {MAX_BACKING_NAME}",
                    self.backing_file_size
                ),
            ));
        }
        let end = self
            .backing_file_offset
            .saturating_add(u64::from(self.backing_file_size));
        if self.backing_file_offset > cs || end > cs {
            return Err(Error::corrupt(
                HEADER,
                field::BACKING_FILE_OFFSET.file_offset(),
                "backing file name lies outside the first cluster",
            ));
        }
        if self.backing_file_offset < u64::from(self.header_length) {
            return Err(Error::corrupt(
                HEADER,
                field::BACKING_FILE_OFFSET.file_offset(),
                "backing file name overlaps the header",
            ));
        }
        Ok(())
    }

    /// L1 table: big enough for the virtual size, within limits, inside the file.
    fn validate_l1_table(&self, file_len: u64) -> Result<()> {
        let needed = self.l1_entries_needed().ok_or_else(|| {
            Error::corrupt(
                HEADER,
                field::SIZE.file_offset(),
                "virtual size needs an L1 table larger than the format allows",
            )
        })?;
        if u64::from(self.l1_size) < needed {
            return Err(Error::corrupt(
                "L1 table",
                self.l1_table_offset,
                format!(
                    "{} entries cannot map a virtual size of {} bytes",
                    self.l1_size, self.size
                ),
            ));
        }
        validate_table(
            "L1 table",
            self.l1_table_offset,
            u64::from(self.l1_size),
            8,
            MAX_L1_BYTES,
            self.cluster_size(),
            file_len,
        )
    }

    /// Refcount table: at least one cluster, within limits, inside the file.
    fn validate_refcount_table(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let rt_clusters = u64::from(self.refcount_table_clusters);
        if rt_clusters == 0 {
            return Err(Error::corrupt(
                "refcount table",
                self.refcount_table_offset,
                "refcount table is empty",
            ));
        }
        validate_table(
            "refcount table",
            self.refcount_table_offset,
            rt_clusters.saturating_mul(cs) / 8,
            8,
            MAX_REFTABLE_BYTES,
            cs,
            file_len,
        )
    }

    /// Snapshot table: at most [`MAX_SNAPSHOTS`] entries, cluster aligned when present.
    fn validate_snapshot_table(&self) -> Result<()> {
        if u64::from(self.nb_snapshots) > MAX_SNAPSHOTS {
            return Err(Error::corrupt(
                "snapshot table",
                self.snapshots_offset,
                format!(
                    "{} snapshots exceed the limit of {MAX_SNAPSHOTS}",
                    self.nb_snapshots
                ),
            ));
        }
        if self.nb_snapshots > 0 && self.snapshots_offset % self.cluster_size() != 0 {
            return Err(Error::corrupt(
                "snapshot table",
                self.snapshots_offset,
                "offset is not cluster aligned",
            ));
        }
        Ok(())
    }

    /// Incompatible features QEMU knows but vdisk does not implement are named; the
    /// compression-type bit must agree with the compression_type field. (Other unknown
    /// bits are reported by name once the feature table is read.)
    fn validate_feature_bits(&self) -> Result<()> {
        let unknown = self.incompatible_features & !incompat::SUPPORTED;
        if unknown != 0 && unknown & (incompat::EXTERNAL_DATA | incompat::EXTENDED_L2) == unknown {
            // Known to QEMU but not implemented here: say which.
            let mut names = Vec::new();
            if unknown & incompat::EXTERNAL_DATA != 0 {
                names.push("external data file");
            }
            if unknown & incompat::EXTENDED_L2 != 0 {
                names.push("extended L2 entries");
            }
            return Err(Error::unsupported(format!(
                "qcow2 feature: {}",
                names.join(", ")
            )));
        }
        if (self.incompatible_features & incompat::COMPRESSION_TYPE != 0)
            != (self.compression_type != CompressionType::Zlib)
        {
            return Err(Error::corrupt(
                HEADER,
                field::COMPRESSION_TYPE.file_offset(),
                "compression type does not match the compression-type feature bit",
            ));
        }
        Ok(())
    }

    /// L1 entries needed to map the virtual size (None if it would overflow).
    pub fn l1_entries_needed(&self) -> Option<u64> {
        let extended = self.incompatible_features & incompat::EXTENDED_L2 != 0;
        l1_entries_for(self.size, self.cluster_bits, extended)
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        const S: &str = "qcow2 header extension";
        let cs = self.cluster_size() as usize;
        let start = self.header_length as usize;
        let end = if self.backing_file_offset != 0 {
            self.backing_file_offset as usize
        } else {
            cs
        }
        .min(buf.len());
        let mut off = start;
        while off + 8 <= end {
            let kind = BigEndian::read_u32(&buf[off..]);
            let len = BigEndian::read_u32(&buf[off + 4..]) as usize;
            let data_start = off + 8;
            // The length is checked before the type, as QEMU does: even an end marker
            // whose length runs past the area makes the header invalid.
            if len > end - data_start {
                return Err(Error::corrupt(
                    S,
                    off as u64,
                    format!(
                        "extension {kind:#x} of {len} bytes runs past the end of the header area"
                    ),
                ));
            }
            if kind == ext::END {
                return self.check_unknown_incompat();
            }
            self.extensions.push(Extension {
                kind,
                data: buf[data_start..data_start + len].to_vec(),
            });
            off = data_start + len.div_ceil(8) * 8;
        }
        // No end marker inside the area: QEMU treats the end of the area as the end.
        self.check_unknown_incompat()
    }

    fn check_unknown_incompat(&self) -> Result<()> {
        let unknown = self.incompatible_features & !incompat::SUPPORTED;
        if unknown == 0 {
            return Ok(());
        }
        let names = self.feature_names();
        let mut parts = Vec::new();
        for bit in 0..64u8 {
            if unknown & (1 << bit) != 0 {
                match names.iter().find(|f| f.kind == 0 && f.bit == bit) {
                    Some(f) => parts.push(f.name.clone()),
                    None => parts.push(format!("Unknown incompatible feature: bit {bit}")),
                }
            }
        }
        Err(Error::unsupported(format!(
            "qcow2 feature: {}",
            parts.join(", ")
        )))
    }

    fn parse_backing_name(&mut self, buf: &[u8]) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let start = self.backing_file_offset as usize;
        let end = start + self.backing_file_size as usize;
        if end > buf.len() {
            return Err(Error::corrupt(
                "backing file name",
                start as u64,
                "name lies past the end of the file",
            ));
        }
        let name = String::from_utf8(buf[start..end].to_vec()).map_err(|_| {
            Error::corrupt("backing file name", start as u64, "name is not valid UTF-8")
        })?;
        self.backing_file = Some(name);
        Ok(())
    }

    /// The first extension of type `kind`.
    pub fn extension(&self, kind: u32) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.kind == kind)
    }

    /// Replace (or add, or with `None` remove) the extension of type `kind`.
    pub fn set_extension(&mut self, kind: u32, data: Option<Vec<u8>>) {
        let pos = self.extensions.iter().position(|e| e.kind == kind);
        match (pos, data) {
            (Some(i), Some(d)) => self.extensions[i].data = d,
            (Some(i), None) => {
                self.extensions.remove(i);
            }
            (None, Some(d)) => self.extensions.push(Extension { kind, data: d }),
            (None, None) => {}
        }
    }

    /// The backing format named by the backing-format extension.
    pub fn backing_format(&self) -> Option<String> {
        self.extension(ext::BACKING_FORMAT).map(|e| {
            String::from_utf8_lossy(&e.data)
                .trim_end_matches('\0')
                .to_string()
        })
    }

    /// The external data file named by the data-file extension (when the external-data
    /// feature bit is set).
    pub fn data_file(&self) -> Option<String> {
        if self.incompatible_features & incompat::EXTERNAL_DATA == 0 {
            return None;
        }
        self.extension(ext::DATA_FILE).map(|e| {
            String::from_utf8_lossy(&e.data)
                .trim_end_matches('\0')
                .to_string()
        })
    }

    /// Whether the external data file is kept a valid raw image (`data_file_raw`).
    pub fn data_file_raw(&self) -> bool {
        self.incompatible_features & incompat::EXTERNAL_DATA != 0
            && self.autoclear_features & autoclear::RAW_EXTERNAL != 0
    }

    /// Decode the feature name table (malformed trailing bytes are ignored).
    pub fn feature_names(&self) -> Vec<FeatureName> {
        let Some(e) = self.extension(ext::FEATURE_TABLE) else {
            return Vec::new();
        };
        e.data
            .chunks_exact(48)
            .map(|c| FeatureName {
                kind: c[0],
                bit: c[1],
                name: String::from_utf8_lossy(&c[2..])
                    .trim_end_matches('\0')
                    .to_string(),
            })
            .collect()
    }

    /// Encode the header, its extensions and the backing name into one buffer of at most
    /// one cluster. Recomputes `header_length` for v3 and the backing name's position.
    pub fn write(&mut self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let fixed_len = if self.version == 2 {
            V2_HEADER_LEN as usize
        } else {
            V3_WITH_COMPRESSION_LEN as usize + self.unknown_header_tail.len()
        };
        if self.version == 3 {
            self.header_length = if self.unknown_header_tail.is_empty() {
                V3_WITH_COMPRESSION_LEN
            } else {
                fixed_len as u32
            };
        }
        let backing = self.backing_file.clone().unwrap_or_default();
        let ext_len = |exts: &[Extension]| -> usize {
            exts.iter().map(|e| 8 + e.data.len().div_ceil(8) * 8).sum()
        };
        if fixed_len + ext_len(&self.extensions) + 8 + backing.len() > cs {
            // The feature name table only helps people read the header: as QEMU does, it
            // is left out when it would not fit (512-byte clusters with a backing file).
            self.set_extension(ext::FEATURE_TABLE, None);
        }
        let mut len = fixed_len + ext_len(&self.extensions) + 8; // 8: the end marker
        if backing.len() > MAX_BACKING_NAME as usize {
            return Err(Error::invalid(format!(
                "backing file name is longer than {MAX_BACKING_NAME} bytes"
            )));
        }
        if self.backing_file.is_some() {
            self.backing_file_offset = len as u64;
            self.backing_file_size = backing.len() as u32;
            len += backing.len();
        } else {
            self.backing_file_offset = 0;
            self.backing_file_size = 0;
        }
        if len > cs {
            return Err(Error::invalid(
                "header, extensions and backing file name do not fit in the first cluster",
            ));
        }
        let mut b = vec![0u8; len];
        use field::*;
        MAGIC.put(&mut b, u64::from(QCOW2_MAGIC));
        VERSION.put(&mut b, u64::from(self.version));
        BACKING_FILE_OFFSET.put(&mut b, self.backing_file_offset);
        BACKING_FILE_SIZE.put(&mut b, u64::from(self.backing_file_size));
        CLUSTER_BITS.put(&mut b, u64::from(self.cluster_bits));
        SIZE.put(&mut b, self.size);
        CRYPT_METHOD.put(&mut b, u64::from(self.crypt_method));
        L1_SIZE.put(&mut b, u64::from(self.l1_size));
        L1_TABLE_OFFSET.put(&mut b, self.l1_table_offset);
        REFCOUNT_TABLE_OFFSET.put(&mut b, self.refcount_table_offset);
        REFCOUNT_TABLE_CLUSTERS.put(&mut b, u64::from(self.refcount_table_clusters));
        NB_SNAPSHOTS.put(&mut b, u64::from(self.nb_snapshots));
        SNAPSHOTS_OFFSET.put(&mut b, self.snapshots_offset);
        if self.version == 3 {
            INCOMPATIBLE_FEATURES.put(&mut b, self.incompatible_features);
            COMPATIBLE_FEATURES.put(&mut b, self.compatible_features);
            AUTOCLEAR_FEATURES.put(&mut b, self.autoclear_features);
            REFCOUNT_ORDER.put(&mut b, u64::from(self.refcount_order));
            HEADER_LENGTH.put(&mut b, u64::from(self.header_length));
            let ct = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
            COMPRESSION_TYPE.put(&mut b, ct);
            let t = V3_WITH_COMPRESSION_LEN as usize;
            b[t..t + self.unknown_header_tail.len()].copy_from_slice(&self.unknown_header_tail);
        }
        let mut off = fixed_len;
        for e in &self.extensions {
            BigEndian::write_u32(&mut b[off..], e.kind);
            BigEndian::write_u32(&mut b[off + 4..], e.data.len() as u32);
            b[off + 8..off + 8 + e.data.len()].copy_from_slice(&e.data);
            off += 8 + e.data.len().div_ceil(8) * 8;
        }
        off += 8;
        b[off..off + backing.len()].copy_from_slice(backing.as_bytes());
        Ok(b)
    }
}

/// L1 entries needed to map `size` bytes with `cluster_bits` clusters.
pub fn l1_entries_for(size: u64, cluster_bits: u32, extended_l2: bool) -> Option<u64> {
    let l2_bits = cluster_bits - if extended_l2 { 4 } else { 3 };
    let shift = cluster_bits + l2_bits;
    let per_l1 = 1u64.checked_shl(shift)?;
    Some(size.div_ceil(per_l1))
}

/// The feature name table vdisk writes into new v3 images (the names QEMU uses).
pub fn default_feature_table() -> Vec<u8> {
    let entries: [(u8, u8, &str); 8] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ];
    let mut out = Vec::with_capacity(entries.len() * 48);
    for (kind, bit, name) in entries {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header whose every fixed field holds a distinct value: write then parse agree,
    /// and each value sits where the table says.
    #[test]
    fn write_and_parse_put_every_field_where_the_table_says() {
        let mut h = Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 5 << 20,
            crypt_method: 0,
            l1_size: 3,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 2,
            snapshots_offset: 0x50000,
            incompatible_features: incompat::COMPRESSION_TYPE,
            compatible_features: compat::LAZY_REFCOUNTS,
            autoclear_features: autoclear::BITMAPS,
            refcount_order: 5,
            header_length: 0,
            compression_type: CompressionType::Zstd,
            unknown_header_tail: Vec::new(),
            extensions: Vec::new(),
            backing_file: Some("base.img".into()),
        };
        let mut b = h.write().unwrap();
        use field::*;
        let expect: [(Field, u64); 19] = [
            (MAGIC, u64::from(QCOW2_MAGIC)),
            (VERSION, 3),
            (BACKING_FILE_OFFSET, h.backing_file_offset),
            (BACKING_FILE_SIZE, 8),
            (CLUSTER_BITS, 16),
            (SIZE, 5 << 20),
            (CRYPT_METHOD, 0),
            (L1_SIZE, 3),
            (L1_TABLE_OFFSET, 0x30000),
            (REFCOUNT_TABLE_OFFSET, 0x10000),
            (REFCOUNT_TABLE_CLUSTERS, 1),
            (NB_SNAPSHOTS, 2),
            (SNAPSHOTS_OFFSET, 0x50000),
            (INCOMPATIBLE_FEATURES, incompat::COMPRESSION_TYPE),
            (COMPATIBLE_FEATURES, compat::LAZY_REFCOUNTS),
            (AUTOCLEAR_FEATURES, autoclear::BITMAPS),
            (REFCOUNT_ORDER, 5),
            (HEADER_LENGTH, u64::from(V3_WITH_COMPRESSION_LEN)),
            (COMPRESSION_TYPE, 1),
        ];
        for (f, v) in expect {
            assert_eq!(f.get(&b), v, "{}", f.name);
        }
        b.resize(0x60000, 0);
        let parsed = Header::parse(&b, b.len() as u64).unwrap();
        assert_eq!(parsed, h);
    }
}
