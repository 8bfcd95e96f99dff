//! `bench`: qemu-img bench's I/O benchmark over any [`BlockDevice`]: `count` requests of
//! `buffer_size` bytes, the first at `offset` and each next one `step` bytes further,
//! wrapping as qemu-img wraps them, read or (with `write`) written with a pattern byte.
//!
//! # Request order
//!
//! Request 0 is at `offset`; request `i + 1` is at `(offset_i + step) mod size` (0 on an
//! empty disk): qemu-img 10.0's rule, so the two tools touch the same bytes. As in
//! qemu-img 10.0, a request that does not fit in the disk (the first one past the end, or
//! a wrapped one that straddles it) fails the run with `Failed request: Input/output
//! error`; the requests before it have been done. (QEMU later changed the wrap to
//! `size - buffer_size`, which keeps every request inside the disk.)
//!
//! # Depth
//!
//! qemu-img keeps up to `depth` requests in flight on one image. A [`BlockDevice`] serves
//! one request at a time, so vdisk runs reads on one thread per opened device (the caller
//! opens up to `depth` read-only copies of the image, at most [`MAX_READERS`], see
//! [`open_devices`]); each thread takes the next request number in qemu-img's order.
//! Writes go to one device, in order: the image then holds what qemu-img's writes leave,
//! and a flush every `flush_interval` requests is a flush after that many completions
//! (`--no-drain` has nothing to drain).

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The largest request count, depth, buffer size, step and flush interval qemu-img takes
/// (a C `int`).
pub const MAX_INT_ARG: u64 = i32::MAX as u64;

/// What to run, as qemu-img bench's flags say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Requests to send (`-c`, default 75000).
    pub count: u64,
    /// Requests in flight at once (`-d`, default 64).
    pub depth: u64,
    /// Guest offset of the first request (`-o`).
    pub offset: u64,
    /// Bytes per request (`-s`, default 4096).
    pub buffer_size: u64,
    /// Distance between consecutive requests (`-S`); 0 means `buffer_size`.
    pub step: u64,
    /// Write instead of read (`-w`).
    pub write: bool,
    /// The byte written (`--pattern`).
    pub pattern: u8,
    /// Flush after this many requests (`--flush-interval`); 0 never.
    pub flush_interval: u64,
    /// Wait for requests in flight before a flush (cleared by `--no-drain`).
    pub drain_on_flush: bool,
    /// Flush after every write (cache modes `writethrough` and `directsync`).
    pub flush_each_write: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            count: 75000,
            depth: 64,
            offset: 0,
            buffer_size: 4096,
            step: 0,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain_on_flush: true,
            flush_each_write: false,
        }
    }
}

impl BenchOptions {
    /// Refuse the combinations qemu-img refuses before opening the image.
    pub fn check(&self) -> Result<()> {
        if !self.write && self.flush_interval != 0 {
            return Err(Error::invalid(
                "--flush-interval is only available in write tests",
            ));
        }
        if self.flush_interval != 0 && self.flush_interval < self.depth {
            return Err(Error::invalid("Flush interval can't be smaller than depth"));
        }
        Ok(())
    }

    /// The distance between requests: `step`, or the buffer size when it is 0.
    pub fn effective_step(&self) -> u64 {
        if self.step == 0 {
            self.buffer_size
        } else {
            self.step
        }
    }

    /// The lines qemu-img prints before the run, each ending in a newline.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})\n",
            self.count,
            if self.write { "write" } else { "read" },
            self.buffer_size,
            self.depth,
            self.offset,
            self.effective_step()
        );
        if self.flush_interval != 0 {
            s.push_str(&format!(
                "Sending flush every {} requests\n",
                self.flush_interval
            ));
        }
        s
    }
}

