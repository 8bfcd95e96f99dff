//! Guest operations spelled as qemu-io commands (`write -P`, `write -z`, `write -z -u`,
//! `discard`): random sequences of them, and the same commands applied through vdisk's
//! library, so one history can run through qemu-io on one copy of an image and through
//! vdisk on another.

use super::{pattern, rng};
use serde_json::Value;
use vdisk::BlockDevice;

/// Random qemu-io commands over a disk of `size` bytes with `cs`-byte clusters: writes,
/// zero writes (with and without unmap) and discards at subcluster-sized and odd offsets.
pub fn random_ops(seed: u64, size: u64, cs: u64) -> Vec<String> {
    let mut r = rng(seed);
    let sub = cs / 32;
    (0..40)
        .map(|i| {
            let unit = match r.below(3) {
                0 => sub,
                1 => 512,
                _ => cs,
            };
            let off = r.below(size / unit) * unit;
            let len = ((1 + r.below(8)) * unit).min(size - off);
            match r.below(6) {
                0 => format!("write -z {off} {len}"),
                1 => format!("write -z -u {off} {len}"),
                2 => format!("discard {off} {len}"),
                _ => format!("write -P {} {off} {len}", i % 250 + 1),
            }
        })
        .collect()
}

/// Apply one command of [`random_ops`] to `dev` as qemu-io applies it.
pub fn apply(dev: &mut dyn BlockDevice, op: &str) -> vdisk::Result<()> {
    let words: Vec<&str> = op.split_whitespace().collect();
    let num = |w: &str| w.parse::<u64>().expect("a number in the command");
    match words.as_slice() {
        ["write", "-P", p, off, len] => {
            let byte = num(p) as u8;
            dev.write_at(&vec![byte; num(len) as usize], num(off))
        }
        // qemu-io's zero write keeps allocated clusters unless told it may unmap them.
        ["write", "-z", off, len] => dev.zero_range(num(off), num(len), false),
        ["write", "-z", "-u", off, len] => dev.zero_range(num(off), num(len), true),
        ["discard", off, len] => dev.discard(num(off), num(len)),
        _ => panic!("unknown command {op}"),
    }
}

/// The qemu-io arguments that run `ops` on the qcow2 image `img`.
pub fn qemu_io_args(ops: &[String], img: &str) -> Vec<String> {
    let mut args = vec!["-f".to_string(), "qcow2".into()];
    for op in ops {
        args.extend(["-c".into(), op.clone()]);
    }
    args.push(img.into());
    args
}

/// A backing file's bytes: a pattern with no zero runs.
pub fn base_bytes(seed: u32, size: u64) -> Vec<u8> {
    pattern(seed, 0, size as usize)
}

/// The extents of a `qemu-img map --output=json` without host offsets, one line each
/// (`start+length depth present zero data compressed`), neighbours alike merged: qemu-img
/// splits extents where host offsets jump, and two tools place clusters apart.
pub fn map_kinds(json: &str) -> Vec<String> {
    let v: Vec<Value> = serde_json::from_str(json).expect("map JSON");
    let mut merged: Vec<(u64, u64, String)> = Vec::new();
    for e in &v {
        let kind = ["depth", "present", "zero", "data", "compressed"]
            .map(|k| e[k].to_string())
            .join(" ");
        let start = e["start"].as_u64().unwrap_or(0);
        let len = e["length"].as_u64().unwrap_or(0);
        match merged.last_mut() {
            Some(last) if last.2 == kind && last.0 + last.1 == start => last.1 += len,
            _ => merged.push((start, len, kind)),
        }
    }
    merged
        .into_iter()
        .map(|(a, l, k)| format!("{a}+{l} {k}"))
        .collect()
}
