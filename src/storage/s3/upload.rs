//! [`S3Upload`]: a new object written as an S3 multipart upload, a [`Storage`] whose
//! [`sequential`](Storage::sequential) is `true`.
//!
//! The upload is started when the storage is made (so bad credentials fail before anything
//! is written). Writes must come in order: each starts at or past the end of every earlier
//! one, and the bytes skipped over are zeros ([`Storage::set_len`] and
//! [`Storage::punch_hole`] past the end only move where the object ends). A write before
//! the end is refused with an error naming its offset, and fails the upload: a format
//! writer that seeks back cannot produce a correct object this way.
//!
//! Bytes gather into a part buffer; each full part (see [`part_size`]) goes to a pool of
//! [`PARTS_IN_FLIGHT`] uploader threads through a hand-over with no queue, so at most
//! `PARTS_IN_FLIGHT + 1` parts are held in memory. [`Storage::finish`] sends the last part
//! (zero-padded to the set length), waits for every part and completes the upload; the
//! object appears only then. Any failure (a part that could not be uploaded after the
//! client's retries, a write out of order, completion refused), and dropping the storage
//! before `finish`, aborts the upload, so no partial object is ever left.
//!
//! When the writer sets the object's length before its first byte (raw output, the
//! sequential qcow2 layout) and it is at most [`SINGLE_PUT_MAX`], the multipart upload is
//! dropped and the object goes as one streamed PUT instead ([`super::single`]); the length
//! is then fixed.

use super::client::Client;
use super::single::{Piece, SinglePut, CHUNK, SINGLE_PUT_MAX, ZERO_PIECE_MIN};
use crate::storage::Storage;
use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Size of the first parts (S3 wants at least 5 MiB for every part but the last).
pub const PART_SIZE: usize = 16 << 20;
/// Parts uploading at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// S3's limit on the parts of one upload.
pub const MAX_PARTS: u16 = 10_000;
/// Parts of one size before the size doubles (see [`part_size`]).
const PARTS_PER_SIZE: u16 = 1_000;

/// The size of part `number` (from 1): [`PART_SIZE`], doubled after every
/// [`PARTS_PER_SIZE`] parts up to 64 times as large, so the 10,000 parts S3 allows hold
/// nearly 5 TiB (S3's largest object) while small objects keep small parts.
pub fn part_size(number: u16) -> usize {
    PART_SIZE << ((number.saturating_sub(1) / PARTS_PER_SIZE).min(6) as usize)
}

/// A multipart upload in progress.
pub struct S3Upload {
    client: Arc<Client>,
    id: String,
    state: Mutex<State>,
}

