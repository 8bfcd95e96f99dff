//! The block-device trait every image format implements.
//!
//! A [`BlockDevice`] is what a guest sees: `virtual_size` bytes that can be read and
//! written at any offset and length, plus the operations a hypervisor issues (flush, write
//! zeroes, discard) and an allocation-status query. Everything above the format drivers
//! (convert, compare, commit, map, the CLI) is written once against this trait.

use crate::error::Result;
use std::sync::Arc;

/// A format's codec for whole compressed clusters, shared by the convert engine's workers
/// so that compressing and inflating run on every core while one thread does the I/O.
pub trait ClusterCodec: Send + Sync {
    /// Compress one whole cluster (zero-padded at the end of the disk). `None` means the
    /// cluster should be stored uncompressed (the result would not be smaller).
    fn compress(&self, cluster: &[u8]) -> Option<Vec<u8>>;

    /// Inflate what [`BlockDevice::read_compressed_cluster`] returned into `out` (one
    /// whole cluster). `host` names the data in errors.
    fn decompress(&self, data: &[u8], out: &mut [u8], host: u64) -> Result<()>;

    /// Whether every cluster written must be compressed (a streamOptimized VMDK), so that
    /// converting into the device compresses even without `-c`.
    fn always_compress(&self) -> bool {
        false
    }
}

/// A format's decoder of guest data as it is stored (an encrypted image's sector cipher),
/// shared by the convert engine's workers so that decrypting runs on every core while one
/// thread reads. One hook for every cipher: the format picks the cipher, the engine only
/// hands runs to [`decode`](Self::decode).
pub trait StoredCodec: Send + Sync {
    /// Decode `data` in place; `at` is the run's [`StoredRun::at`].
    fn decode(&self, at: u64, data: &mut [u8]) -> Result<()>;
}

/// A run of a buffer filled by [`BlockDevice::read_stored`] that still needs decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRun {
    /// Where the run starts in the buffer.
    pub start: usize,
    /// Its length in bytes.
    pub len: usize,
    /// What the codec derives the run's key stream from (for qcow2 LUKS: the host offset).
    pub at: u64,
}

/// The runs [`BlockDevice::read_stored`] left encoded, with their codec.
pub struct StoredRead {
    /// The decoder.
    pub codec: Arc<dyn StoredCodec>,
    /// The runs to pass through it.
    pub runs: Vec<StoredRun>,
}

/// What a guest range is backed by, as reported by [`BlockDevice::block_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated data in this layer (it may still happen to be zero).
    Data,
    /// Known to read as zeros in this layer (a zero cluster, a hole in a raw file).
    Zero,
    /// Not allocated in this layer: reads fall through to a backing image, or zeros when there
    /// is none.
    Unallocated,
}

/// One run of guest bytes with the same allocation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset of the run.
    pub start: u64,
    /// Length of the run in bytes (never 0).
    pub length: u64,
    /// What backs it.
    pub kind: ExtentKind,
    /// Where the data sits in the image file, when it is contiguous there.
    pub host_offset: Option<u64>,
    /// Whether the data is stored compressed.
    pub compressed: bool,
    /// Which layer of a backing chain answered (0 = the image itself).
    pub depth: u32,
}

impl Extent {
    /// Whether reading this run is guaranteed to return zeros (ignoring backing images).
    pub fn reads_as_zero(&self) -> bool {
        !matches!(self.kind, ExtentKind::Data)
    }
}

/// A run as `qemu-img map` reports it: the format's answer, refined by the host file.
///
/// Unlike [`Extent`], a data run keeps its host offset where the host file has a hole
/// (then `zero` is set: QEMU asks the host file too), and names the file holding it when
/// that is not the image's own (a VMDK extent file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapStatus {
    /// The run; `kind` is `Data` for every run the format maps to host bytes.
    pub extent: Extent,
    /// Reads as zeros (a zero run, or data over a host hole or past the host file's end).
    pub zero: bool,
    /// The file holding the run's data, when the format knows it.
    pub file: Option<String>,
}

