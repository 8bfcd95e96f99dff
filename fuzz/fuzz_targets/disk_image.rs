//! Shared by the `vdi_image`, `vhd_image` and `vhdx_image` targets: the bytes are an image
//! of one format, driven through its row of the driver table as the CLI drives it.
//!
//! Read-only: open, walk the map (`block_status` and `map_status`), read at a few places,
//! `info`, `check` and `dump`. Writable (on a copy): a few writes, zero writes and
//! discards chosen from the input's own bytes, a flush, a reopen and a read, then
//! `check -r all`. Errors are fine; a panic, an overflow, a hang or a huge allocation is
//! not. The storage refuses to grow past [`GROWTH_LIMIT`], so a hostile block size costs
//! an error instead of the fuzzer's memory.

use std::io;
use std::path::Path;
use std::sync::Arc;
use vdisk::check_report::Repair;
use vdisk::driver::{Driver, DumpOptions, OpenParams};
use vdisk::storage::{MemFiles, MemStorage, Storage};
use vdisk::BlockDevice;

/// The most a written image may grow to.
const GROWTH_LIMIT: u64 = 96 << 20;
/// Operations run on the writable copy.
const OPS: usize = 6;

/// In-memory storage that refuses to grow past [`GROWTH_LIMIT`].
struct Capped(MemStorage);

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "fuzz storage growth limit")
}

impl Storage for Capped {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= GROWTH_LIMIT.max(self.0.len()?) => self.0.write_at(buf, offset),
            _ => Err(too_big()),
        }
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > GROWTH_LIMIT.max(self.0.len()?) {
            return Err(too_big());
        }
        self.0.set_len(len)
    }
}

fn namespace(bytes: Vec<u8>) -> (MemFiles, Arc<Capped>) {
    let ns = MemFiles::new();
    let st = Arc::new(Capped(MemStorage::from_vec(bytes)));
    ns.insert("d/img", st.clone());
    (ns, st)
}

/// A small xorshift stream seeded from the input, for offsets and lengths.
struct Rng(u64);

impl Rng {
    fn new(data: &[u8]) -> Rng {
        let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64;
        for &b in data.iter().rev().take(64) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Walk the first runs of the map and read at a few places.
fn read_around(dev: &mut dyn BlockDevice, rng: &mut Rng) {
    let size = dev.virtual_size();
    let mut pos = 0u64;
    for _ in 0..64 {
        if pos >= size {
            break;
        }
        let _ = dev.map_status(pos, size - pos);
        match dev.block_status(pos, size - pos) {
            Ok(e) if e.length > 0 => pos = pos.saturating_add(e.length),
            _ => break,
        }
    }
    let mut buf = vec![0u8; 8192];
    for _ in 0..8 {
        if size == 0 {
            break;
        }
        let off = rng.next() % size;
        let len = (rng.next() % 8192 + 1).min(size - off) as usize;
        let _ = dev.read_at(&mut buf[..len], off);
    }
}

/// Exercise `driver` on the image `data` (see the module documentation).
pub fn exercise(driver: &Driver, data: &[u8]) {
    let path = Path::new("d/img");
    let mut rng = Rng::new(data);
    let (ns, _) = namespace(data.to_vec());
    if let Ok(mut opened) = (driver.open)(&ns, path, &OpenParams::read_only(true)) {
        read_around(opened.device.as_mut(), &mut rng);
    }
    let _ = (driver.info)(&ns, path, true);
    if let Some(check) = driver.check {
        let _ = check(&ns, path, Repair::None, true);
    }
    if let Some(dump) = driver.dump {
        let _ = dump(&ns, path, DumpOptions::default(), true);
    }

    let (ns, _) = namespace(data.to_vec());
    let writable = OpenParams::default();
    if let Ok(mut opened) = (driver.open)(&ns, path, &writable) {
        let dev = opened.device.as_mut();
        let size = dev.virtual_size();
        for _ in 0..OPS {
            if size == 0 {
                break;
            }
            let off = rng.next() % size;
            let len = (rng.next() % (160 << 10) + 1).min(size - off);
            let _ = match rng.next() % 5 {
                0 | 1 => dev.write_at(&vec![rng.next() as u8 | 1; len as usize], off),
                2 => dev.write_zeroes(off, len),
                3 => dev.discard(off, len),
                _ => dev.flush(),
            };
        }
        let _ = dev.close();
    }
    if let Ok(mut opened) = (driver.open)(&ns, path, &OpenParams::read_only(true)) {
        read_around(opened.device.as_mut(), &mut rng);
    }
    if let Some(check) = driver.check {
        let _ = check(&ns, path, Repair::All, false);
    }
}
