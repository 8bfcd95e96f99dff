//! Compressed clusters: the two codecs (raw deflate and zstd), and writing a compressed
//! cluster into the image with QEMU's byte allocator.
//!
//! # Codecs
//!
//! * **zlib** (compression type 0): a raw deflate stream (no zlib header). QEMU inflates it
//!   with a 4 KiB window, so vdisk deflates with window bits 12 at level 6 (QEMU's
//!   `Z_DEFAULT_COMPRESSION`). Any window is accepted when reading.
//! * **zstd** (type 1, with incompatible feature bit 3): one zstd frame at the default level.
//!   The descriptor only knows the length to a sector, so decoding is streaming: it stops
//!   once a cluster has been produced and the frame is complete; what follows is slack.
//!
//! Either way the stored data must produce exactly one cluster; less, more, or undecodable
//! bytes are an error for that cluster. A cluster whose compressed form would not be
//! smaller than the cluster is stored uncompressed instead, as QEMU does.
//!
//! # Packing (QEMU's `qcow2_alloc_bytes`)
//!
//! Compressed clusters are appended byte after byte (no alignment) at a cursor inside a
//! host cluster. Data that does not fit in the rest of that host cluster continues into the
//! next one when the allocator hands out exactly that next cluster; otherwise it starts at
//! a fresh host cluster and the tail of the old one stays unused. Every host cluster a
//! compressed cluster touches gets one more reference.

use super::entry::L2Entry;
use super::header::CompressionType;
use super::{ioerr, Qcow2};
use crate::codec::looks_random;
use crate::device::ClusterCodec;
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::cell::RefCell;

/// Deflate level: QEMU's `Z_DEFAULT_COMPRESSION`.
pub const DEFLATE_LEVEL: u32 = 6;
/// Deflate window: QEMU inflates with 12 window bits, so a larger window breaks interop.
pub const DEFLATE_WINDOW_BITS: u8 = 12;
/// zstd level: zstd's default, which is what QEMU uses.
pub const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static DEFLATE: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
    static INFLATE: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
    static ZSTD_C: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Compress one whole cluster. `None` when the result would not be smaller than the cluster
/// (the caller then stores it uncompressed).
pub fn compress_cluster(kind: CompressionType, cluster: &[u8]) -> Option<Vec<u8>> {
    // A compressed cluster must be smaller than the cluster. The buffer is larger than
    // the worst case nonetheless: zlib-rs 0.6 panics when a stored block meets a full
    // output buffer with a 4 KiB window, so deflate always gets room to finish.
    let room = cluster.len().checked_sub(1)?;
    let mut out = Vec::with_capacity(cluster.len() + cluster.len() / 8 + 1024);
    let done = match kind {
        CompressionType::Zlib if looks_random(cluster) => false,
        CompressionType::Zlib => DEFLATE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let c = cell.get_or_insert_with(|| {
                flate2::Compress::new_with_window_bits(
                    flate2::Compression::new(DEFLATE_LEVEL),
                    false,
                    DEFLATE_WINDOW_BITS,
                )
            });
            c.reset();
            matches!(
                c.compress_vec(cluster, &mut out, flate2::FlushCompress::Finish),
                Ok(flate2::Status::StreamEnd)
            )
        }),
        CompressionType::Zstd => ZSTD_C.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
            }
            cell.as_mut()
                .is_some_and(|c| c.compress_to_buffer(cluster, &mut out).is_ok())
        }),
    };
    (done && out.len() <= room).then_some(out)
}

