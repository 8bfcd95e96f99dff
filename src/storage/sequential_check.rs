//! [`SequentialCheck`]: a storage wrapper that enforces the [`Storage::sequential`]
//! contract, for tests of writers that must lay their output out in order.
//!
//! It reports `sequential() == true` and refuses, with an error naming the offsets, every
//! operation an upload stream could not perform: a write that starts below the end of an
//! earlier write (the high-water mark), a read of any byte below that mark, shrinking the
//! storage, punching a hole, asking where its data is, or writing after
//! [`Storage::finish`]. Growing it with `set_len` is
//! allowed: it sets the final length (the bytes not written read as zeros, as a gap
//! between two writes does) and later writes may still go anywhere past the mark. What passes is written through to the inner storage, where a test reads it.

use super::Storage;
use std::io;
use std::sync::{Arc, Mutex};

/// A storage that takes writes only in order and never gives written bytes back.
pub struct SequentialCheck {
    inner: Arc<dyn Storage>,
    /// End of the furthest write so far.
    high: Mutex<u64>,
    /// [`Storage::finish`] was called: nothing more may be written.
    finished: std::sync::atomic::AtomicBool,
}

impl SequentialCheck {
    /// Wrap `inner` (empty).
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        SequentialCheck {
            inner,
            high: Mutex::new(0),
            finished: Default::default(),
        }
    }

    /// Whether [`Storage::finish`] was called.
    pub fn is_finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The storage the accepted writes went to.
    pub fn inner(&self) -> &Arc<dyn Storage> {
        &self.inner
    }

    fn high(&self) -> std::sync::MutexGuard<'_, u64> {
        self.high.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn refused(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("sequential storage: {what}"),
    )
}

impl Storage for SequentialCheck {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let high = *self.high();
        if !buf.is_empty() && offset < high {
            return Err(refused(format!(
                "read of {} bytes at {offset:#x}, below the {high:#x} bytes already written",
                buf.len()
            )));
        }
        buf.fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut high = self.high();
        if buf.is_empty() {
            return Ok(());
        }
        if self.is_finished() {
            return Err(refused(format!("write at {offset:#x} after finish")));
        }
        if offset < *high {
            return Err(refused(format!(
                "write of {} bytes at {offset:#x}, below the {:#x} bytes already written",
                buf.len(),
                *high
            )));
        }
        self.inner.write_at(buf, offset)?;
        *high = offset + buf.len() as u64;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn finish(&self) -> io::Result<()> {
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.finish()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let high = self.high();
        let now = self.inner.len()?;
        if len < now || len < *high {
            return Err(refused(format!(
                "shrinking from {:#x} to {len:#x} bytes",
                now.max(*high)
            )));
        }
        self.inner.set_len(len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        Err(refused(format!("punching a hole at {offset:#x}+{len:#x}")))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        Err(refused(format!("allocating {offset:#x}+{len:#x}")))
    }

    fn data_extent(&self, offset: u64) -> io::Result<(bool, u64)> {
        Err(refused(format!(
            "asking for the data extent at {offset:#x}"
        )))
    }

    fn sequential(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn writes_in_order_pass_and_everything_else_is_refused() {
        let mem: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let s = SequentialCheck::new(mem.clone());
        assert!(s.sequential());
        s.write_at(b"abcd", 0).unwrap();
        s.write_at(b"ef", 8).unwrap(); // a gap reads as zeros
        assert!(s.write_at(b"x", 9).is_err(), "rewrite below the mark");
        assert!(s.write_at(b"x", 0).is_err());
        let mut buf = [1u8; 2];
        assert!(s.read_at(&mut buf, 3).is_err(), "read-back");
        s.read_at(&mut buf, 10).unwrap();
        assert_eq!(buf, [0, 0]);
        assert!(s.set_len(5).is_err(), "shrink");
        s.set_len(16).unwrap();
        assert!(s.set_len(12).is_err(), "shrink below the length set");
        s.write_at(b"y", 16).unwrap();
        assert!(s.punch_hole(0, 4).is_err());
        assert!(s.data_extent(0).is_err());
        s.finish().unwrap();
        assert!(s.is_finished());
        assert!(s.write_at(b"z", 100).is_err(), "after finish");
        let mut got = vec![0u8; 17];
        mem.read_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"abcd\0\0\0\0ef\0\0\0\0\0\0y");
    }
}
