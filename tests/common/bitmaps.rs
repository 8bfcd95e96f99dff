//! Persistent dirty bitmaps as QEMU sees them: the list `qemu-img info` gives, and the
//! dirty ranges `qemu-nbd -B` exports (read with `qemu-img map` and `x-dirty-bitmap`,
//! where a dirty range shows as `"data": false`): the oracle for dirty tracking.

use super::{describe, parse_json, qemu_img, qemu_img_ok, s, tempdir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bitmaps of `img` as `qemu-img info --output=json` lists them (null: none).
pub fn qemu_bitmaps(img: &Path) -> serde_json::Value {
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", "-f", "qcow2", s(img)]),
    );
    info["format-specific"]["data"]["bitmaps"].clone()
}

/// The dirty ranges of bitmap `name` of `img`, as QEMU exports them, merged.
pub fn qemu_dirty_ranges(img: &Path, name: &str) -> Vec<(u64, u64)> {
    let dir = tempdir();
    let sock = dir.path().join("nbd.sock");
    let mut server = Command::new("qemu-nbd")
        .args(["-r", "-f", "qcow2", "-B", name, "-k", s(&sock), s(img)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-nbd");
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(_)) = server.try_wait() {
            let out = server.wait_with_output().expect("qemu-nbd output");
            panic!("{}", describe("qemu-nbd -B", &out));
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:{name}",
        s(&sock)
    );
    let out = qemu_img(["map", "--output=json", "--image-opts", &opts]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img map over NBD", &out)
    );
    let map = parse_json("map", &String::from_utf8_lossy(&out.stdout));
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in map.as_array().expect("a map is an array") {
        if e["data"] == false {
            let (a, l) = (
                e["start"].as_u64().unwrap_or(0),
                e["length"].as_u64().unwrap_or(0),
            );
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == a => last.1 += l,
                _ => ranges.push((a, l)),
            }
        }
    }
    ranges
}
