//! [`Extents`]: which parts of an RBD image hold objects, learned from one
//! `rbd_diff_iterate2` pass and kept until the image changes.
//!
//! Convert's reader asks where the next data starts at every window (1 MiB); asking librbd
//! each time costs a walk of the object map, which a read-only open (no exclusive lock)
//! fetches from the cluster: one round trip per window, which made `convert rbd: -> raw`
//! twice as slow as qemu-img. One pass now records up to [`MAX_RUNS`] runs of objects
//! that exist (merged while contiguous and alike); answers inside what the pass covered
//! come from the record, and the gaps between runs are holes. The owner clears the record
//! on every write, zeroing and resize.

use super::cluster::rbd_error;
use super::ffi;
use std::io;
use std::os::raw::{c_int, c_void};
use std::ptr;

/// Most runs one pass records (24 bytes each); past them the pass stops and a later query
/// starts another.
pub const MAX_RUNS: usize = 4096;

/// Returned by the callback to stop the iteration.
const STOP: c_int = -9000;

/// A run of objects that exist or (when librbd says so) do not.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    start: u64,
    len: u64,
    exists: bool,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What one pass found for `[from, to)`, runs in offset order.
#[derive(Default)]
pub struct Extents {
    from: u64,
    to: u64,
    runs: Vec<Run>,
}

/// The pass in progress: runs so far, and where it stopped when they filled up.
struct Collector {
    runs: Vec<Run>,
    stopped_at: Option<u64>,
}

extern "C" fn collect(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Collector` that `fill` passed and keeps alive for the call;
    // librbd calls back on the calling thread while rbd_diff_iterate2 runs.
    let c = unsafe { &mut *(arg as *mut Collector) };
    c.add(offset, len as u64, exists != 0)
}

impl Collector {
    fn add(&mut self, offset: u64, len: u64, exists: bool) -> c_int {
        if let Some(last) = self.runs.last_mut() {
            if last.end() == offset && last.exists == exists {
                last.len += len;
                return 0;
            }
        }
        if self.runs.len() == MAX_RUNS {
            self.stopped_at = Some(offset);
            return STOP;
        }
        self.runs.push(Run {
            start: offset,
            len,
            exists,
        });
        0
    }
}

impl Extents {
    /// Forget everything (the image changed).
    pub fn clear(&mut self) {
        *self = Extents::default();
    }

    /// Whether `offset` holds data and for how long the answer holds, if the record
    /// covers `offset`.
    pub fn lookup(&self, offset: u64) -> Option<(bool, u64)> {
        if offset < self.from || offset >= self.to {
            return None;
        }
        // The last run starting at or before `offset`, and the one after it.
        let i = self.runs.partition_point(|r| r.start <= offset);
        if let Some(r) = i.checked_sub(1).map(|j| self.runs[j]) {
            if offset < r.end() {
                return Some((r.exists, r.end().min(self.to) - offset));
            }
        }
        let next = self.runs.get(i).map_or(self.to, |r| r.start);
        Some((false, next - offset))
    }

    /// Every byte from `from` to `size` is data (no usable object map).
    pub fn all_data(&mut self, from: u64, size: u64) {
        self.runs = vec![Run {
            start: from,
            len: size - from,
            exists: true,
        }];
        (self.from, self.to) = (from, size);
    }

    /// Record the objects from `offset` to `size` with one `rbd_diff_iterate2` pass.
    pub fn fill(&mut self, image: ffi::rbd_image_t, offset: u64, size: u64) -> io::Result<()> {
        self.clear();
        let mut c = Collector {
            runs: Vec::new(),
            stopped_at: None,
        };
        // SAFETY: open image handle; `c` outlives the call and the callback only runs
        // during it.
        let r = unsafe {
            ffi::rbd_diff_iterate2(
                image,
                ptr::null(),
                offset,
                size - offset,
                1,
                1,
                collect,
                (&mut c as *mut Collector).cast(),
            )
        };
        if r < 0 && r != STOP {
            return Err(rbd_error(r.into(), "error querying allocated extents"));
        }
        self.to = c.stopped_at.unwrap_or(size);
        self.from = offset;
        self.runs = c.runs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(from: u64, to: u64, found: &[(u64, u64, bool)]) -> Extents {
        let mut c = Collector {
            runs: Vec::new(),
            stopped_at: None,
        };
        for &(o, l, e) in found {
            assert_eq!(c.add(o, l, e), 0);
        }
        Extents {
            from,
            to,
            runs: c.runs,
        }
    }

    #[test]
    fn runs_merge_and_gaps_read_as_holes() {
        const M: u64 = 4 << 20;
        // Objects 1-2 (reported separately, merged), 5, and nothing after 6.
        let e = record(
            0,
            10 * M,
            &[(M, M, true), (2 * M, M, true), (5 * M, M, true)],
        );
        assert_eq!(e.runs.len(), 2);
        assert_eq!(e.lookup(0), Some((false, M)));
        assert_eq!(e.lookup(M + 7), Some((true, 2 * M - 7)));
        assert_eq!(e.lookup(3 * M), Some((false, 2 * M)));
        assert_eq!(e.lookup(5 * M), Some((true, M)));
        assert_eq!(e.lookup(6 * M), Some((false, 4 * M)));
        assert_eq!(e.lookup(10 * M), None);
        // Before the pass's start: not covered.
        let later = record(3 * M, 10 * M, &[(5 * M, M, true)]);
        assert_eq!(later.lookup(2 * M), None);
        assert_eq!(later.lookup(3 * M), Some((false, 2 * M)));
    }

    #[test]
    fn a_full_record_stops_the_pass_where_the_next_run_starts() {
        let mut c = Collector {
            runs: Vec::new(),
            stopped_at: None,
        };
        for i in 0..MAX_RUNS as u64 {
            assert_eq!(c.add(i * 2, 1, true), 0);
        }
        assert_eq!(c.add(MAX_RUNS as u64 * 2, 1, true), STOP);
        assert_eq!(c.stopped_at, Some(MAX_RUNS as u64 * 2));
        let e = Extents {
            from: 0,
            to: MAX_RUNS as u64 * 2,
            runs: c.runs,
        };
        assert_eq!(e.lookup(MAX_RUNS as u64 * 2 - 1), Some((false, 1)));
        assert_eq!(e.lookup(MAX_RUNS as u64 * 2), None);
    }
}
