//! [`RbdStorage`]: an RBD image as a [`Storage`].
//!
//! Writes are asynchronous: `write_at` copies the buffer, hands it to librbd
//! (`rbd_aio_write`) and returns, keeping up to [`MAX_IN_FLIGHT`] requests and
//! [`MAX_IN_FLIGHT_BYTES`] bytes in flight (the oldest is waited for when either is full).
//! A failed request is reported by the next call that waits: a later write, `flush`, or a
//! read of the same range; `flush` waits for every request. librbd does not order
//! overlapping requests that are in flight together, so a read, write or zeroing that
//! overlaps one waits for all of them first.
//!
//! Holes: `punch_hole` is `rbd_write_zeroes` (whole objects are deallocated, partial ones
//! zeroed). `data_extent` asks `rbd_diff_iterate2` for the objects that exist, as QEMU's
//! rbd driver does, and only on images with a valid fast-diff object map (otherwise
//! everything is data, as in QEMU).

use super::cluster::{self, rbd_error, Cluster, ImageHandle, Pool};
use super::extents::Extents;
use super::ffi;
use super::name::RbdName;
use super::readahead::{ReadAhead, Request};
use crate::storage::Storage;
use std::collections::VecDeque;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Most write requests in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Most bytes of write requests in flight at once (their buffers are held until done).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Largest single librbd request; longer reads and zeroings are split.
const MAX_REQUEST: u64 = 1 << 30;

/// One write handed to librbd and not yet waited for.
struct InFlight {
    completion: ffi::rbd_completion_t,
    offset: u64,
    /// The bytes librbd reads from until the request completes.
    buf: Vec<u8>,
}

// SAFETY: a completion is a handle librbd lets any thread wait on; only the owner of the
// `InFlight` (behind the window's mutex) waits on and releases it.
unsafe impl Send for InFlight {}

impl InFlight {
    /// Wait for the request, release it, and return its result.
    fn finish(self) -> io::Result<()> {
        // SAFETY: the completion is live (released only here, once).
        let r = unsafe {
            ffi::rbd_aio_wait_for_complete(self.completion);
            let r = ffi::rbd_aio_get_return_value(self.completion);
            ffi::rbd_aio_release(self.completion);
            r
        };
        drop(self.buf);
        if r < 0 {
            return Err(rbd_error(
                r as i64,
                &format!("error writing at {:#x}", self.offset),
            ));
        }
        Ok(())
    }

    fn overlaps(&self, offset: u64, len: u64) -> bool {
        offset < self.offset + self.buf.len() as u64 && self.offset < offset.saturating_add(len)
    }
}

/// The writes in flight, and the first error one of them returned.
#[derive(Default)]
struct Window {
    requests: VecDeque<InFlight>,
    bytes: usize,
    error: Option<io::Error>,
}

