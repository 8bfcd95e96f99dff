//! [`MemStorage`]: a growable in-memory byte buffer.

use super::{read_from_slice, resize_vec, write_to_vec, Storage};
use std::io;
use std::sync::Mutex;

/// Storage held in memory. Flush does nothing.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: Mutex<Vec<u8>>,
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// A storage holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStorage {
            data: Mutex::new(data),
        }
    }

    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        read_from_slice(&data, buf, offset);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        write_to_vec(&mut data, buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        resize_vec(&mut data, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero_and_writes_grow_the_buffer() {
        let s = MemStorage::new();
        s.write_at(b"abc", 4).unwrap();
        assert_eq!(s.len().unwrap(), 7);
        let mut buf = [0xffu8; 10];
        s.read_at(&mut buf, 2).unwrap();
        assert_eq!(&buf, b"\0\0abc\0\0\0\0\0");
    }
}