/// What the writer has handed over, and the uploaders' results.
struct State {
    part: Vec<u8>,
    /// Offset of the first byte in `part`; everything before went to the uploaders.
    part_start: u64,
    /// Where the object ends so far (bytes written, or a length set, past the last write).
    len: u64,
    next_part: u16,
    phase: Phase,
    sender: Option<SyncSender<(u16, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    results: Arc<Mutex<Results>>,
    /// The object goes as one PUT of a length fixed before the first byte.
    single: Option<SinglePut>,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Open,
    Completed,
    Failed(String),
}

#[derive(Default)]
struct Results {
    etags: BTreeMap<u16, String>,
    error: Option<io::Error>,
}

impl S3Upload {
    /// Start a multipart upload of the object `client` names.
    pub fn create(client: Client) -> io::Result<S3Upload> {
        let id = client.create_upload()?;
        let client = Arc::new(client);
        let (sender, receiver) = sync_channel::<(u16, Vec<u8>)>(0);
        let receiver = Arc::new(Mutex::new(receiver));
        let results = Arc::new(Mutex::new(Results::default()));
        let workers = (0..PARTS_IN_FLIGHT)
            .map(|_| {
                let (c, id, r, res) = (
                    client.clone(),
                    id.clone(),
                    receiver.clone(),
                    results.clone(),
                );
                std::thread::spawn(move || upload_parts(&c, &id, &r, &res))
            })
            .collect();
        let state = State {
            part: Vec::new(),
            part_start: 0,
            len: 0,
            next_part: 1,
            phase: Phase::Open,
            sender: Some(sender),
            workers,
            results,
            single: None,
        };
        Ok(S3Upload {
            client,
            id,
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail the upload with `error`: stop the uploaders and abort it (once).
    fn fail(&self, st: &mut State, error: io::Error) -> io::Error {
        if st.phase == Phase::Open {
            st.phase = Phase::Failed(error.to_string());
            abort(&self.client, &self.id, st);
        }
        error
    }

    /// Refuse anything but more writes once the upload failed or completed.
    fn check_open(&self, st: &State) -> io::Result<()> {
        match &st.phase {
            Phase::Open => Ok(()),
            Phase::Completed => Err(io::Error::other(format!(
                "{}: the upload is already complete; nothing more can be written",
                self.client.name()
            ))),
            Phase::Failed(why) => Err(io::Error::other(format!(
                "{}: the upload failed earlier and was aborted ({why})",
                self.client.name()
            ))),
        }
    }

    /// Append `data` (or `zeros` zero bytes) at the end, handing over every full part.
    fn append(&self, st: &mut State, data: &[u8], zeros: u64) -> io::Result<()> {
        let (mut data, mut zeros) = (data, zeros);
        if zeros >= ZERO_PIECE_MIN && st.single.is_some() {
            // A long zero run goes to the PUT as its length, after the bytes before it.
            if !st.part.is_empty() {
                self.hand_over(st)?;
            }
            let run = std::mem::take(&mut zeros);
            st.part_start += run;
            if let Some(put) = st.single.as_mut() {
                put.send(Piece::Zeros(run))?;
            }
        }
        while !data.is_empty() || zeros > 0 {
            let size = match st.single {
                Some(_) => CHUNK,
                None => part_size(st.next_part),
            };
            if st.part.capacity() == 0 {
                // One allocation per part, made when its first byte arrives (a PUT's
                // chunks are reused once sent).
                match &st.single {
                    Some(put) => st.part = put.buffer(),
                    None => st.part.reserve_exact(size),
                }
            }
            let room = size - st.part.len();
            if zeros > 0 {
                let n = zeros.min(room as u64) as usize;
                st.part.resize(st.part.len() + n, 0);
                zeros -= n as u64;
            } else {
                let n = data.len().min(room);
                st.part.extend_from_slice(&data[..n]);
                data = &data[n..];
            }
            if st.part.len() == size {
                self.hand_over(st)?;
            }
        }
        Ok(())
    }

    /// Send the part buffer to the uploaders as the next part (or the PUT's next chunk).
    fn hand_over(&self, st: &mut State) -> io::Result<()> {
        if let Some(put) = st.single.as_mut() {
            let chunk = std::mem::take(&mut st.part);
            st.part_start += chunk.len() as u64;
            return put.send(Piece::Data(chunk));
        }
        if let Some(e) = take_error(&st.results) {
            return Err(e);
        }
        if st.next_part > MAX_PARTS {
            return Err(io::Error::other(format!(
                "{}: the object needs more than {MAX_PARTS} parts",
                self.client.name()
            )));
        }
        let part = std::mem::take(&mut st.part);
        st.part_start += part.len() as u64;
        let sent = st.sender.as_ref().map(|s| s.send((st.next_part, part)));
        st.next_part += 1;
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(take_error(&st.results).unwrap_or_else(|| {
                io::Error::other(format!(
                    "{}: the part uploaders stopped",
                    self.client.name()
                ))
            })),
        }
    }

    /// Send the last part, wait for all, and complete the upload.
    fn complete(&self, st: &mut State) -> io::Result<()> {
        let end = st.part_start + st.part.len() as u64;
        self.append(st, &[], st.len - end)?;
        if st.single.is_some() {
            if !st.part.is_empty() {
                self.hand_over(st)?;
            }
            return st.single.as_mut().map_or(Ok(()), SinglePut::finish);
        }
        if !st.part.is_empty() || st.next_part == 1 {
            self.hand_over(st)?;
        }
        stop_workers(st);
        if let Some(e) = take_error(&st.results) {
            return Err(e);
        }
        let etags: Vec<String> = {
            let r = st.results.lock().unwrap_or_else(|e| e.into_inner());
            (1..st.next_part)
                .map_while(|n| r.etags.get(&n).cloned())
                .collect()
        };
        if etags.len() != usize::from(st.next_part - 1) {
            return Err(io::Error::other(format!(
                "{}: a part's upload result is missing",
                self.client.name()
            )));
        }
        self.client.complete_upload(&self.id, &etags)
    }
}

/// An uploader thread: take parts until the writer hangs up; after the first failure,
/// take and drop the rest (the writer learns of it at its next hand-over).
fn upload_parts(
    client: &Client,
    id: &str,
    parts: &Mutex<Receiver<(u16, Vec<u8>)>>,
    results: &Mutex<Results>,
) {
    loop {
        let next = parts.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((number, data)) = next else {
            return;
        };
        if results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .is_some()
        {
            continue;
        }
        let outcome = client.upload_part(id, number, &data);
        let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(etag) => {
                r.etags.insert(number, etag);
            }
            Err(e) => {
                r.error.get_or_insert(e);
            }
        }
    }
}

fn take_error(results: &Mutex<Results>) -> Option<io::Error> {
    let r = results.lock().unwrap_or_else(|e| e.into_inner());
    r.error
        .as_ref()
        .map(|e| io::Error::new(e.kind(), e.to_string()))
}

/// Abort what is in flight: the PUT, or the uploaders and the multipart upload `id`.
fn abort(client: &Client, id: &str, st: &mut State) {
    if let Some(mut put) = st.single.take() {
        put.abort();
        return;
    }
    stop_workers(st);
    let _ = client.abort_upload(id);
}

/// Hang up on the uploaders and wait for the parts they hold.
fn stop_workers(st: &mut State) {
    st.sender = None;
    for w in st.workers.drain(..) {
        let _ = w.join();
    }
}

impl Storage for S3Upload {
    fn read_at(&self, _buf: &mut [u8], offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: reading at {offset:#x}: an upload in progress cannot be read back",
                self.client.name()
            ),
        ))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state();
        self.check_open(&st)?;
        let end = st.part_start + st.part.len() as u64;
        if offset < end {
            let e = io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{}: write at offset {offset:#x} is before the end of the upload ({end:#x}): an S3 object is written in order, and this output format wrote out of order", self.client.name()),
            );
            return Err(self.fail(&mut st, e));
        }
        let past = offset + buf.len() as u64;
        if st.single.is_some() && past > st.len {
            let e = io::Error::other(format!(
                "{}: write up to {past:#x} past the length set before the first write ({:#x})",
                self.client.name(),
                st.len
            ));
            return Err(self.fail(&mut st, e));
        }
        let wrote = self
            .append(&mut st, &[], offset - end)
            .and_then(|()| self.append(&mut st, buf, 0));
        if let Err(e) = wrote {
            return Err(self.fail(&mut st, e));
        }
        st.len = st.len.max(offset + buf.len() as u64);
        Ok(())
    }

