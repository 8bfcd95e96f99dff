//! Copying guest contents from one device to another, keeping the output sparse and, on
//! request, compressed. One engine serves every source and target format.
//!
//! # The engine
//!
//! The disk is cut into *windows*: runs of whole destination clusters (at least 1 MiB).
//! Three kinds of thread share the work (see [`engine`]):
//!
//! 1. **the reader** walks the source by allocation status. Runs that read as zeros are
//!    never read (and a window holding only such runs is never formed); data is read into
//!    a pooled window buffer; a compressed source cluster is fetched as stored bytes so that
//!    a worker inflates it;
//! 2. **workers** (`workers`, default all cores) inflate compressed source clusters, find
//!    the all-zero clusters (which are never written), and compress the rest when the
//!    target compresses;
//! 3. **the writer** (the calling thread) applies the results to the destination in guest
//!    order, or as they complete when `out_of_order` is set and the target allows it.
//!
//! Memory is bounded by a fixed pool of window buffers: the reader waits for a free one, so
//! at most `pool` windows (and their compressed output) exist at once, whatever the image
//! size. The destination must read as zeros before the copy (a freshly created image), or
//! [`ConvertOptions::target_dirty`] makes [`convert`] zero it first (qemu-img `convert -n`
//! without `--target-is-zero`).
//!
//! Options of qemu-img convert that change what is written: `fully_allocate` (`-S 0`)
//! writes every byte, zeros included; `salvage` (`--salvage`) turns unreadable source
//! sectors into zeros and reports each; `rate_limit` (`-r`) paces the writer.
//! [`source`] builds the device convert reads from (several images, or a snapshot);
//! [`convert_file`] runs a whole `convert` as its flags say, which [`args`] reads and checks;
//! [`sequential`] plans a qcow2 output before the engine copies into it, for a storage that
//! takes writes only in order.

pub mod args;
mod bitmaps;
mod engine;
mod file;
pub mod sequential;
pub mod source;

pub use file::{convert_file, option_help, FileConversion};

use crate::device::BlockDevice;
use crate::error::Result;

/// Smallest window the reader hands out (larger when a cluster is larger).
pub const CHUNK: u64 = 1 << 20;

/// Options for [`convert`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Granularity of zero detection; 0 means the destination's cluster size (or 4 KiB).
    pub zero_granularity: u64,
    /// Treat unallocated source extents as zeros without reading (true when the source has
    /// no backing image).
    pub unallocated_is_zero: bool,
    /// Write compressed clusters (`-c`); the destination must have a cluster codec.
    pub compress: bool,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Let the writer apply windows as they complete (`-W`), where the target allows it.
    pub out_of_order: bool,
    /// Write every byte, zeros included (`-S 0`): the output is fully allocated.
    pub fully_allocate: bool,
    /// The destination may hold data (an existing image, `-n`): zero it before copying.
    pub target_dirty: bool,
    /// Read unreadable 512-byte source sectors as zeros, reporting each (`--salvage`).
    pub salvage: bool,
    /// Most bytes written per second (`-r`); 0 means no limit.
    pub rate_limit: u64,
}

impl ConvertOptions {
    /// The worker count to use: `workers`, or the available parallelism.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Progress callback: (bytes done, total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Copy `src` into `dst` (which reads as zeros unless `opts.target_dirty`), then close
/// `dst`.
pub fn convert(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    opts: ConvertOptions,
    progress: Progress<'_>,
) -> Result<()> {
    convert_salvaging(src, dst, opts, progress, &mut |_| {})
}

/// [`convert`], calling `unreadable` with the guest offset of each 512-byte source sector
/// that could not be read and was written as zeros (only with `opts.salvage`).
pub fn convert_salvaging(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    opts: ConvertOptions,
    progress: Progress<'_>,
    unreadable: &mut dyn FnMut(u64),
) -> Result<()> {
    if opts.target_dirty {
        let size = src.virtual_size().min(dst.virtual_size());
        let mut pos = 0;
        while pos < size {
            let len = (size - pos).min(1 << 30);
            dst.write_zeroes(pos, len)?;
            pos += len;
        }
    }
    engine::run(src, dst, opts, progress, unreadable)?;
    dst.close()
}

/// The unit `--salvage` retries a failed read in, and reports unreadable data by.
pub const SECTOR: u64 = 512;

/// Write the parts of `data` (guest offset `pos`) that are not all zeros, at granularity
/// `gran` (aligned to guest offsets), merging consecutive non-zero pieces into one write.
pub fn write_nonzero(dst: &mut dyn BlockDevice, data: &[u8], pos: u64, gran: u64) -> Result<()> {
    for (s, e) in nonzero_runs(data, pos, gran) {
        dst.write_at(&data[s..e], pos + s as u64)?;
    }
    Ok(())
}

/// The runs of `data` (at guest offset `pos`) that are not all zeros at granularity `gran`
/// (aligned to guest offsets), as index ranges into `data`, consecutive pieces merged.
pub fn nonzero_runs(data: &[u8], pos: u64, gran: u64) -> Vec<(usize, usize)> {
    let end = pos + data.len() as u64;
    let mut runs = Vec::new();
    let mut run_start: Option<usize> = None;
    let mut p = pos;
    while p < end {
        let q = ((p / gran + 1) * gran).min(end);
        let (i, j) = ((p - pos) as usize, (q - pos) as usize);
        match (is_zero(&data[i..j]), run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(s)) => {
                runs.push((s, i));
                run_start = None;
            }
            _ => {}
        }
        p = q;
    }
    if let Some(s) = run_start {
        runs.push((s, data.len()));
    }
    runs
}

/// Whether every byte is zero (64-byte blocks, which the compiler vectorises).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_runs_merge_neighbours_and_skip_zero_pieces() {
        let mut d = vec![0u8; 16];
        d[1] = 1; // piece 0
        d[5] = 1; // piece 1
        d[13] = 1; // piece 3
        assert_eq!(nonzero_runs(&d, 0, 4), vec![(0, 8), (12, 16)]);
        // Pieces are aligned to guest offsets, not to the buffer.
        assert_eq!(nonzero_runs(&d, 2, 4), vec![(0, 6), (10, 14)]);
        assert!(nonzero_runs(&[0u8; 100], 0, 8).is_empty());
    }
}