/// Inflate one compressed cluster from `data` into `out` (exactly one cluster).
///
/// The stream must produce exactly `out.len()` bytes and end there; bytes after its end
/// (the rest of the last 512-byte sector) are ignored. Anything else is an error naming
/// `host`.
pub fn decompress_cluster(
    kind: CompressionType,
    data: &[u8],
    out: &mut [u8],
    host: u64,
) -> Result<()> {
    let bad = |msg: String| Error::corrupt("compressed cluster", host, msg);
    match kind {
        CompressionType::Zlib => INFLATE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let d = cell.get_or_insert_with(|| flate2::Decompress::new(false));
            d.reset(false);
            let status = d
                .decompress(data, out, flate2::FlushDecompress::Finish)
                .map_err(|e| bad(format!("bad deflate data: {e}")))?;
            let produced = d.total_out() as usize;
            if produced != out.len() {
                return Err(bad(format!(
                    "inflates to {produced} bytes instead of {}",
                    out.len()
                )));
            }
            if status != flate2::Status::StreamEnd {
                // The output is full: the stream must end here, without more output.
                let used = d.total_in() as usize;
                let mut extra = [0u8; 1];
                let s = d
                    .decompress(&data[used..], &mut extra, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(format!("bad deflate data: {e}")))?;
                if d.total_out() as usize != out.len() {
                    return Err(bad(format!("inflates to more than {} bytes", out.len())));
                }
                if s != flate2::Status::StreamEnd {
                    return Err(bad("deflate stream is truncated".into()));
                }
            }
            Ok(())
        }),
        CompressionType::Zstd => ZSTD_D.with(|cell| {
            use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};
            let mut cell = cell.borrow_mut();
            let d = cell.get_or_insert_with(DCtx::create);
            let _ = d.reset(ResetDirective::SessionOnly);
            let err = |code: usize| {
                bad(format!(
                    "bad zstd data: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            };
            let mut input = InBuffer::around(data);
            let mut pos = 0usize;
            let mut hint;
            loop {
                let mut output = OutBuffer::around_pos(&mut *out, pos);
                let before_in = input.pos();
                hint = d.decompress_stream(&mut output, &mut input).map_err(err)?;
                let progressed = output.pos() > pos || input.pos() > before_in;
                pos = output.pos();
                if pos == out.len() {
                    break;
                }
                if !progressed {
                    return Err(bad(format!(
                        "zstd data decodes to {pos} bytes instead of {}",
                        out.len()
                    )));
                }
            }
            while hint != 0 {
                // The frame must end right after the cluster (its epilogue may remain).
                let mut extra = [0u8; 1];
                let mut output = OutBuffer::around(&mut extra[..]);
                let before_in = input.pos();
                hint = d.decompress_stream(&mut output, &mut input).map_err(err)?;
                if output.pos() > 0 {
                    return Err(bad(format!("zstd data decodes to more than {pos} bytes")));
                }
                if hint != 0 && input.pos() == before_in {
                    return Err(bad("zstd frame is truncated".into()));
                }
            }
            Ok(())
        }),
    }
}

/// The codec a qcow2 image hands to the convert engine's workers.
pub struct Qcow2Codec {
    kind: CompressionType,
}

impl ClusterCodec for Qcow2Codec {
    fn compress(&self, cluster: &[u8]) -> Option<Vec<u8>> {
        compress_cluster(self.kind, cluster)
    }

    fn decompress(&self, data: &[u8], out: &mut [u8], host: u64) -> Result<()> {
        decompress_cluster(self.kind, data, out, host)
    }
}

impl<S: Storage> Qcow2<S> {
    /// The codec for this image's compression type.
    pub(crate) fn codec(&self) -> Qcow2Codec {
        Qcow2Codec {
            kind: self.header.compression_type,
        }
    }

    /// Inflate the compressed cluster at `host` (at most `len` stored bytes).
    pub(crate) fn read_compressed(&mut self, host: u64, len: u64) -> Result<Vec<u8>> {
        let data = self.read_compressed_bytes(host, len)?;
        let mut out = vec![0u8; self.geo.cluster_size as usize];
        decompress_cluster(self.header.compression_type, &data, &mut out, host)?;
        Ok(out)
    }

