//! Hard limits on values read from VMDK images, in one place.
//!
//! Every size, count and offset taken from a header, a descriptor or a grain table is
//! checked against these before a buffer is sized from it, so that a hostile image costs
//! an error rather than a panic or gigabytes of memory. Where QEMU has a limit, the value
//! here is QEMU's, so that vdisk accepts the same images.

/// Bytes in a VMDK sector: every offset and size in the format is counted in these.
pub const SECTOR_SIZE: u64 = 512;

/// Largest descriptor read, whether a separate file or embedded in a sparse extent
/// (QEMU reads at most 1 MiB of it).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// Largest number of grain table entries in one grain table (`numGTEsPerGT`).
pub const MAX_GTES_PER_GT: u32 = 512;

/// Largest grain, in sectors: 1 GiB (0x200000 sectors).
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;

/// Largest grain directory, in entries (32 Mi).
pub const MAX_GD_ENTRIES: u64 = 32 * 1024 * 1024;

/// Highest hosted sparse extent version understood (version 3 is read-only unless the
/// extent is compressed, as in QEMU).
pub const MAX_SPARSE_VERSION: u32 = 3;

/// Highest descriptor `version=` understood.
pub const MAX_DESCRIPTOR_VERSION: u32 = 3;

/// Most extents one descriptor may name (each one opens a file).
pub const MAX_EXTENTS: usize = 1024;

/// Largest capacity of one extent, in sectors (8 PiB): keeps every byte offset computed
/// from a sector count well inside `u64`.
pub const MAX_EXTENT_SECTORS: u64 = 1 << 44;

/// Grain table entries hold sector offsets as `u32`: an extent file cannot grow past this.
pub const MAX_EXTENT_FILE_SECTORS: u64 = 1 << 32;

/// Grain tables kept in memory per sparse extent (each at most 2 KiB).
pub const GRAIN_TABLE_CACHE_ENTRIES: usize = 64;

/// Largest extent file name accepted from a descriptor line.
pub const MAX_EXTENT_NAME_BYTES: usize = 4096;

/// Extent files of the twoGbMaxExtent subformats hold at most this many bytes of guest data.
pub const SPLIT_EXTENT_BYTES: u64 = 0x8000_0000;

/// Grain size, in sectors, of every sparse extent vdisk creates (64 KiB, as qemu-img).
pub const CREATE_GRAIN_SECTORS: u64 = 128;

/// Grain table entries per grain table in the extents vdisk creates.
pub const CREATE_GTES_PER_GT: u32 = 512;

/// Sectors reserved for the embedded descriptor in the sparse extents vdisk creates.
pub const CREATE_DESCRIPTOR_SECTORS: u64 = 20;
