//! Tests of the server's request handling across modules: structured reads with holes,
//! the `qemu:dirty-bitmap:` context over a fake source, `--detect-zeroes`, and batching of
//! replies, on qcow2 exports in memory.

use super::handshake::{MetaContext, Negotiated};
use super::proto::{self, Request};
use super::transmission::{is_zero, serve_requests};
use super::{DetectZeroes, Export};
use crate::device::{BlockDevice, ExtentKind};
use crate::nbd::dirty::StaticRanges;
use crate::nbd::ExportConfig;
use crate::qcow2::{self, CreateOptions};
use crate::storage::MemStorage;
use std::io::{self, Write};
use std::sync::Arc;

/// A 256 KiB qcow2 in memory with 64 KiB clusters and data in the second cluster.
fn qcow2_export(config: ExportConfig) -> Export {
    let opts = CreateOptions {
        size: 256 << 10,
        cluster_size: 64 << 10,
        ..Default::default()
    };
    let mut q = qcow2::create(Arc::new(MemStorage::new()), &opts).unwrap();
    q.write_at(&[7u8; 64 << 10], 64 << 10).unwrap();
    Export::new(Box::new(q), config)
}

fn request(flags: u16, kind: u16, offset: u64, length: u32) -> Vec<u8> {
    let mut v = Vec::new();
    Request {
        magic: proto::REQUEST_MAGIC,
        flags,
        kind,
        cookie: 9,
        offset,
        length,
    }
    .write(&mut v);
    v
}

/// The structured chunks in `out`: (flags, type, payload).
fn chunks(mut out: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    let mut v = Vec::new();
    while out.len() >= 20 {
        let flags = u16::from_be_bytes([out[4], out[5]]);
        let kind = u16::from_be_bytes([out[6], out[7]]);
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        v.push((flags, kind, out[20..20 + len].to_vec()));
        out = &out[20 + len..];
    }
    v
}

fn structured(contexts: Vec<MetaContext>) -> Negotiated {
    Negotiated {
        structured: true,
        contexts,
    }
}

#[test]
fn a_structured_read_sends_holes_as_hole_chunks_and_one_data_chunk_with_df() {
    let e = qcow2_export(ExportConfig::default());
    let mut out = Vec::new();
    let read = request(0, proto::CMD_READ, 0, 256 << 10);
    serve_requests(&read[..], &mut out, &e, structured(vec![])).unwrap();
    let c = chunks(&out);
    let kinds: Vec<(u16, u16)> = c.iter().map(|(f, k, _)| (*f, *k)).collect();
    use proto::REPLY_TYPE_OFFSET_HOLE as HOLE;
    use proto::{REPLY_FLAG_DONE as DONE, REPLY_TYPE_OFFSET_DATA as DATA};
    assert_eq!(kinds, [(0, HOLE), (0, DATA), (DONE, HOLE)]);
    assert_eq!(
        c[0].2,
        [&0u64.to_be_bytes()[..], &(65536u32).to_be_bytes()].concat()
    );
    assert_eq!(c[1].2[..8], 65536u64.to_be_bytes());
    assert_eq!(c[1].2[8..], [7u8; 64 << 10]);
    assert_eq!(c[2].2[..8], (128u64 << 10).to_be_bytes());
    out.clear();
    let df = request(proto::CMD_FLAG_DF, proto::CMD_READ, 0, 256 << 10);
    serve_requests(&df[..], &mut out, &e, structured(vec![])).unwrap();
    let c = chunks(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].0, c[0].1, c[0].2.len()),
        (DONE, DATA, 8 + (256 << 10))
    );
}

