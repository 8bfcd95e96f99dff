//! [`ReadAhead`]: sequential reads of an RBD image with several requests in flight.
//!
//! One synchronous `rbd_read` at a time waits a round trip per request. When reads come in
//! order (each starting where the last ended, as convert's reader does, or inside what was
//! prefetched, as it does after skipping a hole), the next [`READ_AHEAD_BYTES`] are
//! requested with `rbd_aio_read` in pieces four times the size of the last read (at most
//! [`MAX_PIECE`]), cut at RADOS object boundaries so that each piece is one request to one
//! OSD, and later reads are served from them. A read elsewhere drops what was prefetched.
//! Piece buffers are reused once consumed.
//! The owner drops everything prefetched before any write, resize or zeroing, so a
//! prefetched piece never holds bytes older than a write.

use super::cluster::rbd_error;
use super::ffi;
use std::collections::VecDeque;
use std::io;
use std::ptr;

/// Most bytes requested ahead of the last sequential read.
pub const READ_AHEAD_BYTES: u64 = 16 << 20;
/// Largest and smallest piece one prefetch request asks for.
pub const MAX_PIECE: u64 = 4 << 20;
const MIN_PIECE: u64 = 64 << 10;
/// Buffers of consumed pieces kept for reuse.
const SPARE_BUFFERS: usize = 8;

/// The read [`ReadAhead::advance`] follows, and the image it was made on.
pub struct Request {
    pub image: ffi::rbd_image_t,
    pub offset: u64,
    pub len: u64,
    /// The image's size: nothing is requested past it.
    pub size: u64,
    /// Bytes per RADOS object: no piece crosses a multiple of it (0: no limit).
    pub object: u64,
}

/// One `rbd_aio_read` in flight (or done and not yet consumed).
struct Piece {
    completion: ffi::rbd_completion_t,
    offset: u64,
    buf: Vec<u8>,
    done: Option<io::Result<()>>,
}

// SAFETY: a completion may be waited on from any thread; only the owner of the piece
// (behind the storage's mutex) waits on and releases it.
unsafe impl Send for Piece {}

impl Piece {
    fn end(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Wait for the request (once) and release its completion.
    fn wait(&mut self) -> io::Result<()> {
        if self.done.is_none() {
            // SAFETY: the completion is live until released here, once.
            let r = unsafe {
                ffi::rbd_aio_wait_for_complete(self.completion);
                let r = ffi::rbd_aio_get_return_value(self.completion);
                ffi::rbd_aio_release(self.completion);
                r
            };
            self.done = Some(match r {
                r if r < 0 => Err(rbd_error(
                    r as i64,
                    &format!("error reading at {:#x}", self.offset),
                )),
                // A short read (the image shrank): the rest reads as zeros.
                r => {
                    let n = (r as usize).min(self.buf.len());
                    self.buf[n..].fill(0);
                    Ok(())
                }
            });
        }
        match &self.done {
            Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
            _ => Ok(()),
        }
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        // librbd writes into `buf` until the request completes.
        let _ = self.wait();
    }
}

/// The pieces requested ahead, in offset order, and where the next sequential read starts.
#[derive(Default)]
pub struct ReadAhead {
    pieces: VecDeque<Piece>,
    next: u64,
    /// Buffers of consumed pieces, for the next ones.
    spare: Vec<Vec<u8>>,
}

impl ReadAhead {
    /// Drop everything prefetched (waiting for requests in flight).
    pub fn clear(&mut self) {
        self.pieces.clear();
    }

    /// Copy into `buf` what the pieces hold from `offset` on; returns the bytes served
    /// (0 when the first piece does not start at or before `offset`: then all are dropped).
    pub fn serve(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            while self.pieces.front().is_some_and(|p| p.end() <= pos) {
                self.recycle();
            }
            let Some(piece) = self.pieces.front_mut() else {
                break;
            };
            if piece.offset > pos {
                self.clear();
                break;
            }
            piece.wait()?;
            let from = (pos - piece.offset) as usize;
            let n = (piece.buf.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&piece.buf[from..from + n]);
            done += n;
        }
        Ok(done)
    }

    /// Drop the first piece, keeping its buffer when it is done with.
    fn recycle(&mut self) {
        if let Some(mut p) = self.pieces.pop_front() {
            if p.wait().is_ok() && self.spare.len() < SPARE_BUFFERS {
                self.spare.push(std::mem::take(&mut p.buf));
            }
        }
    }

    /// A buffer of `n` bytes for a piece: a spare one if there is one.
    fn buffer(&mut self, n: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut b) => {
                b.resize(n, 0);
                b
            }
            None => vec![0u8; n],
        }
    }

    /// After a read of `len` bytes at `offset`, of which `served` came from the pieces: if
    /// it continued the last one (or was served from them), keep up to
    /// [`READ_AHEAD_BYTES`] requested past it (not past `size`), in pieces that do not
    /// cross a boundary of `object` bytes; remember where it ended.
    pub fn advance(&mut self, request: Request, served: usize) {
        let Request {
            image,
            offset,
            len,
            size,
            object,
        } = request;
        let sequential = offset == self.next || served > 0;
        self.next = offset + len;
        if !sequential {
            self.clear();
            return;
        }
        let piece_len = len.saturating_mul(4).clamp(MIN_PIECE, MAX_PIECE);
        let mut at = self
            .pieces
            .back()
            .map_or(self.next, |p| p.end())
            .max(self.next);
        while at < size && at < self.next + READ_AHEAD_BYTES {
            let boundary = match object {
                0 => u64::MAX,
                o => (at / o + 1).saturating_mul(o),
            };
            let n = piece_len.min(size - at).min(boundary - at);
            let mut buf = self.buffer(n as usize);
            let mut completion: ffi::rbd_completion_t = ptr::null_mut();
            // SAFETY: valid out-pointer; no callback.
            if unsafe { ffi::rbd_aio_create_completion(ptr::null_mut(), None, &mut completion) } < 0
            {
                return;
            }
            // SAFETY: open image handle; `buf` lives in the piece, which waits for the
            // request before it is dropped; the completion is fresh.
            let r = unsafe {
                ffi::rbd_aio_read(image, at, buf.len(), buf.as_mut_ptr().cast(), completion)
            };
            if r < 0 {
                // SAFETY: not queued; release the unused completion. Reads then go
                // synchronously, which reports the error if it persists.
                unsafe { ffi::rbd_aio_release(completion) };
                return;
            }
            self.pieces.push_back(Piece {
                completion,
                offset: at,
                buf,
                done: None,
            });
            at += n;
        }
    }
}
