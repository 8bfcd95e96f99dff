//! Comparing the guest contents of two devices, as `qemu-img compare` does.
//!
//! Both devices are walked by allocation status: runs that read as zeros in both are
//! skipped unread, a run allocated in only one is checked for zeros, and runs with data in
//! both are read in bounded chunks and compared. The first difference is reported at the
//! 512-byte sector where it lies. When the sizes differ, the longer device's tail must read
//! as zeros (strict mode instead fails on any size or allocation difference).

use crate::device::{BlockDevice, ExtentKind};
use crate::error::Result;
use crate::image::{self, Format, ImageOptions};
use std::path::Path;

/// Largest chunk read from each device at once.
const CHUNK: u64 = 1 << 20;
/// Differences are reported at this granularity.
const SECTOR: u64 = 512;

/// The outcome of [`compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// The guest contents are the same.
    Identical {
        /// The devices have different sizes (the longer one's tail reads as zeros).
        size_mismatch: bool,
    },
    /// The contents differ; the offset is the first differing 512-byte sector.
    ContentMismatch {
        /// Guest offset of the first differing sector.
        offset: u64,
        /// The devices have different sizes.
        size_mismatch: bool,
    },
    /// Strict mode: the sizes differ.
    StrictSizeMismatch,
    /// Strict mode: allocation status differs at this offset.
    StrictStatusMismatch(u64),
}

impl Comparison {
    /// Whether the contents are the same.
    pub fn is_identical(&self) -> bool {
        matches!(self, Comparison::Identical { .. })
    }

    /// The lines qemu-img prints for this outcome.
    pub fn message(&self) -> String {
        let warn = |m: bool| {
            if m {
                "Warning: Image size mismatch!\n"
            } else {
                ""
            }
        };
        match *self {
            Comparison::Identical { size_mismatch } => {
                format!("{}Images are identical.\n", warn(size_mismatch))
            }
            Comparison::ContentMismatch {
                offset,
                size_mismatch,
            } => format!(
                "{}Content mismatch at offset {offset}!\n",
                warn(size_mismatch)
            ),
            Comparison::StrictSizeMismatch => "Strict mode: Image size mismatch!\n".into(),
            Comparison::StrictStatusMismatch(o) => {
                format!("Strict mode: Offset {o} block status mismatch!\n")
            }
        }
    }
}

/// The first 512-byte sector (relative to the buffers) where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    a.chunks(SECTOR as usize)
        .zip(b.chunks(SECTOR as usize))
        .position(|(x, y)| x != y)
        .map(|i| i as u64 * SECTOR)
}

/// The first non-zero 512-byte sector of `buf`.
fn first_nonzero(buf: &[u8]) -> Option<u64> {
    buf.chunks(SECTOR as usize)
        .position(|c| !super::convert::is_zero(c))
        .map(|i| i as u64 * SECTOR)
}