#[test]
fn the_dirty_bitmap_context_reports_the_sources_runs() {
    let source = StaticRanges::new("b0", vec![(4096, 8192), (200 << 10, 4096)]);
    let e = qcow2_export(ExportConfig::default()).with_dirty_bitmap(Box::new(source));
    let contexts = vec![MetaContext::BaseAllocation, MetaContext::DirtyBitmap];
    let mut out = Vec::new();
    let mut input = request(0, proto::CMD_BLOCK_STATUS, 0, 256 << 10);
    input.extend(request(
        proto::CMD_FLAG_REQ_ONE,
        proto::CMD_BLOCK_STATUS,
        8192,
        4096,
    ));
    serve_requests(&input[..], &mut out, &e, structured(contexts)).unwrap();
    let words = |p: &[u8]| -> Vec<u32> {
        p.chunks(4)
            .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
            .collect()
    };
    let c = chunks(&out);
    assert_eq!(c.len(), 4);
    assert_eq!(c[0].0, 0);
    assert_eq!(words(&c[0].2), [1, 65536, 3, 65536, 0, 131072, 3]);
    assert_eq!(c[1].0, proto::REPLY_FLAG_DONE);
    assert_eq!(
        words(&c[1].2),
        [3, 4096, 0, 8192, 1, 192512, 0, 4096, 1, 53248, 0]
    );
    // REQ_ONE: the first run only, cut to the request.
    assert_eq!(words(&c[3].2), [3, 4096, 1]);
    assert_eq!(
        e.dirty_context_name().as_deref(),
        Some("qemu:dirty-bitmap:b0")
    );
}

#[test]
fn block_status_for_a_dirty_bitmap_the_export_lacks_is_einval() {
    let e = qcow2_export(ExportConfig::default());
    let mut out = Vec::new();
    let input = request(0, proto::CMD_BLOCK_STATUS, 0, 4096);
    let n = structured(vec![MetaContext::DirtyBitmap]);
    serve_requests(&input[..], &mut out, &e, n).unwrap();
    assert_eq!(out[4..8], proto::EINVAL.to_be_bytes());
}

#[test]
fn detect_zeroes_turns_an_all_zero_write_into_a_zero_cluster() {
    for (detect, kind) in [
        (DetectZeroes::Off, ExtentKind::Data),
        (DetectZeroes::On, ExtentKind::Zero),
        (DetectZeroes::Unmap, ExtentKind::Zero),
    ] {
        let config = ExportConfig {
            detect_zeroes: detect,
            discard: true,
            ..Default::default()
        };
        let e = qcow2_export(config);
        let mut input = request(0, proto::CMD_WRITE, 64 << 10, 64 << 10);
        input.resize(input.len() + (64 << 10), 0);
        let mut out = Vec::new();
        serve_requests(&input[..], &mut out, &e, Negotiated::default()).unwrap();
        assert_eq!(out[4..8], [0; 4], "{detect:?}");
        let status = e.device().block_status(64 << 10, 64 << 10).unwrap();
        assert_eq!(status.kind, kind, "{detect:?}");
        let mut back = vec![1u8; 64 << 10];
        e.device().read_at(&mut back, 64 << 10).unwrap();
        assert!(is_zero(&back), "{detect:?}");
    }
    assert!(!is_zero(&[0, 0, 1]) && is_zero(&[]) && is_zero(&[0; 9000]));
}

/// A writer that counts its flushes.
struct Counting {
    bytes: Vec<u8>,
    flushes: usize,
}
impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

#[test]
fn replies_to_requests_already_received_go_out_together() {
    let e = qcow2_export(ExportConfig::default());
    let mut input = Vec::new();
    for i in 0..8 {
        input.extend(request(0, proto::CMD_READ, i * 4096, 4096));
    }
    let mut w = Counting {
        bytes: Vec::new(),
        flushes: 0,
    };
    serve_requests(&input[..], &mut w, &e, Negotiated::default()).unwrap();
    assert_eq!(w.bytes.len(), 8 * (16 + 4096));
    // One before the first read (nothing in hand yet), one once the eight are answered,
    // one at the end: not one per reply.
    assert_eq!(w.flushes, 3, "flushes for 8 requests");
}