    /// Nothing is durable before [`finish`](Storage::finish); reports a failed part early.
    fn flush(&self) -> io::Result<()> {
        let mut st = self.state();
        if st.phase == Phase::Completed {
            return Ok(());
        }
        self.check_open(&st)?;
        match take_error(&st.results) {
            Some(e) => Err(self.fail(&mut st, e)),
            None => Ok(()),
        }
    }

    fn finish(&self) -> io::Result<()> {
        let mut st = self.state();
        if st.phase == Phase::Completed {
            return Ok(());
        }
        self.check_open(&st)?;
        match self.complete(&mut st) {
            Ok(()) => {
                st.phase = Phase::Completed;
                Ok(())
            }
            Err(e) => Err(self.fail(&mut st, e)),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state().len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state();
        self.check_open(&st)?;
        let end = st.part_start + st.part.len() as u64;
        if len < end {
            let e = io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: cannot shorten an upload to {len:#x} below what was written ({end:#x})",
                    self.client.name()
                ),
            );
            return Err(self.fail(&mut st, e));
        }
        if st.single.is_some() && len != st.len {
            let e = io::Error::other(format!(
                "{}: the length was set to {:#x} before the first write and cannot change to {len:#x}",
                self.client.name(),
                st.len
            ));
            return Err(self.fail(&mut st, e));
        }
        let untouched = end == 0 && st.len == 0 && st.next_part == 1;
        if untouched && len > 0 && len <= SINGLE_PUT_MAX {
            // The whole object is known to be `len` bytes: one streamed PUT.
            stop_workers(&mut st);
            let _ = self.client.abort_upload(&self.id);
            st.single = Some(SinglePut::start(self.client.clone(), len));
        }
        st.len = len;
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.state();
        self.check_open(&st)?;
        let end = st.part_start + st.part.len() as u64;
        if offset < end {
            drop(st);
            return crate::storage::write_zero_bytes(self, offset, len);
        }
        st.len = st.len.max(offset.saturating_add(len));
        Ok(())
    }

    fn protocol(&self) -> &'static str {
        "s3"
    }

    fn sequential(&self) -> bool {
        true
    }
}

impl Drop for S3Upload {
    /// An upload never finished is aborted: no partial object, no parts left billed.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if st.phase == Phase::Open {
            abort(&self.client, &self.id, st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_start_at_the_part_size_and_double_every_thousand() {
        assert_eq!(part_size(1), PART_SIZE);
        assert_eq!(part_size(1000), PART_SIZE);
        assert_eq!(part_size(1001), 2 * PART_SIZE);
        assert_eq!(part_size(7000), 64 * PART_SIZE);
        assert_eq!(part_size(10_000), 64 * PART_SIZE);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(n) as u64).sum();
        assert!(total > 4 << 40, "{total}");
        const { assert!(PART_SIZE >= 5 << 20) };
    }
}
