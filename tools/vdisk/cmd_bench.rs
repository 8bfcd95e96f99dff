//! `vdisk bench [-f FMT] [-t CACHE] [-c COUNT] [-d DEPTH] [-o OFFSET] [-s BUFFER_SIZE]
//! [-S STEP_SIZE] [-i AIO] [-n] [-w [--pattern N] [--flush-interval N [--no-drain]]] [-U]
//! [-q] FILE`
//!
//! Prints qemu-img bench's two summary lines, so the tools can be compared on one image.

use crate::flags::{CacheFlag, ForceShareFlag, FormatFlag, QuietFlag};
use crate::output::out;
use std::path::Path;
use std::process::ExitCode;
use vdisk::ops::bench::{self, Aio, BenchOptions, CacheMode, OpenFor, MAX_INT_ARG};
use vdisk::size::{parse_int_arg, parse_size_arg};
use vdisk::{Error, Result};

/// Arguments of `bench`. Values are kept as text and checked as qemu-img checks them, so
/// that a bad one gets qemu-img's message; a repeated flag takes its last value.
#[derive(clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    // The cache mode of the image benchmarked (writeback unless given).
    #[command(flatten)]
    cache: CacheFlag,
    /// Number of I/O requests to perform (default 75000).
    #[arg(short = 'c', long = "count", allow_hyphen_values = true)]
    count: Option<String>,
    /// Number of requests to perform in parallel (default 64).
    #[arg(short = 'd', long = "depth", allow_hyphen_values = true)]
    depth: Option<String>,
    /// Start the first request at this offset.
    #[arg(short = 'o', long = "offset", allow_hyphen_values = true)]
    offset: Option<String>,
    /// Size of each request (default 4096).
    #[arg(short = 's', long = "buffer-size", allow_hyphen_values = true)]
    buffer_size: Option<String>,
    /// Offset increment between requests (default: the buffer size).
    #[arg(short = 'S', long = "step-size", allow_hyphen_values = true)]
    step: Option<String>,
    /// Async I/O engine: threads, io_uring or native (accepted; vdisk uses positioned I/O).
    #[arg(short = 'i', long = "aio", allow_hyphen_values = true)]
    aio: Option<String>,
    /// Use native AIO (as -i native).
    #[arg(short = 'n', long = "native")]
    native: bool,
    /// Write test (default: read).
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// Byte written by a write test (default 0).
    #[arg(long = "pattern", allow_hyphen_values = true)]
    pattern: Option<String>,
    /// Flush after this many requests (write tests).
    #[arg(long = "flush-interval", allow_hyphen_values = true)]
    flush_interval: Option<String>,
    /// Do not wait for requests in flight before a flush.
    #[arg(long = "no-drain")]
    no_drain: bool,
    #[command(flatten)]
    force_share: ForceShareFlag,
    // Accepted as qemu-img does: bench prints its two lines even with -q.
    #[command(flatten)]
    quiet: QuietFlag,
    /// The image (exactly one; checked as qemu-img checks it).
    #[arg(value_name = "FILE")]
    files: Vec<String>,
}

/// The options in qemu-img's order of checks: each value, then the file name, then the
/// combinations.
fn options(a: &Args) -> Result<(BenchOptions, OpenFor)> {
    let int = |s: &Option<String>, what, min| {
        s.as_deref()
            .map(|v| parse_int_arg(v, what, min, MAX_INT_ARG as i64).map(|n| n as u64))
            .transpose()
    };
    let size = |s: &Option<String>, what, min, max| {
        s.as_deref()
            .map(|v| parse_size_arg(v, what, min, max))
            .transpose()
    };
    let mut o = BenchOptions::default();
    o.count = int(&a.count, "request count", 1)?.unwrap_or(o.count);
    o.depth = int(&a.depth, "queue depth", 1)?.unwrap_or(o.depth);
    o.offset = size(&a.offset, "offset", 0, i64::MAX as u64)?.unwrap_or(0);
    o.buffer_size = size(&a.buffer_size, "buffer size", 1, MAX_INT_ARG)?.unwrap_or(o.buffer_size);
    o.step = size(&a.step, "step size", 0, MAX_INT_ARG)?.unwrap_or(0);
    let cache = a.cache.get().map(CacheMode::parse).transpose()?;
    let cache = cache.unwrap_or(CacheMode::Writeback);
    let mut aio = a
        .aio
        .as_deref()
        .map(Aio::parse)
        .transpose()?
        .unwrap_or_default();
    if a.native {
        aio = Aio::Native;
    }
    o.write = a.write;
    let pattern = a.pattern.as_deref();
    o.pattern = pattern
        .map(|p| parse_int_arg(p, "pattern byte", 0, 255))
        .transpose()?
        .unwrap_or(0) as u8;
    o.flush_interval = int(&a.flush_interval, "flush interval", 0)?.unwrap_or(0);
    o.drain_on_flush = !a.no_drain;
    o.flush_each_write = cache.flushes_each_write();
    let how = OpenFor {
        format: None,
        cache,
        aio,
        force_share: a.force_share.on(),
    };
    Ok((o, how))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = a.quiet.on();
    let (opts, mut how) = options(&a)?;
    let [file] = a.files.as_slice() else {
        return Err(Error::invalid(
            "Expecting one image file name\nTry 'vdisk bench --help' for more info",
        ));
    };
    opts.check()?;
    if file.is_empty() {
        return Err(Error::invalid(crate::flags::EMPTY_FILE_NAME));
    }
    how.format = a.format.get_for(Path::new(file))?;
    bench::bench_file(Path::new(file), &how, &opts, &mut |text| out!("{text}"))?;
    Ok(ExitCode::SUCCESS)
}
