//! [`S3Object`]: an object in a bucket, read with ranged GETs through a bounded cache,
//! with parallel read-ahead for sequential readers.
//!
//! The length comes from one request when the object is opened. A read first looks in the
//! cache, which holds whole fetched pieces, least recently used first, up to
//! [`READ_CACHE_BYTES`]. A miss fetches one piece with a ranged GET: at least
//! [`MIN_FETCH`] (format drivers read small headers and tables at scattered offsets, so
//! the next one is often in the same piece), and while reads come in order (each starting
//! where the last ended, as convert's reader does) the piece doubles up to
//! [`READ_AHEAD_BYTES`]. A read larger than [`READ_AHEAD_BYTES`] goes straight into the
//! caller's buffer, uncached.
//!
//! Once the pieces have grown to [`READ_AHEAD_BYTES`], the reader is streaming: the next
//! [`AHEAD_PIECES`] pieces past its position are fetched by as many background threads
//! (started then, and stopped when the object is dropped), each with its own connection,
//! so the GETs overlap each other and the caller's work. A read that lands in a piece
//! still in flight waits for it; a read-ahead that fails is dropped, and the reader then
//! fetches that piece itself and reports the error as usual. A read out of order ends the
//! stream. Full-size pieces wholly behind a streaming reader are dropped from the cache,
//! so a sequential copy holds about `AHEAD_PIECES + 1` pieces. The cache lock is not held
//! during a GET, so several threads may read at once.
//!
//! The object is read-only: a write is refused (new objects are written through
//! [`super::S3Upload`]).

use super::client::Client;
use crate::storage::Storage;
use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Most bytes the read cache holds.
pub const READ_CACHE_BYTES: usize = 64 << 20;
/// Smallest piece one GET fetches.
pub const MIN_FETCH: u64 = 256 << 10;
/// Largest piece one GET fetches ahead of sequential reads.
pub const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Pieces fetched in the background ahead of a streaming reader (and threads doing it).
pub const AHEAD_PIECES: usize = 3;

const _: () = assert!((AHEAD_PIECES as u64 + 2) * READ_AHEAD_BYTES <= READ_CACHE_BYTES as u64);

/// A read-only object.
pub struct S3Object {
    shared: Arc<Shared>,
    /// Hands pieces to the read-ahead threads, once they are started.
    ahead: Mutex<Option<SyncSender<(u64, u64)>>>,
}

/// What the reader and the read-ahead threads share.
struct Shared {
    client: Client,
    len: u64,
    cache: Mutex<Cache>,
    /// Signalled whenever a read-ahead piece lands or fails.
    landed: Condvar,
}

/// Fetched pieces, least recently used first, pieces in flight, and the state of
/// sequential detection.
#[derive(Default)]
struct Cache {
    pieces: VecDeque<(u64, Arc<Vec<u8>>)>,
    bytes: usize,
    /// Where the last read ended.
    next: u64,
    window: u64,
    /// Read-ahead pieces being fetched: (offset, length).
    inflight: Vec<(u64, u64)>,
    /// Where the read-ahead fetched or asked for up to (0: not streaming).
    frontier: u64,
}

impl Cache {
    /// Copy what the cached piece holding `pos` has into `buf`; the bytes copied (0 on a
    /// miss). The piece becomes the most recently used.
    fn serve(&mut self, buf: &mut [u8], pos: u64) -> usize {
        let Some(i) = self.find(pos) else {
            return 0;
        };
        let Some(piece) = self.pieces.remove(i) else {
            return 0;
        };
        let from = (pos - piece.0) as usize;
        let n = (piece.1.len() - from).min(buf.len());
        buf[..n].copy_from_slice(&piece.1[from..from + n]);
        self.pieces.push_back(piece);
        n
    }

    fn find(&self, pos: u64) -> Option<usize> {
        self.pieces
            .iter()
            .position(|(o, d)| *o <= pos && pos < o + d.len() as u64)
    }

    fn in_flight(&self, pos: u64) -> bool {
        self.inflight.iter().any(|&(o, l)| o <= pos && pos < o + l)
    }

    fn insert(&mut self, offset: u64, data: Arc<Vec<u8>>) {
        self.bytes += data.len();
        self.pieces.push_back((offset, data));
        while self.bytes > READ_CACHE_BYTES {
            match self.pieces.pop_front() {
                Some((_, d)) => self.bytes -= d.len(),
                None => break,
            }
        }
    }
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read-ahead thread: fetch the pieces it is handed until the object is dropped.
    fn read_ahead(&self, jobs: &Mutex<Receiver<(u64, u64)>>) {
        loop {
            let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(piece) = job else {
                return;
            };
            let landing = Landing {
                shared: self,
                piece,
            };
            if let Ok(data) = self.client.get_range(piece.0, piece.1) {
                self.cache().insert(piece.0, Arc::new(data));
            }
            drop(landing);
        }
    }
}

/// A read-ahead piece in flight: when it ends, however it ends (the piece landed, its GET
/// failed, or its thread unwinds), it is no longer in flight and waiting readers wake.
struct Landing<'a> {
    shared: &'a Shared,
    piece: (u64, u64),
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let piece = self.piece;
        self.shared.cache().inflight.retain(|&p| p != piece);
        self.shared.landed.notify_all();
    }
}

