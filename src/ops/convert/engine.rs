//! The convert engine's threads: one reader, a pool of workers, and the writer (the calling
//! thread). See the parent module for the design.

use super::{is_zero, nonzero_runs, ConvertOptions, Progress, CHUNK, SECTOR};
use crate::device::{BlockDevice, ClusterCodec, ExtentKind, StoredCodec, StoredRun};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

/// Upper bound on the window buffers in flight, in bytes (their compressed output can add
/// as much again, so peak memory stays well under 128 MiB).
const POOL_BYTES: u64 = 40 << 20;

/// Largest span of the disk one allocation-status query looks at when skipping holes.
const HOLE_PROBE: u64 = 1 << 30;

/// What the threads share, fixed before they start.
struct Plan {
    size: u64,
    /// Zero detection and compression unit: the destination cluster.
    gran: u64,
    /// Window length (a multiple of `gran`).
    window: u64,
    unallocated_is_zero: bool,
    /// The destination's codec, when writing compressed clusters.
    compress: Option<Arc<dyn ClusterCodec>>,
    /// The source's codec and cluster size, for inflating compressed source clusters.
    src_codec: Option<Arc<dyn ClusterCodec>>,
    src_cluster: u64,
    /// Write whole windows, zeros included, and form windows over zero runs too.
    fully_allocate: bool,
    /// Unreadable sectors become zeros instead of an error.
    salvage: bool,
}

/// A compressed source cluster that a worker inflates into its window.
struct Inflate {
    host: u64,
    data: Vec<u8>,
    /// Where the wanted part goes in the window.
    at: usize,
    /// The wanted part of the inflated cluster.
    in_off: usize,
    len: usize,
}

/// One window, from the reader to a worker.
struct Window {
    seq: u64,
    base: u64,
    buf: Vec<u8>,
    inflate: Vec<Inflate>,
    /// Runs of `buf` the source left as stored (encrypted), for a worker to decode.
    decode: Vec<(Arc<dyn StoredCodec>, StoredRun)>,
    /// Guest offsets of sectors that could not be read (salvaged as zeros).
    unreadable: Vec<u64>,
}

/// One write the writer performs.
enum Piece {
    /// Plain bytes `buf[start..end]`.
    Raw(usize, usize),
    /// A compressed cluster at this guest offset.
    Compressed(u64, Vec<u8>),
}

/// One processed window, from a worker to the writer.
struct Done {
    seq: u64,
    base: u64,
    buf: Vec<u8>,
    pieces: Vec<Piece>,
    unreadable: Vec<u64>,
}

/// Copy `src` into `dst` with the reader, workers and writer described in the module doc.
pub(super) fn run(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    opts: ConvertOptions,
    progress: Progress<'_>,
    unreadable: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = src.virtual_size().min(dst.virtual_size());
    let gran = match opts.zero_granularity {
        0 => dst.cluster_size().unwrap_or(4096).max(512),
        g => g,
    };
    let compress = match dst.cluster_codec() {
        Some(c) if opts.compress || c.always_compress() => Some(c),
        // As QEMU: a target with clusters but no compressed form of them (VMDK sparse
        // extents) takes compressed writes as ordinary ones; one without clusters (flat
        // VMDK extents) cannot take them.
        None if opts.compress && dst.cluster_size().is_none() => {
            return Err(Error::invalid("invalid cluster size"))
        }
        _ => None,
    };
    let src_codec = src.cluster_codec();
    let src_cluster = src.cluster_size().unwrap_or(0);
    let window = CHUNK.max(gran).max(src_cluster).next_multiple_of(gran);
    let workers = opts.worker_count().max(1);
    let pool = ((2 * workers + 2) as u64).min(POOL_BYTES / window).max(2) as usize;
    let in_order = !opts.out_of_order || dst.requires_sequential_writes();
    let plan = Plan {
        size,
        gran,
        window,
        unallocated_is_zero: opts.unallocated_is_zero,
        compress,
        src_codec,
        src_cluster,
        fully_allocate: opts.fully_allocate,
        salvage: opts.salvage,
    };
    let plan = &plan;
    std::thread::scope(|s| {
        let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(pool);
        for _ in 0..pool {
            let _ = pool_tx.send(Vec::new());
        }
        let (task_tx, task_rx) = sync_channel::<Window>(pool);
        let task_rx = Arc::new(Mutex::new(task_rx));
        let (done_tx, done_rx) = channel::<Result<Done>>();
        let reader_errors = done_tx.clone();
        s.spawn(move || {
            if let Err(e) = read_windows(src, plan, pool_rx, task_tx) {
                let _ = reader_errors.send(Err(e));
            }
        });
        for _ in 0..workers {
            let rx = Arc::clone(&task_rx);
            let tx = done_tx.clone();
            s.spawn(move || work(&rx, &tx, plan));
        }
        drop(done_tx);
        let pace = Pace::new(opts.rate_limit);
        let sinks = Sinks {
            progress,
            unreadable,
            pace,
        };
        write_windows(dst, done_rx, pool_tx, in_order, size, sinks)
    })
}