impl MapStatus {
    /// The status of `extent` with nothing more known about the host file.
    pub fn from_extent(extent: Extent) -> MapStatus {
        MapStatus {
            zero: extent.reads_as_zero(),
            extent,
            file: None,
        }
    }

    /// The status of `extent` as QEMU reports a run of a format over one host file: a
    /// run of this layer (depth 0) at a host offset is refined by what `storage` says of
    /// that offset ([`with_host_extent`](Self::with_host_extent)); others are as they are.
    pub fn over_file<S: crate::storage::Storage + ?Sized>(
        extent: Extent,
        storage: &S,
    ) -> std::io::Result<MapStatus> {
        let status = MapStatus::from_extent(extent);
        match extent.host_offset {
            Some(host) if extent.depth == 0 => {
                Ok(status.with_host_extent(storage.data_extent(host)?))
            }
            _ => Ok(status),
        }
    }

    /// Refine a data run at `host` with the host file's answer `(data, n)` for that
    /// offset ([`crate::storage::Storage::data_extent`]): a hole makes it zero and ends the
    /// run where the hole ends; `n == 0` means past the end of the file, which reads zeros.
    pub fn with_host_extent(mut self, (data, n): (bool, u64)) -> MapStatus {
        if n == 0 {
            self.zero = true;
        } else {
            self.extent.length = self.extent.length.min(n);
            self.zero = !data;
        }
        self
    }
}

/// A virtual disk.
pub trait BlockDevice: Send {
    /// The format's name as qemu-img spells it ("qcow2", "raw", "vmdk").
    fn format_name(&self) -> &'static str;

    /// Guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// Fill `buf` with the guest bytes at `offset`. The range must lie inside the disk.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write `buf` at guest `offset`. The range must lie inside the disk.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;

    /// Make the guest range read as zeros, deallocating where the format allows.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Make the guest range read as zeros the way qemu's write-zeroes request does: every
    /// whole allocation unit becomes a zero unit, keeping the storage it held where this
    /// image alone owns it unless `may_unmap` allows releasing it (qemu-nbd's WRITE_ZEROES
    /// and `--detect-zeroes`). Partial units get zero bytes. The default is
    /// [`write_zeroes`](Self::write_zeroes), for formats without zero units.
    fn zero_range(&mut self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let _ = may_unmap;
        self.write_zeroes(offset, len)
    }

    /// Tell the image the guest no longer needs the range. Afterwards the range reads as
    /// zeros where whole allocation units were released, and is unchanged elsewhere.
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Make every completed write durable, in the format's crash-safe order.
    fn flush(&mut self) -> Result<()>;

    /// Finish writing: flush, and write whatever trailing structures the format needs
    /// (a streamOptimized VMDK's footer, for example). The device must not be written after.
    fn close(&mut self) -> Result<()> {
        self.flush()
    }

    /// The allocation status of the run starting at `offset`, at most `max_len` bytes long.
    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent>;

    /// The run starting at `offset` as `qemu-img map` reports it (default: what
    /// [`block_status`](Self::block_status) says).
    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<MapStatus> {
        Ok(MapStatus::from_extent(self.block_status(offset, max_len)?))
    }

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// The allocation unit, if the format has one (a qcow2 cluster, a VMDK grain).
    fn cluster_size(&self) -> Option<u64> {
        None
    }

    /// The codec for compressed clusters, if the format stores them (default: none).
    fn cluster_codec(&self) -> Option<Arc<dyn ClusterCodec>> {
        None
    }

    /// Store the guest cluster at `offset` (cluster aligned) as `compressed`, which the
    /// codec from [`cluster_codec`](Self::cluster_codec) produced from the whole cluster.
    fn write_compressed_cluster(&mut self, offset: u64, compressed: &[u8]) -> Result<()> {
        let _ = (offset, compressed);
        Err(crate::Error::unsupported(format!(
            "compressed clusters in {} images",
            self.format_name()
        )))
    }

