//! Operations on backing chains: `commit` (fold overlays into a backing image) and
//! `rebase` (point an overlay at a new backing image, keeping its contents).

use crate::device::{BlockDevice, ExtentKind};
use crate::error::{Error, Result};
use crate::ops::convert::Progress;

const CHUNK: u64 = 1 << 20;

/// At most a given number of bytes a second (`qemu-img commit -r`): the copy sleeps as
/// long as it is ahead of the rate.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    start: std::time::Instant,
    done: u64,
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (0: none, as qemu-img's `-r 0`).
    pub fn new(bytes_per_sec: u64) -> Option<RateLimit> {
        (bytes_per_sec > 0).then(|| RateLimit {
            bytes_per_sec,
            start: std::time::Instant::now(),
            done: 0,
        })
    }

    /// The limit a qemu-img `-r RATE` argument sets: a size (k, M, G, ... suffixes), at
    /// most `i64::MAX`; 0 is none.
    pub fn parse(rate: &str) -> Result<Option<RateLimit>> {
        let out_of_range = || {
            Error::invalid(format!(
                "Invalid rate limit specified. Must be between 0 and {}.",
                i64::MAX
            ))
        };
        if rate.trim_start().starts_with('-') {
            return Err(out_of_range());
        }
        let n = crate::size::parse_size(rate)
            .map_err(|_| Error::invalid(format!("Invalid rate limit specified: '{rate}'.")))?;
        if n > i64::MAX as u64 {
            return Err(out_of_range());
        }
        Ok(RateLimit::new(n))
    }

    /// Count `n` more bytes copied, and wait until the rate allows them.
    fn account(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        let due = std::time::Duration::from_secs_f64(self.done as f64 / self.bytes_per_sec as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Copy into `base` every range of `top` (a chain opened read-only) that comes from a layer
/// above `base_depth`: data is written, zeroed ranges are zeroed. Then flush `base`.
pub fn commit(
    top: &mut dyn BlockDevice,
    base: &mut dyn BlockDevice,
    base_depth: u32,
    progress: Progress<'_>,
) -> Result<()> {
    commit_limited(top, base, base_depth, None, progress)
}

/// [`commit`], copying data no faster than `rate` allows.
pub fn commit_limited(
    top: &mut dyn BlockDevice,
    base: &mut dyn BlockDevice,
    base_depth: u32,
    mut rate: Option<RateLimit>,
    progress: Progress<'_>,
) -> Result<()> {
    let size = top.virtual_size();
    if size > base.virtual_size() {
        // As qemu-img does, grow the base to the size of the image being committed.
        base.resize(size)?;
    }
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let e = top.block_status(pos, size - pos)?;
        let end = pos + e.length;
        // depth 0 with nothing present: past the end of the overlay's backing, reads zeros.
        let above = e.depth < base_depth;
        if above {
            match e.kind {
                ExtentKind::Data => {
                    let mut p = pos;
                    while p < end {
                        let n = CHUNK.min(end - p);
                        let b = &mut buf[..n as usize];
                        top.read_at(b, p)?;
                        base.write_at(b, p)?;
                        if let Some(r) = rate.as_mut() {
                            r.account(n);
                        }
                        p += n;
                    }
                }
                ExtentKind::Zero | ExtentKind::Unallocated => base.write_zeroes(pos, e.length)?,
            }
        }
        pos = end;
        progress(pos, size);
    }
    base.flush()
}

/// Safe rebase: for every range of `image` (the overlay opened writable with its current
/// backing chain) not allocated in the overlay itself, compare what it reads now with what
/// `new_backing` (or zeros, for `None`) would return, and write the current contents into
/// the overlay where they differ, one cluster at a time. Afterwards the caller points the
/// header at the new backing; the guest contents are unchanged.
pub fn rebase_copy(
    image: &mut dyn BlockDevice,
    new_backing: Option<&mut dyn BlockDevice>,
    progress: Progress<'_>,
) -> Result<()> {
    rebase_copy_with(image, new_backing, false, progress)
}

/// [`rebase_copy`]; with `compress` (`qemu-img rebase -c`), each cluster it writes is
/// stored compressed (whole clusters, as the format's codec makes them).
pub fn rebase_copy_with(
    image: &mut dyn BlockDevice,
    mut new_backing: Option<&mut dyn BlockDevice>,
    compress: bool,
    progress: Progress<'_>,
) -> Result<()> {
    let mut compressor = match compress {
        true => Some(Compressor::of(image)?),
        false => None,
    };
    let size = image.virtual_size();
    let gran = image.cluster_size().unwrap_or(65536).max(512);
    let chunk = CHUNK.max(gran) / gran * gran;
    let mut old_buf = vec![0u8; chunk as usize];
    let mut new_buf = vec![0u8; chunk as usize];
    let mut pos = 0;
    while pos < size {
        let e = image.block_status(pos, size - pos)?;
        let end = pos + e.length;
        if e.depth > 0 || e.kind == ExtentKind::Unallocated {
            let old_zero = e.kind != ExtentKind::Data;
            let mut p = pos;
            while p < end {
                // How far the new backing keeps one state from p; ranges that read as zeros
                // on both sides need no reading at all.
                let (new_zero, seg_end) = match new_backing.as_deref_mut() {
                    Some(nb) if p < nb.virtual_size() => {
                        let st = nb.block_status(p, end.min(nb.virtual_size()) - p)?;
                        (st.kind != ExtentKind::Data, p + st.length)
                    }
                    _ => (true, end),
                };
                let seg_end = seg_end.min(end);
                if !(old_zero && new_zero) {
                    let mut q0 = p;
                    while q0 < seg_end {
                        let n = chunk.min(seg_end - q0);
                        let ob = &mut old_buf[..n as usize];
                        let nb = &mut new_buf[..n as usize];
                        // The two sides are independent files: read them in parallel.
                        let newdev = new_backing.as_deref_mut().filter(|_| !new_zero);
                        let (old_read, new_read) = std::thread::scope(|sc| {
                            let new_side = sc.spawn(|| match newdev {
                                Some(dev) => dev.read_at(nb, q0),
                                None => {
                                    nb.fill(0);
                                    Ok(())
                                }
                            });
                            let old_side = if old_zero {
                                ob.fill(0);
                                Ok(())
                            } else {
                                image.read_at(ob, q0)
                            };
                            let new_side = new_side.join().unwrap_or_else(|_| {
                                Err(crate::Error::invalid("rebase: a reader thread panicked"))
                            });
                            (old_side, new_side)
                        });
                        old_read?;
                        new_read?;
                        match compressor.as_mut() {
                            Some(c) => c.write_differing(image, ob, nb, q0, gran)?,
                            None => write_differing(image, ob, nb, q0, gran, false)?,
                        }
                        q0 += n;
                    }
                }
                p = seg_end;
            }
        }
        pos = end;
        progress(pos, size);
    }
    image.flush()
}

/// Make `dst` (an overlay opened with its backing chain, reading what the backing holds)
/// read like `src`, writing only the clusters where the two differ: qemu-img convert -B.
pub fn copy_differences(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    progress: Progress<'_>,
) -> Result<()> {
    let size = src.virtual_size().min(dst.virtual_size());
    let gran = dst.cluster_size().unwrap_or(65536).max(512);
    let chunk = CHUNK.max(gran) / gran * gran;
    let mut a = vec![0u8; chunk as usize];
    let mut b = vec![0u8; chunk as usize];
    let mut pos = 0;
    while pos < size {
        let n = chunk.min(size - pos);
        let (sa, sb) = (&mut a[..n as usize], &mut b[..n as usize]);
        src.read_at(sa, pos)?;
        dst.read_at(sb, pos)?;
        write_differing(dst, sa, sb, pos, gran, true)?;
        pos += n;
        progress(pos, size);
    }
    dst.close()
}

/// Writes the clusters a compressing rebase changes: each as a whole compressed cluster.
struct Compressor {
    codec: std::sync::Arc<dyn crate::device::ClusterCodec>,
    /// The cluster written last (a cluster split between two compared ranges is written
    /// once, whole).
    last: Option<u64>,
}

impl Compressor {
    /// The compressor for `dst`; a format without compressed clusters is refused as
    /// qemu-img refuses it.
    fn of(dst: &dyn BlockDevice) -> Result<Compressor> {
        match dst.cluster_codec() {
            Some(codec) => Ok(Compressor { codec, last: None }),
            None => Err(crate::Error::invalid(
                "Compression not supported for this file format",
            )),
        }
    }

    /// [`write_differing`], writing each cluster a differing granule lies in as one
    /// compressed cluster of what `dst` reads now (or uncompressed, when compressing does
    /// not make it smaller).
    fn write_differing(
        &mut self,
        dst: &mut dyn BlockDevice,
        want: &[u8],
        have: &[u8],
        at: u64,
        gran: u64,
    ) -> Result<()> {
        let size = dst.virtual_size();
        let mut q = 0usize;
        while q < want.len() {
            let pos = at + q as u64;
            let cluster = pos / gran * gran;
            let r = ((cluster + gran - at) as usize).min(want.len());
            if want[q..r] != have[q..r] && self.last != Some(cluster) {
                let len = gran.min(size - cluster);
                let mut buf = vec![0u8; gran as usize];
                dst.read_at(&mut buf[..len as usize], cluster)?;
                match self.codec.compress(&buf) {
                    Some(c) => dst.write_compressed_cluster(cluster, &c)?,
                    None => dst.write_at(&buf[..len as usize], cluster)?,
                }
                self.last = Some(cluster);
            }
            q = r;
        }
        Ok(())
    }
}

/// Write into `dst` at guest offset `at` each granule of `want` that differs from `have`.
/// Granules end on multiples of `gran` (the destination's cluster size), so each write
/// covers whole clusters or the rest of the buffer. With `zeroes_as_zero_writes`, an
/// all-zero granule is written with `write_zeroes` (a zero cluster that hides backing data).
fn write_differing(
    dst: &mut dyn BlockDevice,
    want: &[u8],
    have: &[u8],
    at: u64,
    gran: u64,
    zeroes_as_zero_writes: bool,
) -> Result<()> {
    let n = want.len();
    let mut q = 0usize;
    while q < n {
        let r = ((((at + q as u64) / gran + 1) * gran - at) as usize).min(n);
        if want[q..r] != have[q..r] {
            if zeroes_as_zero_writes && crate::ops::convert::is_zero(&want[q..r]) {
                dst.write_zeroes(at + q as u64, (r - q) as u64)?;
            } else {
                dst.write_at(&want[q..r], at + q as u64)?;
            }
        }
        q = r;
    }
    Ok(())
}