    /// The stored bytes of the compressed cluster at `host` (clipped to the file).
    pub(crate) fn read_compressed_bytes(&mut self, host: u64, len: u64) -> Result<Vec<u8>> {
        let avail = self.file_len.saturating_sub(host).min(len);
        let mut data = vec![0u8; avail as usize];
        self.storage
            .read_at(&mut data, host)
            .map_err(ioerr("reading compressed data"))?;
        Ok(data)
    }

    /// Store `compressed` (one whole cluster, compressed with this image's codec) as the
    /// contents of the guest cluster at `offset`, which must be cluster aligned.
    ///
    /// The order is the one every write follows: allocate (refcounts raised in the cache),
    /// write the data, point the L2 entry at it; whatever the entry held before is freed
    /// after the next flush has written the L2 table.
    pub(crate) fn store_compressed(&mut self, offset: u64, compressed: &[u8]) -> Result<()> {
        self.check_writable()?;
        let cs = self.geo.cluster_size;
        let len = compressed.len() as u64;
        if offset % cs != 0 || offset >= self.header.size {
            return Err(Error::invalid(format!(
                "compressed write at {offset:#x} is not a cluster of the disk"
            )));
        }
        if len == 0 || len >= cs {
            return Err(Error::invalid(format!(
                "compressed cluster of {len} bytes does not fit a {cs}-byte cluster"
            )));
        }
        let gc = offset >> self.geo.cluster_bits;
        let l1_index = gc >> self.geo.l2_bits;
        let old = self.l2_entry(gc)?;
        let l2_off = self.l2_for_write(l1_index)?;
        let host = self.alloc_compressed_bytes(len)?;
        self.storage
            .write_at(compressed, host)
            .map_err(ioerr("writing compressed data"))?;
        let idx = gc & (self.geo.l2_entries() - 1);
        self.set_l2_entry(l2_off, idx, L2Entry::Compressed { host, len })?;
        if old != L2Entry::Unallocated {
            self.release_entry(old);
        }
        Ok(())
    }

