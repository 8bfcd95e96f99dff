//! An NBD client's side of a whole session, fed arbitrary bytes: the handshake (options,
//! option data, export names, metadata context queries) and then the transmission phase
//! (request headers, write payloads) against a 64 KiB raw export in memory. Errors and
//! hang-ups are fine; panics, overflows, hangs and huge allocations are not.
//!
//! Input layout: one byte of export settings (bit 0 read-only, bit 1 allocation depth,
//! bit 2 discard, bit 3 two clients, bits 4-5 detect-zeroes off/on/unmap), then the bytes the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};
use vdisk::nbd::handshake::{handshake, Outcome};
use vdisk::nbd::transmission::serve_requests;
use vdisk::nbd::{DetectZeroes, Export, ExportConfig};
use vdisk::raw::Raw;
use vdisk::storage::MemStorage;

/// The client: its bytes to read, and a sink for the server's replies.
struct Client<'a> {
    input: &'a [u8],
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, input)) = data.split_first() else {
        return;
    };
    let Ok(raw) = Raw::open(MemStorage::from_vec(vec![0x5a; 64 << 10]), false) else {
        return;
    };
    let config = ExportConfig {
        name: String::new(),
        description: Some("fuzz".into()),
        read_only: settings & 1 != 0,
        allocation_depth: settings & 2 != 0,
        discard: settings & 4 != 0,
        shared: if settings & 8 != 0 { 2 } else { 1 },
        detect_zeroes: match settings >> 4 & 3 {
            1 => DetectZeroes::On,
            2 => DetectZeroes::Unmap,
            _ => DetectZeroes::Off,
        },
    };
    let export = Export::new(Box::new(raw), config);
    let mut client = Client { input };
    if let Ok(Outcome::Transmission(negotiated)) = handshake(&mut client, &export) {
        let _ = serve_requests(&mut client, io::sink(), &export, negotiated);
    }
});