impl Window {
    fn finish_oldest(&mut self) {
        if let Some(req) = self.requests.pop_front() {
            self.bytes -= req.buf.len();
            if let Err(e) = req.finish() {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Wait for every request; the first error since the last drain, if any.
    fn drain(&mut self) -> io::Result<()> {
        while !self.requests.is_empty() {
            self.finish_oldest();
        }
        self.error.take().map_or(Ok(()), Err)
    }

    /// Drain if a request overlaps `[offset, offset+len)`.
    fn drain_overlapping(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.requests.iter().any(|r| r.overlaps(offset, len)) {
            self.drain()?;
        }
        Ok(())
    }
}

/// An open RBD image. Fields drop in order: image, pool, cluster (`Drop` first waits for
/// every request in flight). Locks are taken read-ahead first, then the write window, then the extents.
pub struct RbdStorage {
    image: ImageHandle,
    _pool: Pool,
    _cluster: Cluster,
    window: Mutex<Window>,
    readahead: Mutex<ReadAhead>,
    /// Where the objects are, as last learned (cleared by every change).
    extents: Mutex<Extents>,
    size: AtomicU64,
    /// Bytes per RADOS object (4 MiB by default): qemu-img's cluster size for RBD.
    object_size: u64,
    writable: bool,
    unsafe_cache: bool,
}

impl RbdStorage {
    /// Open the image `name` (read-only unless `write`); with `unsafe_cache`, `flush`
    /// waits for the requests in flight but does not ask librbd to flush its cache.
    pub fn open(name: &RbdName, write: bool, unsafe_cache: bool) -> io::Result<Self> {
        let (pool, cluster) = cluster::connect(name)?;
        let image = cluster::open_image(&pool, name, write)?;
        Self::new(image, pool, cluster, write, unsafe_cache)
    }

    /// Create the image `name` (an error if it exists) and open it for writing.
    pub fn create(name: &RbdName, unsafe_cache: bool) -> io::Result<Self> {
        let (pool, cluster) = cluster::connect(name)?;
        cluster::create_image(&pool, name)?;
        let image = cluster::open_image(&pool, name, true)?;
        Self::new(image, pool, cluster, true, unsafe_cache)
    }

    /// Remove the image `name`.
    pub fn remove(name: &RbdName) -> io::Result<()> {
        let (pool, cluster) = cluster::connect(name)?;
        let removed = cluster::remove_image(&pool, name);
        // The I/O context goes before the cluster handle it belongs to (a tuple's
        // bindings would drop the other way round, and rados_shutdown then waits).
        drop(pool);
        drop(cluster);
        removed
    }

    fn new(
        image: ImageHandle,
        pool: Pool,
        cluster: Cluster,
        writable: bool,
        unsafe_cache: bool,
    ) -> io::Result<Self> {
        // SAFETY: rbd_image_info_t is plain data; all zeros is a valid value.
        let mut stat: ffi::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: open image handle; `stat` is valid for the size passed.
        let r = unsafe {
            ffi::rbd_stat(
                image.0,
                &mut stat,
                std::mem::size_of::<ffi::rbd_image_info_t>(),
            )
        };
        if r < 0 {
            return Err(rbd_error(r.into(), "error reading the image size"));
        }
        Ok(RbdStorage {
            image,
            _pool: pool,
            _cluster: cluster,
            window: Mutex::new(Window::default()),
            readahead: Mutex::new(ReadAhead::default()),
            extents: Mutex::new(Extents::default()),
            size: AtomicU64::new(stat.size),
            object_size: stat.obj_size,
            writable,
            unsafe_cache,
        })
    }

    fn window(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn readahead(&self) -> MutexGuard<'_, ReadAhead> {
        self.readahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn extents(&self) -> MutexGuard<'_, Extents> {
        self.extents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image is about to change: drop what was read ahead and what is known of its
    /// objects. Returns the read-ahead lock, which the change holds.
    fn changing(&self) -> MutexGuard<'_, ReadAhead> {
        let mut readahead = self.readahead();
        readahead.clear();
        self.extents().clear();
        readahead
    }

    /// Read `buf` at `offset` (within the image) with synchronous requests.
    fn read_sync(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQUEST as usize);
            let at = offset + done as u64;
            let chunk = &mut buf[done..done + n];
            // SAFETY: open image handle; `chunk` is valid for `n` bytes of writes.
            let r = unsafe { ffi::rbd_read(self.image.0, at, n, chunk.as_mut_ptr().cast()) };
            if r < 0 {
                return Err(rbd_error(r as i64, &format!("error reading at {at:#x}")));
            }
            if r == 0 {
                // The image shrank under us: the rest reads as zeros.
                buf[done..].fill(0);
                break;
            }
            done += r as usize;
        }
        Ok(())
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "rbd image is open read-only",
            ))
        }
    }

    fn resize_locked(&self, window: &mut Window, len: u64) -> io::Result<()> {
        self.check_writable()?;
        window.drain()?;
        // SAFETY: open image handle.
        let r = unsafe { ffi::rbd_resize(self.image.0, len) };
        if r < 0 {
            return Err(rbd_error(r.into(), "error resizing the image"));
        }
        self.size.store(len, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the object map can say which objects exist (as QEMU asks it).
    fn has_fast_diff(&self) -> io::Result<bool> {
        let (mut features, mut flags) = (0u64, 0u64);
        // SAFETY: open image handle, valid out-pointers.
        let r = unsafe { ffi::rbd_get_features(self.image.0, &mut features) };
        if r < 0 {
            return Err(rbd_error(r.into(), "error reading the image features"));
        }
        // SAFETY: as above.
        let r = unsafe { ffi::rbd_get_flags(self.image.0, &mut flags) };
        if r < 0 {
            return Err(rbd_error(r.into(), "error reading the image flags"));
        }
        Ok(features & ffi::RBD_FEATURE_FAST_DIFF != 0
            && flags & ffi::RBD_FLAG_FAST_DIFF_INVALID == 0)
    }
}

impl Storage for RbdStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut readahead = self.readahead();
        self.window().drain_overlapping(offset, buf.len() as u64)?;
        let size = self.size.load(Ordering::SeqCst);
        let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(avail);
        tail.fill(0);
        let served = readahead.serve(head, offset)?;
        self.read_sync(&mut head[served..], offset + served as u64)?;
        let request = Request {
            image: self.image.0,
            offset,
            len: head.len() as u64,
            size,
            object: self.object_size,
        };
        readahead.advance(request, served);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past 2^64"))?;
        let _readahead = self.changing();
        let mut window = self.window();
        if end > self.size.load(Ordering::SeqCst) {
            self.resize_locked(&mut window, end)?;
        }
        window.drain_overlapping(offset, buf.len() as u64)?;
        while window.requests.len() >= MAX_IN_FLIGHT
            || (window.bytes + buf.len() > MAX_IN_FLIGHT_BYTES && !window.requests.is_empty())
        {
            window.finish_oldest();
        }
        if let Some(e) = window.error.take() {
            return Err(e);
        }
        let data = buf.to_vec();
        let mut completion: ffi::rbd_completion_t = ptr::null_mut();
        // SAFETY: valid out-pointer; no callback.
        let r = unsafe { ffi::rbd_aio_create_completion(ptr::null_mut(), None, &mut completion) };
        if r < 0 {
            return Err(rbd_error(r.into(), "error creating an rbd completion"));
        }
        // SAFETY: open image handle; `data` stays alive (in the window) until the
        // completion is waited for; the completion is fresh.
        let r = unsafe {
            ffi::rbd_aio_write(
                self.image.0,
                offset,
                data.len(),
                data.as_ptr().cast(),
                completion,
            )
        };
        if r < 0 {
            // SAFETY: the request was not queued; release the unused completion.
            unsafe { ffi::rbd_aio_release(completion) };
            return Err(rbd_error(
                r.into(),
                &format!("error writing at {offset:#x}"),
            ));
        }
        window.bytes += data.len();
        window.requests.push_back(InFlight {
            completion,
            offset,
            buf: data,
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.window().drain()?;
        if self.unsafe_cache || !self.writable {
            return Ok(());
        }
        // SAFETY: open image handle.
        let r = unsafe { ffi::rbd_flush(self.image.0) };
        if r < 0 {
            return Err(rbd_error(r.into(), "error flushing"));
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.size.load(Ordering::SeqCst))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let _readahead = self.changing();
        let mut window = self.window();
        self.resize_locked(&mut window, len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let _readahead = self.changing();
        let mut window = self.window();
        window.drain()?;
        let end = offset
            .saturating_add(len)
            .min(self.size.load(Ordering::SeqCst));
        let mut at = offset;
        while at < end {
            let n = (end - at).min(MAX_REQUEST);
            // SAFETY: open image handle; no buffers involved.
            let r = unsafe { ffi::rbd_write_zeroes(self.image.0, at, n as usize, 0, 0) };
            if r < 0 {
                return Err(rbd_error(r as i64, &format!("error zeroing at {at:#x}")));
            }
            at += n;
        }
        Ok(())
    }

    fn data_extent(&self, offset: u64) -> io::Result<(bool, u64)> {
        let size = self.size.load(Ordering::SeqCst);
        if offset >= size {
            return Ok((false, 0));
        }
        // Held throughout, so no change slips between the query and the record.
        let _order = self.readahead();
        if let Some(answer) = self.extents().lookup(offset) {
            return Ok(answer);
        }
        let fast_diff = self.has_fast_diff()?;
        // Requests in flight must reach the object map before it is asked.
        self.window().drain()?;
        let mut extents = self.extents();
        match fast_diff {
            true => extents.fill(self.image.0, offset, size)?,
            false => extents.all_data(offset, size),
        }
        Ok(extents.lookup(offset).unwrap_or((false, size - offset)))
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        // As QEMU's rbd driver: no figure (`rbd du` has one, at object granularity).
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "rbd images report no allocated size",
        ))
    }

    fn protocol(&self) -> &'static str {
        "rbd"
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.object_size)
    }
}

impl Drop for RbdStorage {
    fn drop(&mut self) {
        // Every buffer must outlive its request; errors were the caller's to collect with
        // flush, so they are dropped here.
        self.readahead().clear();
        let _ = self.window().drain();
    }
}