/// Check that `dev` reads as zeros over `[start, end)`; returns the first non-zero sector.
fn check_zero(
    dev: &mut dyn BlockDevice,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<Option<u64>> {
    let mut pos = start;
    while pos < end {
        let ext = dev.block_status(pos, end - pos)?;
        let run_end = (pos + ext.length).min(end);
        if ext.kind == ExtentKind::Data {
            while pos < run_end {
                let n = (run_end - pos).min(CHUNK) as usize;
                dev.read_at(&mut buf[..n], pos)?;
                if let Some(o) = first_nonzero(&buf[..n]) {
                    return Ok(Some((pos + o) / SECTOR * SECTOR));
                }
                pos += n as u64;
            }
        }
        pos = run_end;
    }
    Ok(None)
}

/// Compare the guest contents of the images at `path_a` and `path_b` (formats
/// `format_a` and `format_b`, probed when `None`), opened read-only (`force_share`:
/// without locking out other users). `progress` is first called with `(0, larger size)`
/// once both images are open, then as [`compare_with_progress`] calls it.
pub fn compare_files(
    (path_a, format_a): (&Path, Option<Format>),
    (path_b, format_b): (&Path, Option<Format>),
    strict: bool,
    force_share: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison> {
    let open = |path, format| {
        let opts = ImageOptions {
            format,
            read_only: true,
            force_share,
            ..Default::default()
        };
        image::open(path, &opts)
    };
    let mut a = open(path_a, format_a)?;
    let mut b = open(path_b, format_b)?;
    let total = a.device.virtual_size().max(b.device.virtual_size());
    progress(0, total);
    compare_with_progress(a.device.as_mut(), b.device.as_mut(), strict, progress)
}

/// Compare the guest contents of `a` and `b`.
pub fn compare(
    a: &mut dyn BlockDevice,
    b: &mut dyn BlockDevice,
    strict: bool,
) -> Result<Comparison> {
    compare_with_progress(a, b, strict, &mut |_, _| {})
}

/// [`compare`], reporting `(bytes compared, larger size)` after each run of the common part.
pub fn compare_with_progress(
    a: &mut dyn BlockDevice,
    b: &mut dyn BlockDevice,
    strict: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison> {
    let (size_a, size_b) = (a.virtual_size(), b.virtual_size());
    let total = size_a.max(size_b);
    if strict && size_a != size_b {
        return Ok(Comparison::StrictSizeMismatch);
    }
    let size = size_a.min(size_b);
    let size_mismatch = size_a != size_b;
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        // qemu-img compares the whole block status in strict mode, as `map` shows it (a
        // format's data over a hole of its host file reads as zeros there), and its status
        // of a run that reaches the end of the device carries an end-of-file flag: an
        // unallocated run up to the end differs from one that stops short of it.
        let (ea, eb, zeros) = if strict {
            let (sa, sb) = (
                a.map_status(pos, size - pos)?,
                b.map_status(pos, size - pos)?,
            );
            (sa.extent, sb.extent, (sa.zero, sb.zero))
        } else {
            let (ea, eb) = (
                a.block_status(pos, size - pos)?,
                b.block_status(pos, size - pos)?,
            );
            (ea, eb, (false, false))
        };
        let run_end = pos + ea.length.min(eb.length).min(size - pos);
        let at_end = |e: &crate::device::Extent| pos + e.length >= size;
        if strict && (ea.kind != eb.kind || zeros.0 != zeros.1 || at_end(&ea) != at_end(&eb)) {
            return Ok(Comparison::StrictStatusMismatch(pos));
        }
        let (za, zb) = (ea.kind != ExtentKind::Data, eb.kind != ExtentKind::Data);
        let found = match (za, zb) {
            (true, true) => None,
            (true, false) => check_zero(b, pos, run_end, &mut buf_b)?,
            (false, true) => check_zero(a, pos, run_end, &mut buf_a)?,
            (false, false) => {
                let mut p = pos;
                let mut found = None;
                while p < run_end {
                    let n = (run_end - p).min(CHUNK) as usize;
                    a.read_at(&mut buf_a[..n], p)?;
                    b.read_at(&mut buf_b[..n], p)?;
                    if let Some(o) = first_difference(&buf_a[..n], &buf_b[..n]) {
                        found = Some((p + o) / SECTOR * SECTOR);
                        break;
                    }
                    p += n as u64;
                }
                found
            }
        };
        if let Some(offset) = found {
            return Ok(Comparison::ContentMismatch {
                offset,
                size_mismatch: false,
            });
        }
        pos = run_end;
        progress(pos, total);
    }
    if size_mismatch {
        let found = if size_a > size_b {
            check_zero(a, size, size_a, &mut buf_a)?
        } else {
            check_zero(b, size, size_b, &mut buf_b)?
        };
        if let Some(offset) = found {
            return Ok(Comparison::ContentMismatch {
                offset,
                size_mismatch: true,
            });
        }
    }
    Ok(Comparison::Identical { size_mismatch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_reported_at_the_start_of_their_sector() {
        let a = vec![0u8; 2048];
        let mut b = a.clone();
        b[1000] = 1;
        assert_eq!(first_difference(&a, &b), Some(512));
        assert_eq!(first_nonzero(&b), Some(512));
        assert_eq!(first_difference(&a, &a), None);
    }
}
