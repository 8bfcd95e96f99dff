//! [`S3Object`]: an object in a bucket, read with ranged GETs through a bounded cache.
//!
//! The length comes from one request when the object is opened. A read first looks in the
//! cache, which holds whole fetched pieces, least recently used first, up to
//! [`READ_CACHE_BYTES`]. A miss fetches one piece with a ranged GET: at least
//! [`MIN_FETCH`] (format drivers read small headers and tables at scattered offsets, so
//! the next one is often in the same piece), and while reads come in order (each starting
//! where the last ended, as convert's reader does) the piece doubles up to
//! [`READ_AHEAD_BYTES`], so a sequential copy costs few round trips. A read larger than
//! [`READ_AHEAD_BYTES`] goes straight into the caller's buffer, uncached. The cache lock is
//! not held during a GET, so several threads may read at once.
//!
//! The object is read-only: a write is refused (new objects are written through
//! [`super::S3Upload`]).

use super::client::Client;
use crate::storage::Storage;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

/// Most bytes the read cache holds.
pub const READ_CACHE_BYTES: usize = 64 << 20;
/// Smallest piece one GET fetches.
pub const MIN_FETCH: u64 = 256 << 10;
/// Largest piece one GET fetches ahead of sequential reads.
pub const READ_AHEAD_BYTES: u64 = 8 << 20;

/// A read-only object.
pub struct S3Object {
    client: Client,
    len: u64,
    cache: Mutex<Cache>,
}

/// Fetched pieces, least recently used first, and the state of sequential detection.
#[derive(Default)]
struct Cache {
    pieces: VecDeque<(u64, Arc<Vec<u8>>)>,
    bytes: usize,
    next: u64,
    window: u64,
}

impl Cache {
    /// Copy what the cached piece holding `pos` has into `buf`; the bytes copied (0 on a
    /// miss). The piece becomes the most recently used.
    fn serve(&mut self, buf: &mut [u8], pos: u64) -> usize {
        let Some(i) = self
            .pieces
            .iter()
            .position(|(o, d)| *o <= pos && pos < o + d.len() as u64)
        else {
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

impl S3Object {
    /// Open the object `client` names: one request for its length.
    pub fn open(client: Client) -> io::Result<S3Object> {
        let len = client.length()?;
        Ok(S3Object {
            client,
            len,
            cache: Mutex::new(Cache::default()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much to fetch at `pos` for a read with `want` bytes left: the read-ahead window
    /// when reads are sequential, else [`MIN_FETCH`]; never past the end.
    fn fetch_len(&self, pos: u64, want: u64, sequential: bool) -> u64 {
        let mut cache = self.cache();
        cache.window = match sequential {
            true => (cache.window * 2).clamp(MIN_FETCH, READ_AHEAD_BYTES),
            false => MIN_FETCH,
        };
        want.max(cache.window).min(self.len - pos)
    }
}

impl Storage for S3Object {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64).min(self.len);
        let sequential = {
            let mut cache = self.cache();
            let s = offset == cache.next && offset != 0;
            cache.next = offset.saturating_add(buf.len() as u64);
            s
        };
        let mut done = 0usize;
        while offset + (done as u64) < end {
            let pos = offset + done as u64;
            let want = end - pos;
            let n = self
                .cache()
                .serve(&mut buf[done..(done + want as usize)], pos);
            if n > 0 {
                done += n;
                continue;
            }
            if want > READ_AHEAD_BYTES {
                let data = self.client.get_range(pos, want)?;
                buf[done..done + want as usize].copy_from_slice(&data);
                done += want as usize;
                continue;
            }
            let len = self.fetch_len(pos, want, sequential);
            let data = Arc::new(self.client.get_range(pos, len)?);
            let n = (want as usize).min(data.len());
            buf[done..done + n].copy_from_slice(&data[..n]);
            done += n;
            self.cache().insert(pos, data);
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], offset: u64) -> io::Result<()> {
        Err(read_only(&self.client, offset))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only(&self.client, self.len))
    }

    fn punch_hole(&self, offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only(&self.client, offset))
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        Ok(self.len)
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