/// A whole `bench` of the image at `path` (with `opts` already checked): open it as `how`
/// says, `print` the summary, run, close, and `print` the completion line. A failed run
/// still closes the image, so the requests done before it are kept.
pub fn bench_file(
    path: &Path,
    how: &OpenFor,
    opts: &BenchOptions,
    print: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let mut devices = open_devices(path, how, opts)?;
    print(&opts.summary())?;
    let result = run(&mut devices, opts);
    let closed = devices.iter_mut().try_for_each(|d| d.close());
    print(&completion_line(result?))?;
    closed
}

/// The line qemu-img prints after the run.
pub fn completion_line(elapsed: Duration) -> String {
    format!("Run completed in {:.3} seconds.\n", elapsed.as_secs_f64())
}

/// The guest offsets of a run's requests on a disk of `size` bytes, in qemu-img's order.
#[derive(Debug, Clone, Copy)]
pub struct RequestOffsets {
    first: u64,
    step: u64,
    size: u64,
}

impl RequestOffsets {
    /// The order `opts` gives on a disk of `size` bytes.
    pub fn new(opts: &BenchOptions, size: u64) -> Self {
        RequestOffsets {
            first: opts.offset,
            step: opts.effective_step(),
            size,
        }
    }

    /// The offset of request `i` (0-based): `(offset + i * step) mod size` after the first.
    pub fn offset(&self, i: u64) -> u64 {
        match (i, self.size) {
            (0, _) => self.first,
            (_, 0) => 0,
            (i, size) => {
                let ahead = u128::from(self.first) + u128::from(i) * u128::from(self.step);
                (ahead % u128::from(size)) as u64
            }
        }
    }
}

/// qemu-img's error for a request that failed; one outside the disk fails as an I/O error.
fn failed(e: Error) -> Error {
    Error::invalid(format!("Failed request: {e}"))
}

fn check_request(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::invalid("Failed request: Input/output error")),
    }
}

/// A buffer of `len` bytes of `fill`, or an error when memory for it cannot be had.
fn buffer(len: u64, fill: u8) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| Error::invalid("Out of buffer memory"))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| Error::invalid("Out of buffer memory"))?;
    buf.resize(len, fill);
    Ok(buf)
}

/// Run the benchmark on `devices` (copies of one image; writes use the first only) and
/// return how long the requests took. Every device must have the same size.
pub fn run(devices: &mut [Box<dyn BlockDevice>], opts: &BenchOptions) -> Result<Duration> {
    let first = devices
        .first_mut()
        .ok_or_else(|| Error::invalid("bench needs an open image"))?;
    let size = first.virtual_size();
    let order = RequestOffsets::new(opts, size);
    if opts.write {
        let buf = buffer(opts.buffer_size, opts.pattern)?;
        let start = Instant::now();
        write_all(first.as_mut(), opts, &order, &buf)?;
        return Ok(start.elapsed());
    }
    let mut buffers = Vec::with_capacity(devices.len());
    for _ in devices.iter() {
        buffers.push(buffer(opts.buffer_size, opts.pattern)?);
    }
    let start = Instant::now();
    read_parallel(devices, &order, size, opts.count, &mut buffers)?;
    Ok(start.elapsed())
}

/// Writes, in order on one device, with the flushes `opts` asks for.
fn write_all(
    dev: &mut dyn BlockDevice,
    opts: &BenchOptions,
    order: &RequestOffsets,
    buf: &[u8],
) -> Result<()> {
    let size = dev.virtual_size();
    for i in 0..opts.count {
        let offset = order.offset(i);
        check_request(size, offset, opts.buffer_size)?;
        dev.write_at(buf, offset).map_err(failed)?;
        if opts.flush_each_write {
            dev.flush().map_err(failed)?;
        }
        // As qemu-img: flush when the requests not yet sent are a multiple of the interval.
        let unsent = opts.count - i - 1;
        if opts.flush_interval != 0 && unsent % opts.flush_interval == 0 {
            dev.flush().map_err(failed)?;
        }
    }
    Ok(())
}