/// The reader: form windows of whole destination clusters that hold data, fill them, and
/// queue them for the workers. Returns early (without error) when the writer has stopped.
fn read_windows(
    src: &mut dyn BlockDevice,
    plan: &Plan,
    pool: Receiver<Vec<u8>>,
    tasks: SyncSender<Window>,
) -> Result<()> {
    let mut seq = 0u64;
    let mut a = 0u64;
    'windows: while a < plan.size {
        let b = (a + plan.window).min(plan.size);
        let mut pos = a;
        let mut win: Option<Window> = None;
        while pos < b {
            // Before any data, look far ahead so that a long hole costs one query.
            let probe = if win.is_none() {
                (plan.size - pos).min(HOLE_PROBE)
            } else {
                b - pos
            };
            let ext = src.block_status(pos, probe)?;
            let ext_end = pos + ext.length.max(1);
            let skip = match ext.kind {
                ExtentKind::Zero => true,
                ExtentKind::Unallocated => plan.unallocated_is_zero,
                ExtentKind::Data => false,
            };
            if skip && plan.fully_allocate && win.is_none() {
                let Some(w) = new_window(&pool, seq, a, b, pos) else {
                    return Ok(()); // the writer has stopped
                };
                win = Some(w);
            }
            if skip {
                match win.as_mut() {
                    None => {
                        let next = ext_end / plan.gran * plan.gran;
                        if next > a {
                            a = next;
                            continue 'windows;
                        }
                    }
                    // A reused buffer holds an older window's bytes: zero what is skipped.
                    Some(w) => w.buf[(pos - a) as usize..(ext_end.min(b) - a) as usize].fill(0),
                }
                pos = ext_end.min(b);
                continue;
            }
            let end = ext_end.min(b);
            if win.is_none() {
                let Some(w) = new_window(&pool, seq, a, b, pos) else {
                    return Ok(()); // the writer has stopped
                };
                win = Some(w);
            }
            let Some(w) = win.as_mut() else {
                unreachable!("window created above")
            };
            if ext.compressed && plan.src_codec.is_some() && plan.src_cluster > 0 {
                read_compressed_run(src, plan, w, pos, end)?;
            } else {
                read_or_salvage(src, plan, w, pos, end)?;
            }
            pos = end;
        }
        if let Some(w) = win {
            if tasks.send(w).is_err() {
                return Ok(());
            }
            seq += 1;
        }
        a = b;
    }
    Ok(())
}

/// A window `[a, b)` from the pool, with the part before `pos` zeroed; `None` when the
/// writer has stopped. Every byte from `pos` on is written by the reader (read, inflated or
/// zeroed), so a reused buffer is not cleared first.
fn new_window(pool: &Receiver<Vec<u8>>, seq: u64, a: u64, b: u64, pos: u64) -> Option<Window> {
    let mut buf = pool.recv().ok()?;
    let len = (b - a) as usize;
    buf.truncate(len);
    buf.resize(len, 0);
    buf[..(pos - a) as usize].fill(0);
    Some(Window {
        seq,
        base: a,
        buf,
        inflate: Vec::new(),
        decode: Vec::new(),
        unreadable: Vec::new(),
    })
}

/// qemu-img's error for a source read that failed at guest offset `pos` ("error while
/// reading at byte N: ..."), naming what failed where qemu-img says "Input/output error".
fn read_error(pos: u64, cause: Error) -> Error {
    Error::invalid(format!("error while reading at byte {pos}: {cause}"))
}