impl S3Object {
    /// Open the object `client` names: one request for its length.
    pub fn open(client: Client) -> io::Result<S3Object> {
        let len = client.length()?;
        Ok(S3Object {
            shared: Arc::new(Shared {
                client,
                len,
                cache: Mutex::new(Cache::default()),
                landed: Condvar::new(),
            }),
            ahead: Mutex::new(None),
        })
    }

    /// How much to fetch at `pos` for a read with `want` bytes left: the read-ahead window
    /// when reads are sequential, else [`MIN_FETCH`]; never past the end.
    fn fetch_len(&self, cache: &mut Cache, pos: u64, want: u64, sequential: bool) -> u64 {
        cache.window = match sequential {
            true => (cache.window * 2).clamp(MIN_FETCH, READ_AHEAD_BYTES),
            false => MIN_FETCH,
        };
        want.max(cache.window).min(self.shared.len - pos)
    }

    /// A streaming reader is at `at`: have the [`AHEAD_PIECES`] pieces from there on
    /// cached or in flight.
    fn schedule_ahead(&self, at: u64) {
        let len = self.shared.len;
        let mut jobs = Vec::new();
        {
            let mut cache = self.shared.cache();
            // Stream-sized pieces wholly behind the reader will not be read again.
            cache
                .pieces
                .retain(|(o, d)| d.len() as u64 != READ_AHEAD_BYTES || o + d.len() as u64 > at);
            let kept: usize = cache.pieces.iter().map(|(_, d)| d.len()).sum();
            cache.bytes = kept;
            cache.frontier = cache.frontier.max(at);
            let limit = at.saturating_add(AHEAD_PIECES as u64 * READ_AHEAD_BYTES);
            while cache.frontier < len.min(limit) && cache.inflight.len() < AHEAD_PIECES {
                let pos = cache.frontier;
                let covered = match cache.find(pos) {
                    Some(i) => Some(cache.pieces[i].0 + cache.pieces[i].1.len() as u64),
                    None => cache
                        .inflight
                        .iter()
                        .find(|&&(o, l)| o <= pos && pos < o + l)
                        .map(|&(o, l)| o + l),
                };
                if let Some(piece_end) = covered {
                    cache.frontier = piece_end;
                    continue;
                }
                let piece = (pos, READ_AHEAD_BYTES.min(len - pos));
                cache.inflight.push(piece);
                cache.frontier = pos + piece.1;
                jobs.push(piece);
            }
        }
        if jobs.is_empty() {
            return;
        }
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        let sender = ahead.get_or_insert_with(|| self.start_threads());
        for job in jobs {
            if sender.try_send(job).is_err() {
                // No thread free to take it (cannot happen with one place per piece).
                self.shared.cache().inflight.retain(|&p| p != job);
            }
        }
    }

    fn start_threads(&self) -> SyncSender<(u64, u64)> {
        let (sender, receiver) = sync_channel(AHEAD_PIECES);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..AHEAD_PIECES {
            let (shared, jobs) = (self.shared.clone(), receiver.clone());
            std::thread::spawn(move || shared.read_ahead(&jobs));
        }
        sender
    }
}

impl Storage for S3Object {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let shared = &self.shared;
        let end = offset.saturating_add(buf.len() as u64).min(shared.len);
        let (sequential, streaming) = {
            let mut cache = shared.cache();
            let s = offset == cache.next && offset != 0;
            cache.next = offset.saturating_add(buf.len() as u64);
            if !s {
                cache.frontier = 0;
            }
            (s, s && cache.window >= READ_AHEAD_BYTES)
        };
        if streaming {
            self.schedule_ahead(offset);
        }
        let mut done = 0usize;
        while offset + (done as u64) < end {
            let pos = offset + done as u64;
            let want = end - pos;
            let mut cache = shared.cache();
            let n = cache.serve(&mut buf[done..(done + want as usize)], pos);
            if n > 0 {
                done += n;
                continue;
            }
            if cache.in_flight(pos) {
                // A read-ahead thread is fetching it: wait for it to land (or fail).
                drop(shared.landed.wait(cache).unwrap_or_else(|e| e.into_inner()));
                continue;
            }
            if want > READ_AHEAD_BYTES {
                drop(cache);
                let len = want as usize;
                shared
                    .client
                    .get_range_into(pos, &mut buf[done..done + len])?;
                done += len;
                continue;
            }
            let len = self.fetch_len(&mut cache, pos, want, sequential);
            drop(cache);
            let data = Arc::new(shared.client.get_range(pos, len)?);
            let n = (want as usize).min(data.len());
            buf[done..done + n].copy_from_slice(&data[..n]);
            done += n;
            let mut cache = shared.cache();
            cache.insert(pos, data);
            if cache.frontier != 0 {
                cache.frontier = cache.frontier.max(pos + len);
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], offset: u64) -> io::Result<()> {
        Err(read_only(&self.shared.client, offset))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.shared.len)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only(&self.shared.client, self.shared.len))
    }

    fn punch_hole(&self, offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only(&self.shared.client, offset))
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        Ok(self.shared.len)
    }

    fn protocol(&self) -> &'static str {
        "s3"
    }
}

fn read_only(client: &Client, offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: an S3 object is read-only (writing at {offset:#x}); write a new object with convert", client.name()),
    )
}
