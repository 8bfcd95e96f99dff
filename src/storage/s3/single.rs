//! [`SinglePut`]: an object whose length is known before its first byte, sent as one
//! streamed PUT instead of a multipart upload. A gateway takes one stream faster than many
//! parts (radosgw here: 673 MiB in 1.5 s against 2.0 s), and there is nothing to abort:
//! S3 keeps nothing of a PUT whose body ends early or fails.
//!
//! The writer hands chunks to a sender thread through a channel of [`CHUNKS_IN_FLIGHT`]
//! places, so at most that many chunks (plus the one being filled) are held in memory.

use super::client::Client;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Largest object sent as one PUT (S3's limit for a single PUT is 5 GiB).
pub const SINGLE_PUT_MAX: u64 = 5 << 30;
/// Bytes of one chunk handed to the sender thread.
pub const CHUNK: usize = 8 << 20;
/// Chunks waiting for the sender thread at most.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A PUT in progress.
pub struct SinglePut {
    sender: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Set to make the body fail (so nothing is stored) at its next read.
    aborted: Arc<AtomicBool>,
}

impl SinglePut {
    /// Start the PUT of `len` bytes of the object `client` names.
    pub fn start(client: Arc<Client>, len: u64) -> SinglePut {
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = aborted.clone();
        let thread = std::thread::spawn(move || {
            let mut body = Body {
                receiver,
                current: Vec::new(),
                at: 0,
                aborted: flag,
            };
            client.put_stream(len, &mut body)
        });
        SinglePut {
            sender: Some(sender),
            thread: Some(thread),
            aborted,
        }
    }

    /// Hand `chunk` (the next bytes of the object) to the sender thread.
    pub fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let sent = self.sender.as_ref().map(|s| s.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its result says why.
            _ => Err(self.wait().err().unwrap_or_else(|| {
                io::Error::other("the PUT ended before all of the object was sent")
            })),
        }
    }

    /// Every byte was sent: wait for the answer.
    pub fn finish(&mut self) -> io::Result<()> {
        self.sender = None;
        self.wait()
    }

    /// Make the PUT fail, so that nothing is stored, and wait for the thread.
    pub fn abort(&mut self) {
        self.aborted.store(true, Ordering::SeqCst);
        let _ = self.wait();
    }

    fn wait(&mut self) -> io::Result<()> {
        self.sender = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the PUT's thread panicked")),
            None => Err(io::Error::other("the PUT already ended")),
        }
    }
}

impl Drop for SinglePut {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.abort();
        }
    }
}

/// The PUT's body: the chunks the writer sends, in order; an abort is a read error.
struct Body {
    receiver: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    aborted: Arc<AtomicBool>,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(io::Error::other("upload aborted"));
        }
        while self.at == self.current.len() {
            match self.receiver.recv() {
                Ok(b) => (self.current, self.at) = (b, 0),
                // The writer finished: the body ends here (it sent every byte first).
                Err(_) if !self.aborted.load(Ordering::SeqCst) => return Ok(0),
                Err(_) => return Err(io::Error::other("upload aborted")),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
