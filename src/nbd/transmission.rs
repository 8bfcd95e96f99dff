//! The transmission phase of one connection: read a request, apply it to the export's
//! device, reply; until the client sends `NBD_CMD_DISC`, hangs up, or breaks the protocol.
//!
//! Every request is checked before any work or allocation: its flags against those its
//! command accepts, its range against the export's size, and its length against
//! [`proto::MAX_PAYLOAD`]. A WRITE whose payload is larger than that cannot be skipped at a
//! sane cost, so the server answers `EINVAL` and hangs up; every other bad request gets
//! the error number qemu-nbd gives (`EINVAL`, `EPERM` for writes to a read-only export)
//! and the connection goes on.
//!
//! Requests are applied in the order they arrive, each under the export's device lock, and
//! a reply is sent only once its request is complete: a FUA write is flushed first, and a
//! FLUSH reply covers every write replied to before it, on any connection.
//!
//! Replies are buffered while further requests are already in hand (a client that keeps
//! several requests in flight gets their replies in one write), and sent before the
//! server waits for the client again.

use super::dirty::{DirtySource, STATE_DIRTY};
use super::handshake::{MetaContext, Negotiated};
use super::proto::{self, Request};
use super::{errno_of, DetectZeroes, Export};
use crate::device::{BlockDevice, ExtentKind};
use std::io::{self, BufReader, Read, Write};

/// The most extents one BLOCK_STATUS chunk describes; the client asks again for the rest.
pub const MAX_EXTENTS: usize = 16 * 1024;

/// How much of the client's byte stream is read ahead: several small requests arrive with
/// one system call, and their replies leave together.
pub const READ_AHEAD: usize = 256 << 10;

/// Zeros written at a time for `WRITE_ZEROES` with `NO_HOLE`.
const ZERO_CHUNK: usize = 1 << 20;

/// Why a request failed: the protocol's error number and a message for structured replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub errno: u32,
    pub message: String,
}

impl Fail {
    fn new(errno: u32, message: impl Into<String>) -> Fail {
        Fail {
            errno,
            message: message.into(),
        }
    }
}

impl From<crate::Error> for Fail {
    fn from(e: crate::Error) -> Fail {
        Fail::new(errno_of(&e), e.to_string())
    }
}

/// One piece of a structured READ reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// Bytes `[start, start+len)` of the read buffer (relative to the request's offset).
    Data { start: usize, len: usize },
    /// Zeros at the same relative range.
    Hole { start: usize, len: usize },
}

/// The state of one connection in transmission.
pub struct Connection<'a, R, W> {
    export: &'a Export,
    negotiated: Negotiated,
    reader: BufReader<R>,
    writer: W,
    /// The payload of the current WRITE or the data of the current READ.
    buf: Vec<u8>,
    /// Reply headers being assembled.
    out: Vec<u8>,
}

/// Serve requests from `reader` (read ahead by [`READ_AHEAD`] bytes), replying on `writer`
/// (best buffered by the caller), until the client leaves.
pub fn serve_requests<R: Read, W: Write>(
    reader: R,
    writer: W,
    export: &Export,
    negotiated: Negotiated,
) -> io::Result<()> {
    let mut c = Connection {
        export,
        negotiated,
        reader: BufReader::with_capacity(READ_AHEAD, reader),
        writer,
        buf: Vec::new(),
        out: Vec::with_capacity(256),
    };
    let served = c.requests();
    // Replies still buffered go out (the client may be gone: nothing more to do then).
    let flushed = c.writer.flush();
    served.and(flushed.or(Ok(())))
}