/// Read `[pos, end)` of the source into its window. When that fails: with `salvage`, read
/// it again sector by sector, zeroing and recording the sectors that fail; otherwise fail
/// with qemu-img's message.
fn read_or_salvage(
    src: &mut dyn BlockDevice,
    plan: &Plan,
    w: &mut Window,
    pos: u64,
    end: u64,
) -> Result<()> {
    let at = |p: u64| (p - w.base) as usize;
    let (i, j) = (at(pos), at(end));
    // Decryption is left to the workers: the reader only does I/O.
    let failed = match src.read_stored(&mut w.buf[i..j], pos) {
        Ok(None) => return Ok(()),
        Ok(Some(stored)) => {
            for run in stored.runs {
                let run = StoredRun {
                    start: run.start + i,
                    ..run
                };
                w.decode.push((Arc::clone(&stored.codec), run));
            }
            return Ok(());
        }
        Err(e) => e,
    };
    if !plan.salvage {
        return Err(read_error(pos, failed));
    }
    let mut p = pos;
    while p < end {
        let q = ((p / SECTOR + 1) * SECTOR).min(end);
        let (i, j) = (at(p), at(q));
        if src.read_at(&mut w.buf[i..j], p).is_err() {
            w.buf[i..j].fill(0);
            w.unreadable.push(p);
        }
        p = q;
    }
    Ok(())
}

/// Fetch the compressed source clusters covering `[pos, end)` for a worker to inflate
/// (or read them directly where the source hands out no stored bytes).
fn read_compressed_run(
    src: &mut dyn BlockDevice,
    plan: &Plan,
    w: &mut Window,
    mut pos: u64,
    end: u64,
) -> Result<()> {
    let cs = plan.src_cluster;
    while pos < end {
        let cluster = pos - pos % cs;
        let part_end = (cluster + cs).min(end);
        let at = (pos - w.base) as usize;
        let len = (part_end - pos) as usize;
        match src.read_compressed_cluster(cluster) {
            Ok(Some((host, data))) => w.inflate.push(Inflate {
                host,
                data,
                at,
                in_off: (pos - cluster) as usize,
                len,
            }),
            Ok(None) | Err(_) => read_or_salvage(src, plan, w, pos, part_end)?,
        }
        pos = part_end;
    }
    Ok(())
}

/// A worker: process windows until the reader is done or the writer has stopped.
fn work(tasks: &Mutex<Receiver<Window>>, done: &Sender<Result<Done>>, plan: &Plan) {
    loop {
        let next = match tasks.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(w) = next else { return };
        // A panic (a codec bug) must reach the writer as an error, or it would wait
        // forever for this window.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(w, plan)))
            .unwrap_or_else(|_| Err(Error::invalid("convert: a worker thread panicked")));
        if done.send(result).is_err() {
            return;
        }
    }
}

/// Decode (decrypt) a window's stored runs and inflate its compressed source clusters,
/// then decide what to write: nothing for all-zero clusters, compressed clusters when
/// compressing, plain runs otherwise.
fn process(mut w: Window, plan: &Plan) -> Result<Done> {
    for (codec, run) in std::mem::take(&mut w.decode) {
        let data = &mut w.buf[run.start..run.start + run.len];
        codec
            .decode(run.at, data)
            .map_err(|e| read_error(w.base + run.start as u64, e))?;
    }
    if let Some(codec) = &plan.src_codec {
        let cs = plan.src_cluster as usize;
        let mut scratch = Vec::new();
        for inf in std::mem::take(&mut w.inflate) {
            let out = &mut w.buf[inf.at..inf.at + inf.len];
            let inflated = if inf.in_off == 0 && inf.len == cs {
                codec.decompress(&inf.data, out, inf.host)
            } else {
                scratch.resize(cs, 0);
                codec
                    .decompress(&inf.data, &mut scratch, inf.host)
                    .map(|()| out.copy_from_slice(&scratch[inf.in_off..inf.in_off + inf.len]))
            };
            let pos = w.base + inf.at as u64;
            match inflated {
                Ok(()) => {}
                Err(_) if plan.salvage => {
                    out.fill(0);
                    let end = pos + inf.len as u64;
                    let mut p = pos;
                    while p < end {
                        w.unreadable.push(p);
                        p = (p / SECTOR + 1) * SECTOR;
                    }
                }
                Err(e) => return Err(read_error(pos, e)),
            }
        }
    }
    let pieces = match &plan.compress {
        None if plan.fully_allocate => vec![Piece::Raw(0, w.buf.len())],
        None => nonzero_runs(&w.buf, w.base, plan.gran)
            .into_iter()
            .map(|(s, e)| Piece::Raw(s, e))
            .collect(),
        Some(codec) => compress_window(&w.buf, w.base, plan.gran as usize, codec.as_ref()),
    };
    Ok(Done {
        seq: w.seq,
        base: w.base,
        buf: w.buf,
        pieces,
        unreadable: w.unreadable,
    })
}