    /// Reserve `len` (< one cluster) bytes for compressed data and take one reference on
    /// every host cluster they touch. Returns their host offset.
    fn alloc_compressed_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.geo.cluster_size;
        let cb = self.geo.cluster_bits;
        let mut start = self.compressed_cursor;
        if start != 0 && self.refcount(start >> cb)? >= self.geo.max_refcount() {
            start = 0;
        }
        if start != 0 {
            let free_in_cluster = cs - start % cs;
            if len <= free_in_cluster {
                self.increase_refcount(start)?;
            } else {
                // Spill into the next host cluster, if that is the one we get.
                let next = self.alloc_clusters(1)?;
                if next == start - start % cs + cs {
                    self.increase_refcount(start)?;
                } else {
                    start = next;
                }
            }
        } else {
            start = self.alloc_clusters(1)?;
        }
        let end = start + len;
        self.compressed_cursor = if end % cs == 0 { 0 } else { end };
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 7 % 13) as u8 + b'a').collect()
    }

    #[test]
    fn compressed_clusters_are_packed_back_to_back_and_refcounted_per_host_cluster() {
        use crate::qcow2::{create, CreateOptions};
        use crate::storage::MemStorage;
        // The example of format-spec/qcow2.md: three 30,000-byte streams, 64 KiB clusters.
        let opts = CreateOptions {
            size: 1 << 20,
            ..Default::default()
        };
        let mut img = create(MemStorage::new(), &opts).unwrap();
        for i in 0..3u64 {
            img.store_compressed(i * 65536, &[i as u8 + 1; 30000])
                .unwrap();
        }
        let entries: Vec<_> = (0..3).map(|gc| img.l2_entry(gc).unwrap()).collect();
        let hosts: Vec<u64> = entries
            .iter()
            .map(|e| match e {
                L2Entry::Compressed { host, .. } => *host,
                other => panic!("not compressed: {other:?}"),
            })
            .collect();
        assert_eq!(hosts, [0x50000, 0x57530, 0x5ea60]);
        let raw = img.l2_raw(2).unwrap();
        assert_eq!(raw >> 54 & 0xff, 58);
        assert_eq!(img.refcount(5).unwrap(), 3);
        assert_eq!(img.refcount(6).unwrap(), 1);
        // A compressed cluster must be smaller than a cluster and land on a cluster.
        assert!(img.store_compressed(3 * 65536, &[0; 65536]).is_err());
        assert!(img.store_compressed(100, &[0; 10]).is_err());
    }

    #[test]
    fn both_codecs_round_trip_a_compressible_cluster() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let data = sample(65536);
            let c = compress_cluster(kind, &data).expect("compressible");
            assert!(c.len() < 8192, "{kind:?}: {}", c.len());
            let mut out = vec![0u8; 65536];
            decompress_cluster(kind, &c, &mut out, 0).unwrap();
            assert_eq!(out, data);
            // Slack after the stream (the rest of the sector) is ignored.
            let mut padded = c.clone();
            padded.extend_from_slice(&[0xa5; 300]);
            decompress_cluster(kind, &padded, &mut out, 0).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn an_incompressible_cluster_is_not_compressed() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress_cluster(CompressionType::Zlib, &data).is_none());
        assert!(compress_cluster(CompressionType::Zstd, &data).is_none());
    }

    #[test]
    fn only_random_looking_data_skips_deflate() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(looks_random(&random));
        assert!(looks_random(&random[..4096]));
        // Text, a byte counter, and a 2 KiB random block repeated are all compressible.
        assert!(!looks_random(&sample(65536)));
        let counter: Vec<u8> = (0..65536).map(|i| i as u8).collect();
        assert!(!looks_random(&counter));
        let repeated: Vec<u8> = random[..2048].iter().cycle().take(65536).copied().collect();
        assert!(!looks_random(&repeated));
        assert!(compress_cluster(CompressionType::Zlib, &repeated).is_some());
        // Half random, half a repeated 4 KiB block.
        let mut half = random[..32768].to_vec();
        half.extend(random[..4096].iter().cycle().take(32768));
        assert!(!looks_random(&half));
        assert!(!looks_random(&random[..1000]));
    }

    #[test]
    fn deflate_output_uses_a_4k_window_that_a_12_bit_inflater_accepts() {
        let data = sample(65536);
        let c = compress_cluster(CompressionType::Zlib, &data).unwrap();
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = vec![0u8; 65536];
        let s = d
            .decompress(&c, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(s, flate2::Status::StreamEnd);
        assert_eq!(out, data);
    }

    #[test]
    fn a_stream_with_a_32k_window_is_accepted_when_reading() {
        let data = sample(65536);
        let mut c = flate2::Compress::new(flate2::Compression::new(9), false);
        let mut out = Vec::with_capacity(65536);
        c.compress_vec(&data, &mut out, flate2::FlushCompress::Finish)
            .unwrap();
        let mut back = vec![0u8; 65536];
        decompress_cluster(CompressionType::Zlib, &out, &mut back, 0).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn short_long_and_garbage_streams_are_errors() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let data = sample(8192);
            let c = compress_cluster(kind, &data).unwrap();
            // Output longer than the cluster.
            let mut small = vec![0u8; 4096];
            assert!(decompress_cluster(kind, &c, &mut small, 0).is_err());
            // Output shorter than the cluster.
            let mut big = vec![0u8; 16384];
            assert!(decompress_cluster(kind, &c, &mut big, 0).is_err());
            // Truncated data.
            let mut out = vec![0u8; 8192];
            assert!(decompress_cluster(kind, &c[..c.len() / 2], &mut out, 0).is_err());
            // Garbage.
            assert!(decompress_cluster(kind, &[0xff; 64], &mut out, 0).is_err());
            assert!(decompress_cluster(kind, &[], &mut out, 0).is_err());
        }
    }
}
