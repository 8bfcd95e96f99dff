//! Copying guest contents from one device to another, keeping the output sparse.
//!
//! The source is walked by allocation status: runs that read as zeros are never read or
//! written, and data runs are read in bounded chunks whose all-zero clusters are skipped.
//! The destination must read as zeros before the copy (a freshly created image).

use crate::device::{BlockDevice, ExtentKind};
use crate::error::Result;

/// Largest chunk read from the source at once.
pub const CHUNK: u64 = 2 << 20;

/// Options for [`convert`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Granularity of zero detection; 0 means the destination's cluster size (or 4 KiB).
    pub zero_granularity: u64,
    /// Treat unallocated source extents as zeros without reading (true when the source has
    /// no backing image).
    pub unallocated_is_zero: bool,
}

/// Progress callback: (bytes done, total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Copy `src` into `dst` (which reads as zeros), then flush `dst`.
pub fn convert(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    opts: ConvertOptions,
    progress: Progress<'_>,
) -> Result<()> {
    let size = src.virtual_size().min(dst.virtual_size());
    let gran = match opts.zero_granularity {
        0 => dst.cluster_size().unwrap_or(4096).max(512),
        g => g,
    };
    let chunk = CHUNK.max(gran);
    let mut buf = vec![0u8; chunk as usize];
    let mut pos = 0;
    while pos < size {
        let ext = src.block_status(pos, (size - pos).min(1 << 40))?;
        let skip = match ext.kind {
            ExtentKind::Zero => true,
            ExtentKind::Unallocated => opts.unallocated_is_zero,
            ExtentKind::Data => false,
        };
        let ext_end = pos + ext.length;
        if skip {
            pos = ext_end;
            progress(pos, size);
            continue;
        }
        while pos < ext_end {
            // Align chunk ends to the zero-detection granularity where possible.
            let mut end = (pos + chunk).min(ext_end);
            if end < ext_end && end % gran != 0 {
                end = (end / gran * gran).max(pos + 1);
            }
            let len = (end - pos) as usize;
            let data = &mut buf[..len];
            src.read_at(data, pos)?;
            write_nonzero(dst, data, pos, gran)?;
            pos = end;
            progress(pos, size);
        }
    }
    dst.close()
}

/// Write the parts of `data` (guest offset `pos`) that are not all zeros, at granularity
/// `gran` (aligned to guest offsets), merging consecutive non-zero pieces into one write.
pub fn write_nonzero(dst: &mut dyn BlockDevice, data: &[u8], pos: u64, gran: u64) -> Result<()> {
    let end = pos + data.len() as u64;
    let mut run_start: Option<u64> = None;
    let mut p = pos;
    while p < end {
        let q = ((p / gran + 1) * gran).min(end);
        let piece = &data[(p - pos) as usize..(q - pos) as usize];
        let zero = is_zero(piece);
        match (zero, run_start) {
            (false, None) => run_start = Some(p),
            (true, Some(s)) => {
                dst.write_at(&data[(s - pos) as usize..(p - pos) as usize], s)?;
                run_start = None;
            }
            _ => {}
        }
        p = q;
    }
    if let Some(s) = run_start {
        dst.write_at(&data[(s - pos) as usize..], s)?;
    }
    Ok(())
}

/// Whether every byte is zero (64-byte blocks, which the compiler vectorises).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}