/// The request numbers still to send, shared by the reading threads.
struct Queue {
    next: AtomicU64,
    count: u64,
    failed: AtomicBool,
}

impl Queue {
    /// The next request number, or `None` when all are taken or one has failed.
    fn take(&self) -> Option<u64> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.count).then_some(i)
    }
}

/// Reads on one device, taking request numbers from `queue` until it is empty.
fn read_requests(
    dev: &mut dyn BlockDevice,
    order: &RequestOffsets,
    size: u64,
    buf: &mut [u8],
    queue: &Queue,
) -> Result<()> {
    while let Some(i) = queue.take() {
        let offset = order.offset(i);
        let result = check_request(size, offset, buf.len() as u64)
            .and_then(|()| dev.read_at(buf, offset).map_err(failed));
        if let Err(e) = result {
            queue.failed.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }
    Ok(())
}

/// Reads spread over one thread per device (the calling thread when there is one device),
/// each taking the next request number in qemu-img's order.
fn read_parallel(
    devices: &mut [Box<dyn BlockDevice>],
    order: &RequestOffsets,
    size: u64,
    count: u64,
    buffers: &mut [Vec<u8>],
) -> Result<()> {
    let queue = Queue {
        next: AtomicU64::new(0),
        count,
        failed: AtomicBool::new(false),
    };
    if let ([dev], [buf]) = (&mut *devices, &mut *buffers) {
        return read_requests(dev.as_mut(), order, size, buf, &queue);
    }
    std::thread::scope(|scope| {
        let queue = &queue;
        let handles: Vec<_> = devices
            .iter_mut()
            .zip(buffers.iter_mut())
            .map(|(dev, buf)| {
                scope.spawn(move || read_requests(dev.as_mut(), order, size, buf, queue))
            })
            .collect();
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::invalid("a bench thread failed")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// The most copies of an image a read test opens (each read by its own thread). Reads
/// from disk gain from every request in flight (4 KiB reads spread over a cold 512 MiB raw
/// image: 1.8–5.7 s on one thread, 0.55–0.69 s on 8, 0.33–0.60 s on 16, 0.29–0.35 s on 64;
/// from the page cache the thread count makes no measurable difference); 32 keeps most of
/// that gain without opening a long backing chain 64 times.
pub const MAX_READERS: u64 = 32;

/// The most memory the buffers of a read test's threads may take together: fewer threads
/// read when their buffers are large (one always does; its buffer is at most 2 GiB).
pub const MAX_READ_BUFFERS: u64 = 1 << 30;

/// How the image is cached, as qemu-img's `-t` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// `writeback` (the default): flush only when asked.
    Writeback,
    /// `none`: host cache bypassed in qemu; flushes as `writeback` in vdisk.
    None,
    /// `writethrough`: every write is flushed.
    Writethrough,
    /// `directsync`: `none` with every write flushed.
    Directsync,
    /// `unsafe`: flushes are skipped.
    Unsafe,
}

impl CacheMode {
    /// Parse a `-t` value with qemu-img's refusal.
    pub fn parse(s: &str) -> Result<CacheMode> {
        match s {
            "writeback" => Ok(CacheMode::Writeback),
            "none" | "off" => Ok(CacheMode::None),
            "writethrough" => Ok(CacheMode::Writethrough),
            "directsync" => Ok(CacheMode::Directsync),
            "unsafe" => Ok(CacheMode::Unsafe),
            _ => Err(Error::invalid("Invalid cache mode")),
        }
    }

    /// Whether the mode bypasses the host cache in qemu (`cache.direct=on`).
    pub fn is_direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    /// Whether every write is flushed.
    pub fn flushes_each_write(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }
}

/// The asynchronous I/O engine qemu-img is asked for (`-i`, `-n`): accepted, and checked
/// as qemu-img checks it; vdisk's requests are plain positioned reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aio {
    /// `threads` (the default).
    #[default]
    Threads,
    /// `io_uring`.
    IoUring,
    /// `native` (Linux AIO), which qemu allows only with `cache.direct=on`.
    Native,
}

impl Aio {
    /// Parse an `-i` value with qemu-img's refusal.
    pub fn parse(s: &str) -> Result<Aio> {
        match s {
            "threads" => Ok(Aio::Threads),
            "io_uring" => Ok(Aio::IoUring),
            "native" => Ok(Aio::Native),
            _ => Err(Error::invalid(format!("Invalid aio option: {s}"))),
        }
    }
}

/// How to open the image for [`open_devices`].
#[derive(Debug, Clone, Copy)]
pub struct OpenFor {
    /// The format, probed when `None`.
    pub format: Option<Format>,
    /// The cache mode (`-t`).
    pub cache: CacheMode,
    /// The AIO engine (`-i`, `-n`).
    pub aio: Aio,
    /// Open without locking out other users (`-U`); read tests only.
    pub force_share: bool,
}

/// Open the image at `path` for `opts`: one read-write device for a write test; for a read
/// test, one read-only device per request kept in flight, up to [`MAX_READERS`].
/// Refuses what qemu-img refuses when it opens the image (`-U` with `-w`, native AIO
/// without a direct cache mode), naming the file as qemu-img does.
pub fn open_devices(
    path: &Path,
    how: &OpenFor,
    opts: &BenchOptions,
) -> Result<Vec<Box<dyn BlockDevice>>> {
    let refuse = |why: &str| {
        Err(Error::invalid(format!(
            "Could not open '{}': {why}",
            path.display()
        )))
    };
    if how.force_share && opts.write {
        return refuse("force-share=on can only be used with read-only images");
    }
    if how.aio == Aio::Native && !how.cache.is_direct() {
        return refuse(
            "aio=native was specified, but it requires cache.direct=on, which was not specified.",
        );
    }
    let image_opts = ImageOptions {
        format: how.format,
        read_only: !opts.write,
        unsafe_cache: how.cache == CacheMode::Unsafe,
        force_share: how.force_share,
        ..Default::default()
    };
    let copies = if opts.write {
        1
    } else {
        let by_memory = (MAX_READ_BUFFERS / opts.buffer_size.max(1)).max(1);
        opts.depth
            .min(opts.count)
            .min(by_memory)
            .clamp(1, MAX_READERS)
    };
    let mut devices = Vec::new();
    for _ in 0..copies {
        devices.push(image::open(path, &image_opts)?.device);
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(offset: u64, buffer_size: u64, step: u64, size: u64) -> Vec<u64> {
        let opts = BenchOptions {
            offset,
            buffer_size,
            step,
            ..Default::default()
        };
        let o = RequestOffsets::new(&opts, size);
        (0..6).map(|i| o.offset(i)).collect()
    }

    #[test]
    fn requests_step_through_the_disk_and_wrap_at_its_size() {
        assert_eq!(order(0, 4096, 0, 16384), [0, 4096, 8192, 12288, 0, 4096]);
        // A start past the end is used once, then wrapped.
        assert_eq!(
            order(20000, 512, 4096, 16384),
            [20000, 7712, 11808, 15904, 3616, 7712]
        );
        // 15904 + 512 bytes straddles the end: that request fails (see `run`).
    }

    #[test]
    fn an_empty_disk_repeats_offset_zero() {
        assert_eq!(order(512, 4096, 512, 0), [512, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn flush_interval_needs_a_write_test_and_at_least_the_depth() {
        let mut o = BenchOptions {
            flush_interval: 64,
            ..Default::default()
        };
        assert!(o.check().is_err());
        o.write = true;
        assert!(o.check().is_ok());
        o.flush_interval = 63;
        assert_eq!(
            o.check().unwrap_err().to_string(),
            "Flush interval can't be smaller than depth"
        );
    }
}