/// Compress each non-zero cluster of a window (`base` is cluster aligned); clusters the
/// codec declines are written plain, neighbours merged into one write.
fn compress_window(buf: &[u8], base: u64, gran: usize, codec: &dyn ClusterCodec) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let j = (i + gran).min(buf.len());
        let cluster = &buf[i..j];
        if !is_zero(cluster) {
            let compressed = if cluster.len() == gran {
                codec.compress(cluster)
            } else {
                // The disk ends inside this cluster: compress it zero-padded, as QEMU does.
                let mut whole = cluster.to_vec();
                whole.resize(gran, 0);
                codec.compress(&whole)
            };
            match (compressed, pieces.last_mut()) {
                (Some(c), _) => pieces.push(Piece::Compressed(base + i as u64, c)),
                (None, Some(Piece::Raw(_, e))) if *e == i => *e = j,
                (None, _) => pieces.push(Piece::Raw(i, j)),
            }
        }
        i = j;
    }
    pieces
}

/// Where the writer reports to, and how fast it may go.
struct Sinks<'a, 'b> {
    progress: Progress<'a>,
    unreadable: &'b mut dyn FnMut(u64),
    pace: Pace,
}

/// `-r`: the writer sleeps so that bytes written over time stay at or under the rate.
struct Pace {
    rate: u64,
    start: std::time::Instant,
    written: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate,
            start: std::time::Instant::now(),
            written: 0,
        }
    }

    /// `bytes` more were written: wait until they are within the rate.
    fn wrote(&mut self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        self.written = self.written.saturating_add(bytes);
        let due = std::time::Duration::from_secs_f64(self.written as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// The writer: apply processed windows to `dst` (in guest order unless `in_order` is false)
/// and hand their buffers back to the reader.
fn write_windows(
    dst: &mut dyn BlockDevice,
    done: Receiver<Result<Done>>,
    pool: SyncSender<Vec<u8>>,
    in_order: bool,
    size: u64,
    mut sinks: Sinks<'_, '_>,
) -> Result<()> {
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    let mut written = 0u64;
    for msg in done.iter() {
        let d = msg?;
        if !in_order {
            apply(dst, &d, &mut sinks)?;
            written = written.max(d.base + d.buf.len() as u64);
            (sinks.progress)(written, size);
            let _ = pool.send(d.buf);
            continue;
        }
        waiting.insert(d.seq, d);
        while let Some(d) = waiting.remove(&next) {
            apply(dst, &d, &mut sinks)?;
            next += 1;
            (sinks.progress)(d.base + d.buf.len() as u64, size);
            let _ = pool.send(d.buf);
        }
    }
    if !waiting.is_empty() {
        return Err(Error::invalid(
            "convert: a window was lost between the workers and the writer",
        ));
    }
    (sinks.progress)(size, size);
    Ok(())
}

fn apply(dst: &mut dyn BlockDevice, d: &Done, sinks: &mut Sinks<'_, '_>) -> Result<()> {
    for &offset in &d.unreadable {
        (sinks.unreadable)(offset);
    }
    for p in &d.pieces {
        match p {
            Piece::Raw(s, e) => {
                dst.write_at(&d.buf[*s..*e], d.base + *s as u64)?;
                sinks.pace.wrote((e - s) as u64);
            }
            Piece::Compressed(offset, data) => {
                dst.write_compressed_cluster(*offset, data)?;
                sinks.pace.wrote(data.len() as u64);
            }
        }
    }
    Ok(())
}