    /// If the guest cluster at `offset` (cluster aligned) is stored compressed, its stored
    /// bytes and their host offset, for the codec to inflate elsewhere (default: `None`,
    /// read it with [`read_at`](Self::read_at)).
    fn read_compressed_cluster(&mut self, offset: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let _ = offset;
        Ok(None)
    }

    /// Read like [`read_at`](Self::read_at), but the format may leave runs of `buf` as
    /// stored (encrypted) and return them with their decoder, for the caller to decode on
    /// another thread; `None`: `buf` holds guest data (the default).
    fn read_stored(&mut self, buf: &mut [u8], offset: u64) -> Result<Option<StoredRead>> {
        self.read_at(buf, offset).map(|()| None)
    }

    /// Whether writes must arrive in increasing guest offset order (a streamOptimized
    /// VMDK being written); the convert engine then ignores out-of-order mode.
    fn requires_sequential_writes(&self) -> bool {
        false
    }
    /// Attach the opened backing image this image names (the image layer opens it). Formats
    /// without backing files say so.
    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        drop(backing);
        Err(crate::Error::unsupported(format!(
            "backing files for {} images",
            self.format_name()
        )))
    }

    /// Change the virtual size. Formats that cannot resize say so.
    fn resize(&mut self, new_size: u64) -> Result<()> {
        let _ = new_size;
        Err(crate::Error::unsupported(format!(
            "resizing {} images",
            self.format_name()
        )))
    }

    /// The run of equal dirtiness of the persistent dirty bitmap `name` starting at guest
    /// `offset`, as the bitmap stands in memory now (writes already made through this
    /// device included): its length (1 to `max_len` bytes) and whether it is dirty. `None`
    /// when the device keeps no such bitmap in memory (default).
    fn dirty_run(&mut self, name: &str, offset: u64, max_len: u64) -> Option<(u64, bool)> {
        let _ = (name, offset, max_len);
        None
    }
}

/// Check that `[offset, offset+len)` lies inside a device of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(crate::Error::invalid(format!(
            "request at offset {offset} length {len} is outside the disk ({size} bytes)"
        ))),
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for Box<T> {
    fn format_name(&self) -> &'static str {
        (**self).format_name()
    }
    fn virtual_size(&self) -> u64 {
        (**self).virtual_size()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).write_zeroes(offset, len)
    }
    fn zero_range(&mut self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        (**self).zero_range(offset, len, may_unmap)
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
    fn close(&mut self) -> Result<()> {
        (**self).close()
    }
    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        (**self).block_status(offset, max_len)
    }
    fn map_status(&mut self, offset: u64, max_len: u64) -> Result<MapStatus> {
        (**self).map_status(offset, max_len)
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn cluster_size(&self) -> Option<u64> {
        (**self).cluster_size()
    }
    fn cluster_codec(&self) -> Option<Arc<dyn ClusterCodec>> {
        (**self).cluster_codec()
    }
    fn write_compressed_cluster(&mut self, offset: u64, compressed: &[u8]) -> Result<()> {
        (**self).write_compressed_cluster(offset, compressed)
    }
    fn read_compressed_cluster(&mut self, offset: u64) -> Result<Option<(u64, Vec<u8>)>> {
        (**self).read_compressed_cluster(offset)
    }
    fn read_stored(&mut self, buf: &mut [u8], offset: u64) -> Result<Option<StoredRead>> {
        (**self).read_stored(buf, offset)
    }
    fn requires_sequential_writes(&self) -> bool {
        (**self).requires_sequential_writes()
    }
    fn attach_backing(&mut self, backing: Box<dyn BlockDevice>) -> Result<()> {
        (**self).attach_backing(backing)
    }
    fn resize(&mut self, new_size: u64) -> Result<()> {
        (**self).resize(new_size)
    }
    fn dirty_run(&mut self, name: &str, offset: u64, max_len: u64) -> Option<(u64, bool)> {
        (**self).dirty_run(name, offset, max_len)
    }
}