impl<R: Read, W: Write> Connection<'_, R, W> {
    /// The request loop.
    fn requests(&mut self) -> io::Result<()> {
        loop {
            let mut header = [0u8; proto::REQUEST_LEN];
            self.flush_unless_buffered(proto::REQUEST_LEN)?;
            match self.reader.read_exact(&mut header) {
                Ok(()) => {}
                // The client left (between requests, or in the middle of one).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let req = Request::parse(&header);
            if req.magic != proto::REQUEST_MAGIC || !self.request(req)? {
                return Ok(());
            }
        }
    }

    /// Send the buffered replies unless the next `need` bytes from the client are already
    /// in hand: the server must never wait for the client with replies held back.
    fn flush_unless_buffered(&mut self, need: usize) -> io::Result<()> {
        if self.reader.buffer().len() < need {
            self.writer.flush()?;
        }
        Ok(())
    }

    /// Handle one request; `false` ends the connection.
    fn request(&mut self, r: Request) -> io::Result<bool> {
        if r.kind == proto::CMD_WRITE {
            if r.length > proto::MAX_PAYLOAD {
                self.reply_simple(r.cookie, proto::EINVAL)?;
                return Ok(false);
            }
            self.buf.resize(r.length as usize, 0);
            self.flush_unless_buffered(self.buf.len())?;
            match self.reader.read_exact(&mut self.buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let checked = self.check(&r);
        let result = match (checked, r.kind) {
            (Err(f), proto::CMD_READ) => return self.reply_read_error(r.cookie, &f),
            (Err(f), _) => Err(f),
            (Ok(()), proto::CMD_DISC) => return Ok(false),
            (Ok(()), proto::CMD_READ) => return self.read(r),
            (Ok(()), proto::CMD_BLOCK_STATUS) => match self.block_status(r) {
                Ok(()) => return Ok(true),
                Err(f) => Err(f),
            },
            (Ok(()), proto::CMD_WRITE) => self.write(r),
            (Ok(()), proto::CMD_FLUSH) => self.export.device().flush().map_err(Fail::from),
            (Ok(()), proto::CMD_TRIM) => self.trim(r),
            (Ok(()), proto::CMD_WRITE_ZEROES) => self.write_zeroes(r),
            (Ok(()), _) => Ok(()), // CACHE: the device has no cache to fill
        };
        self.reply_simple(r.cookie, result.err().map_or(0, |f| f.errno))?;
        Ok(true)
    }

    /// The checks every request passes before it is applied: a known command, flags it
    /// accepts, a length within bounds, a range inside the export, and a writable export
    /// for commands that change it.
    fn check(&self, r: &Request) -> Result<(), Fail> {
        use proto::*;
        let structured = self.negotiated.structured;
        let (accepted, writes) = match r.kind {
            CMD_READ => (if structured { CMD_FLAG_DF } else { 0 }, false),
            CMD_WRITE | CMD_TRIM => (0, true),
            CMD_WRITE_ZEROES => (CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, true),
            CMD_BLOCK_STATUS => (CMD_FLAG_REQ_ONE, false),
            CMD_DISC | CMD_FLUSH | CMD_CACHE => (0, false),
            k => return Err(Fail::new(EINVAL, format!("unknown command {k}"))),
        };
        if r.flags & !(accepted | CMD_FLAG_FUA) != 0 {
            return Err(Fail::new(
                EINVAL,
                format!("unsupported flags {:#x}", r.flags),
            ));
        }
        if writes && self.export.config.read_only {
            return Err(Fail::new(EPERM, "the export is read-only"));
        }
        if r.kind == CMD_READ && r.length > MAX_PAYLOAD {
            return Err(Fail::new(EINVAL, "read longer than 32 MiB"));
        }
        if matches!(r.kind, CMD_DISC | CMD_FLUSH) {
            return Ok(());
        }
        let inside = r
            .offset
            .checked_add(u64::from(r.length))
            .is_some_and(|end| end <= self.export.size);
        if !inside {
            // The protocol suggests ENOSPC for writes past the end; qemu-nbd 10 answers
            // EINVAL to every request past the end, and clients are used to that.
            return Err(Fail::new(EINVAL, "request past the end of the export"));
        }
        Ok(())
    }

    fn write(&mut self, r: Request) -> Result<(), Fail> {
        let detect = self.export.config.detect_zeroes;
        let mut dev = self.export.device();
        if detect != DetectZeroes::Off && is_zero(&self.buf) {
            // As qemu's detect-zeroes: the write becomes a zeroing request, which may
            // release storage only in unmap mode (which --discard=unmap allows).
            let unmap = detect == DetectZeroes::Unmap && self.export.config.discard;
            dev.zero_range(r.offset, u64::from(r.length), unmap)?;
        } else {
            dev.write_at(&self.buf, r.offset)?;
        }
        fua(&mut **dev, r.flags)
    }

    fn trim(&mut self, r: Request) -> Result<(), Fail> {
        let mut dev = self.export.device();
        if self.export.config.discard {
            dev.discard(r.offset, u64::from(r.length))?;
        }
        fua(&mut **dev, r.flags)
    }

    fn write_zeroes(&mut self, r: Request) -> Result<(), Fail> {
        let len = u64::from(r.length);
        let no_hole = r.flags & proto::CMD_FLAG_NO_HOLE != 0;
        let mut dev = self.export.device();
        // A format with allocation units (qcow2, VMDK) records zeros in its metadata, as
        // qemu does for NO_HOLE too; a raw file would punch a hole, so it gets real zeros.
        let literal = no_hole && dev.cluster_size().is_none();
        if literal {
            if r.flags & proto::CMD_FLAG_FAST_ZERO != 0 {
                // Keeping the range allocated means writing every zero: not fast.
                return Err(Fail::new(proto::ENOTSUP, "zeroing without holes is slow"));
            }
            let zeros = vec![0u8; ZERO_CHUNK.min(r.length as usize)];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(zeros.len() as u64) as usize;
                dev.write_at(&zeros[..n], r.offset + done)?;
                done += n as u64;
            }
        } else {
            // Storage is released only when the client allows holes and the export
            // passes discards on (qemu-nbd drops the permission under --discard=ignore).
            let unmap = !no_hole && self.export.config.discard;
            dev.zero_range(r.offset, len, unmap)?;
        }
        fua(&mut **dev, r.flags)
    }

    /// A READ: data and holes as structured chunks when the client asked for them (one
    /// data chunk with `DF`), else a simple reply followed by the data.
    fn read(&mut self, r: Request) -> io::Result<bool> {
        let len = r.length as usize;
        self.buf.resize(len, 0);
        let split = self.negotiated.structured && r.flags & proto::CMD_FLAG_DF == 0;
        let pieces = {
            let mut dev = self.export.device();
            read_pieces(&mut **dev, &mut self.buf, r.offset, split)
        };
        let pieces = match pieces {
            Ok(p) => p,
            Err(f) => return self.reply_read_error(r.cookie, &f),
        };
        self.out.clear();
        if !self.negotiated.structured {
            proto::simple_reply(&mut self.out, 0, r.cookie);
            self.writer.write_all(&self.out)?;
            self.writer.write_all(&self.buf)?;
            return Ok(true);
        }
        if pieces.is_empty() {
            let flags = proto::REPLY_FLAG_DONE;
            proto::chunk_header(&mut self.out, flags, proto::REPLY_TYPE_NONE, r.cookie, 0);
            self.writer.write_all(&self.out)?;
        }
        for (i, piece) in pieces.iter().enumerate() {
            let flags = if i + 1 == pieces.len() {
                proto::REPLY_FLAG_DONE
            } else {
                0
            };
            self.out.clear();
            match *piece {
                Piece::Hole { start, len } => {
                    let off = r.offset + start as u64;
                    proto::offset_hole(&mut self.out, flags, r.cookie, off, len as u32);
                    self.writer.write_all(&self.out)?;
                }
                Piece::Data { start, len } => {
                    let off = r.offset + start as u64;
                    proto::offset_data_header(&mut self.out, flags, r.cookie, off, len as u32);
                    self.writer.write_all(&self.out)?;
                    self.writer.write_all(&self.buf[start..start + len])?;
                }
            }
        }
        Ok(true)
    }

    fn reply_read_error(&mut self, cookie: u64, f: &Fail) -> io::Result<bool> {
        if !self.negotiated.structured {
            self.reply_simple(cookie, f.errno)?;
            return Ok(true);
        }
        self.out.clear();
        proto::error_chunk(&mut self.out, cookie, f.errno, &f.message);
        self.writer.write_all(&self.out)?;
        Ok(true)
    }

    fn reply_simple(&mut self, cookie: u64, errno: u32) -> io::Result<()> {
        self.out.clear();
        proto::simple_reply(&mut self.out, errno, cookie);
        self.writer.write_all(&self.out)
    }

    /// BLOCK_STATUS: one chunk per selected context, the last flagged done.
    fn block_status(&mut self, r: Request) -> Result<(), Fail> {
        let contexts = self.negotiated.contexts.clone();
        if !self.negotiated.structured || contexts.is_empty() {
            return Err(Fail::new(proto::EINVAL, "no metadata context selected"));
        }
        if r.length == 0 {
            return Err(Fail::new(proto::EINVAL, "empty block status request"));
        }
        let one = r.flags & proto::CMD_FLAG_REQ_ONE != 0;
        let mut all = Vec::with_capacity(contexts.len());
        {
            let mut dev = self.export.device();
            let mut dirty = self.export.dirty();
            for &c in &contexts {
                let source = dirty
                    .as_deref_mut()
                    .map(|d| &mut **d as &mut dyn DirtySource);
                all.push(extents(&mut **dev, source, c, r.offset, r.length, one)?);
            }
        }
        self.out.clear();
        for (i, (c, ext)) in contexts.iter().zip(&all).enumerate() {
            let done = if i + 1 == contexts.len() {
                proto::REPLY_FLAG_DONE
            } else {
                0
            };
            proto::block_status_chunk(&mut self.out, done, r.cookie, c.id(), ext);
        }
        let sent = self.writer.write_all(&self.out);
        sent.map_err(|e| Fail::new(proto::EIO, e.to_string()))
    }
}

/// The value of an extent `e` in the allocation context `c`.
fn allocation_value(c: MetaContext, e: &crate::device::Extent) -> u32 {
    match c {
        MetaContext::BaseAllocation if e.kind == ExtentKind::Data => 0,
        MetaContext::BaseAllocation => proto::STATE_HOLE | proto::STATE_ZERO,
        MetaContext::AllocationDepth if e.kind == ExtentKind::Unallocated => 0,
        MetaContext::AllocationDepth => e.depth + 1,
        MetaContext::DirtyBitmap => 0,
    }
}

/// Whether `buf` holds only zero bytes (by 4 KiB blocks, which the compiler vectorizes).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Flush when the request asked for Force Unit Access.
fn fua(dev: &mut dyn BlockDevice, flags: u16) -> Result<(), Fail> {
    if flags & proto::CMD_FLAG_FUA != 0 {
        dev.flush()?;
    }
    Ok(())
}

/// Read `buf.len()` bytes at `offset` into `buf`. With `split`, ranges the device knows to
/// read as zeros are left out of `buf` and listed as holes; otherwise one data piece.
fn read_pieces(
    dev: &mut dyn BlockDevice,
    buf: &mut [u8],
    offset: u64,
    split: bool,
) -> Result<Vec<Piece>, Fail> {
    let len = buf.len();
    if !split {
        dev.read_at(buf, offset)?;
        return Ok(if len == 0 {
            Vec::new()
        } else {
            vec![Piece::Data { start: 0, len }]
        });
    }
    let mut pieces: Vec<Piece> = Vec::new();
    let mut pos = 0usize;
    while pos < len {
        let e = dev.block_status(offset + pos as u64, (len - pos) as u64)?;
        let n = (e.length.max(1) as usize).min(len - pos);
        let piece = if e.kind == ExtentKind::Data {
            dev.read_at(&mut buf[pos..pos + n], offset + pos as u64)?;
            Piece::Data { start: pos, len: n }
        } else {
            Piece::Hole { start: pos, len: n }
        };
        match (pieces.last_mut(), piece) {
            (Some(Piece::Data { len: l, .. }), Piece::Data { len: n, .. })
            | (Some(Piece::Hole { len: l, .. }), Piece::Hole { len: n, .. }) => *l += n,
            _ => pieces.push(piece),
        }
        pos += n;
    }
    Ok(pieces)
}

/// The extents of `context` from `offset`, covering at most `length` bytes (one extent
/// with `one`), adjacent equal values merged, at most [`MAX_EXTENTS`] of them. `dirty` is
/// the export's dirty bitmap, which the `qemu:dirty-bitmap:` context needs.
pub fn extents(
    dev: &mut dyn BlockDevice,
    mut dirty: Option<&mut dyn DirtySource>,
    context: MetaContext,
    offset: u64,
    length: u32,
    one: bool,
) -> Result<Vec<(u32, u32)>, Fail> {
    let end = offset + u64::from(length);
    let limit = if one { 1 } else { MAX_EXTENTS };
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let (n, value) = match (context, dirty.as_deref_mut()) {
            (MetaContext::DirtyBitmap, Some(d)) => {
                let (n, is_dirty) = d.run(dev, pos, end - pos)?;
                (n, if is_dirty { STATE_DIRTY } else { 0 })
            }
            (MetaContext::DirtyBitmap, None) => {
                return Err(Fail::new(proto::EINVAL, "the export has no dirty bitmap"));
            }
            (c, _) => {
                let e = dev.block_status(pos, end - pos)?;
                (e.length, allocation_value(c, &e))
            }
        };
        let n = n.clamp(1, end - pos);
        let full = out.len() == limit;
        match out.last_mut() {
            Some((l, v)) if *v == value => *l += n as u32,
            _ if full => break,
            _ => out.push((n as u32, value)),
        }
        pos += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::ExportConfig;
    use crate::raw::Raw;
    use crate::storage::MemStorage;

    fn export(read_only: bool) -> Export {
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let dev = Raw::open(MemStorage::from_vec(data), false).unwrap();
        let config = ExportConfig {
            read_only,
            ..Default::default()
        };
        Export::new(Box::new(dev), config)
    }

    fn request(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut v = Vec::new();
        Request {
            magic: proto::REQUEST_MAGIC,
            flags,
            kind,
            cookie,
            offset,
            length,
        }
        .write(&mut v);
        v
    }

    /// Run `input` through a connection; return what the server wrote.
    fn session(export: &Export, negotiated: Negotiated, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        serve_requests(input, &mut out, export, negotiated).unwrap();
        out
    }

    #[test]
    fn a_simple_read_is_the_reply_header_then_the_data() {
        let e = export(false);
        let out = session(
            &e,
            Negotiated::default(),
            &request(0, proto::CMD_READ, 7, 4, 4),
        );
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 4, 5, 6, 7]
        );
    }

    #[test]
    fn a_write_then_a_read_returns_what_was_written() {
        let e = export(false);
        let mut input = request(proto::CMD_FLAG_FUA, proto::CMD_WRITE, 1, 100, 3);
        input.extend_from_slice(b"abc");
        input.extend(request(0, proto::CMD_READ, 2, 99, 5));
        let out = session(&e, Negotiated::default(), &input);
        assert_eq!(&out[4..8], [0, 0, 0, 0]); // the write succeeded
        assert_eq!(&out[32..], [99, b'a', b'b', b'c', 103]);
    }

    #[test]
    fn refused_requests_get_their_error_and_the_connection_goes_on() {
        let e = export(true);
        let mut input = request(0, proto::CMD_WRITE, 1, 0, 2);
        input.extend_from_slice(b"xy");
        input.extend(request(0, 99, 2, 0, 0));
        input.extend(request(0, proto::CMD_READ, 3, 8190, 4));
        input.extend(request(0, proto::CMD_FLUSH, 4, 0, 0));
        let out = session(&e, Negotiated::default(), &input);
        let errors: Vec<u32> = out
            .chunks(16)
            .map(|c| u32::from_be_bytes(c[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(errors, [proto::EPERM, proto::EINVAL, proto::EINVAL, 0]);
    }

    #[test]
    fn block_status_sends_one_chunk_per_context_and_flags_the_last_done() {
        let e = export(false);
        let negotiated = Negotiated {
            structured: true,
            contexts: vec![MetaContext::BaseAllocation, MetaContext::AllocationDepth],
        };
        let out = session(
            &e,
            negotiated,
            &request(0, proto::CMD_BLOCK_STATUS, 5, 0, 8192),
        );
        // Two chunks of 20 header bytes + context id + one extent.
        assert_eq!(out.len(), 2 * (20 + 4 + 8));
        assert_eq!(&out[4..6], [0, 0]); // first chunk: not done
        assert_eq!(&out[36..38], [0, 1]); // second chunk: done
        assert_eq!(&out[24..32], [0, 0, 0x20, 0, 0, 0, 0, 0]); // 8192 bytes of data
        assert_eq!(&out[56..64], [0, 0, 0x20, 0, 0, 0, 0, 1]); // depth 1
    }

    #[test]
    fn a_request_with_a_bad_magic_ends_the_connection_quietly() {
        let e = export(false);
        let mut input = request(0, proto::CMD_READ, 1, 0, 1);
        input[0] = 0;
        assert!(session(&e, Negotiated::default(), &input).is_empty());
    }
}
