//! Power cuts at every write and flush of the bitmap operations (issue 14): `vdisk bitmap`
//! operations and a guest-write session on an image with enabled bitmaps. Every durable
//! image must pass `qemu-img check` without corruption and hold either the bitmaps before,
//! the bitmaps after, or (mid-session only) the tracked bitmaps marked in use, which is
//! what QEMU leaves after a crash.

mod common;

use common::crash::{every_cut_one, qemu_check};
use common::{qemu_img_ok, qemu_io_ok, read, tempdir};
use std::sync::Arc;
use vdisk::qcow2::bitmap::Op;
use vdisk::qcow2::{OpenOptions, Qcow2};
use vdisk::storage::{FaultStorage, MemStorage};
use vdisk::BlockDevice;

/// (name, flags, dirty ranges) of every bitmap, as vdisk reads them; in-use ones have no
/// ranges.
type Listing = Vec<(String, u32, Vec<(u64, u64)>)>;

fn listing(bytes: &[u8]) -> Listing {
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let q = Qcow2::open(Arc::new(MemStorage::from_vec(bytes.to_vec())), ro)
        .expect("the durable image opens");
    q.bitmap_entries()
        .into_iter()
        .map(|e| {
            let ranges = match e.in_use() {
                true => Vec::new(),
                false => q
                    .bitmap_dirty_ranges(&e.name)
                    .expect("a consistent bitmap reads"),
            };
            (e.name, e.flags, ranges)
        })
        .collect()
}

/// An image made by qemu-img: bitmaps `b0` (enabled, some bits set), `gone` and `off`
/// (disabled), and some data.
fn initial() -> Vec<u8> {
    let dir = tempdir();
    let p = dir.path().join("i.qcow2");
    let p = p.to_str().expect("utf-8");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        p,
        "4M",
    ]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 1 0 256k", p]);
    qemu_img_ok(&["bitmap", "--add", "-g", "16k", p, "b0"]);
    qemu_img_ok(&["bitmap", "--add", p, "gone"]);
    qemu_img_ok(&["bitmap", "--add", "--disable", p, "off"]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 2 1M 100k",
        "-c",
        "discard 3M 64k",
        p,
    ]);
    read(std::path::Path::new(p))
}

#[track_caller]
fn assert_consistent(what: &str, cut: u64, bytes: &[u8]) {
    let c = qemu_check(bytes);
    assert!(c.is_consistent(), "{what}: cut {cut}: {}", c.output);
}

#[test]
fn a_power_cut_during_bitmap_commands_leaves_the_old_bitmaps_or_the_new() {
    let start = initial();
    let before = listing(&start);
    let ops = [
        Op::Add {
            granularity: Some(8192),
        },
        Op::MergeNamed("b0".into()),
        Op::Disable,
    ];
    let apply = |s: Arc<FaultStorage>| -> vdisk::Result<u64> {
        let mut q = Qcow2::open(s.clone(), OpenOptions::default())?;
        q.bitmap_ops("new", &ops)?;
        q.bitmap_ops("gone", &[Op::Remove])?;
        q.bitmap_ops("b0", &[Op::Clear])?;
        q.close()?;
        Ok(s.ops())
    };
    let done = Arc::new(FaultStorage::new(start.clone()));
    apply(done.clone()).expect("uncut");
    let after = listing(&done.durable_image());
    assert_eq!(after.len(), 3, "{after:?}");
    let cuts = every_cut_one("bitmap commands", &start, apply, |cut, bytes, completed| {
        assert_consistent("bitmap commands", cut, bytes);
        let now = listing(bytes);
        if completed {
            assert_eq!(now, after, "cut {cut}");
        }
        // Each command is one transaction: every state is one the commands pass through.
        let names: Vec<&str> = now.iter().map(|b| b.0.as_str()).collect();
        assert!(
            now == before || names == ["b0", "gone", "off", "new"] || names == ["b0", "off", "new"],
            "cut {cut}: {now:?}"
        );
        assert!(
            now.iter().all(|b| b.1 & 1 == 0),
            "cut {cut}: nothing is left in use"
        );
    });
    assert!(cuts > 10, "{cuts} cut points");
}

#[test]
fn a_power_cut_during_guest_writes_leaves_the_bitmaps_consistent_or_in_use() {
    let start = initial();
    let before = listing(&start);
    let writes: [(u64, u64); 3] = [
        (64 << 10, 4096),
        (2 << 20, 200 << 10),
        ((4 << 20) - 512, 512),
    ];
    let apply = |s: Arc<FaultStorage>| -> vdisk::Result<u64> {
        let mut q = Qcow2::open(s.clone(), OpenOptions::default())?;
        for &(o, l) in &writes {
            q.write_at(&vec![7u8; l as usize], o)?;
        }
        q.write_zeroes(3 << 20, 4096)?;
        q.close()?;
        Ok(s.ops())
    };
    let done = Arc::new(FaultStorage::new(start.clone()));
    apply(done.clone()).expect("uncut");
    let after = listing(&done.durable_image());
    assert_ne!(after, before);
    let cuts = every_cut_one("guest writes", &start, apply, |cut, bytes, completed| {
        assert_consistent("guest writes", cut, bytes);
        let now = listing(bytes);
        if completed {
            assert_eq!(now, after, "cut {cut}");
        }
        // Mid-session: the enabled bitmaps (b0, gone) in use, the disabled one as it was.
        let in_use = now[..2].iter().all(|b| b.1 == 3) && now[2] == before[2];
        let ok = now == before || now == after || in_use;
        assert!(ok, "cut {cut}: {now:?}");
    });
    assert!(cuts > 5, "{cuts} cut points");
}
