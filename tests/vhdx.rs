//! VHDX against qemu-img: images qemu-img makes (every subformat, block size, log size and
//! block state) read identically through vdisk (info, map, check, contents); images vdisk
//! makes pass `qemu-img check`, compare equal and have qemu-img's layout; the two tools
//! take turns writing one image; a log QEMU left dirty is refused read-only and replayed on
//! a writable open, and QEMU replays the logs vdisk leaves; power cuts at every write lose
//! no flushed data; hostile images get one clear error; differencing images (which
//! qemu-img refuses) read and write through their parent.

mod common;

use common::crash::{cut_rounds, Rounds};
use common::{
    answer, assert_qemu_compare_identical, qemu_img, qemu_img_ok, qemu_io_ok, rng, s, tempdir,
    vdisk, vdisk_ok, write_mixed_raw,
};
use std::path::Path;
use std::sync::Arc;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::storage::Storage;
use vdisk::vhdx::{OpenMode, Vhdx};
use vdisk::BlockDevice;

const MIB: u64 = 1 << 20;

/// Writes through qemu-io: partial blocks, block-spanning runs, whole MiBs, the tail.
const QEMU_WRITES: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 1020k 8k",
    "write -P 0x33 3M 1M",
    "write -P 0x44 4605k 3k",
    "write -z 3M 64k",
];

/// A new VHDX with 1 MiB blocks, made by qemu-img.
fn qemu_create_1m(img: &Path, size: &str) {
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        s(img),
        size,
    ]);
}

fn assert_same_answers(img: &Path) {
    for args in [
        vec!["info", "-f", "vhdx"],
        vec!["info", "-f", "vhdx", "--output=json"],
        vec!["check", "-f", "vhdx"],
        vec!["check", "-f", "vhdx", "--output=json"],
        vec!["map", "-f", "vhdx", "--output=json"],
        vec!["info"],
    ] {
        let mut a = args.clone();
        a.push(s(img));
        assert_eq!(answer(vdisk(&a)), answer(qemu_img(&a)), "{a:?}");
    }
}

fn assert_same_contents(img: &Path, dir: &Path) {
    let mine = common::vdisk_raw_contents(img, dir);
    let theirs = common::qemu_raw_contents(img, dir);
    common::assert_bytes_eq(&format!("{img:?} contents"), &mine, &theirs);
}

#[test]
fn qemu_made_images_read_identically_with_the_same_info_map_and_check() {
    let dir = tempdir();
    let cases = [
        "subformat=dynamic",
        "subformat=fixed",
        "subformat=fixed,block_state_zero=off",
        "subformat=dynamic,block_state_zero=off",
        "block_size=1M",
        "block_size=32M,log_size=2M",
        "block_size=256M",
        "subformat=fixed,block_size=1M",
    ];
    for (i, opts) in cases.iter().enumerate() {
        let img = dir.path().join(format!("q{i}.vhdx"));
        qemu_img_ok(&["create", "-q", "-f", "vhdx", "-o", opts, s(&img), "4609k"]);
        assert_same_answers(&img);
        for w in QEMU_WRITES {
            qemu_io_ok(&["-f", "vhdx", "-c", w, s(&img)]);
        }
        assert_same_answers(&img);
        assert_same_contents(&img, dir.path());
    }
}

#[test]
fn vdisk_made_images_pass_qemu_check_and_compare_equal() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    write_mixed_raw(&src, 9 * MIB + 4096, 300 << 10, 7);
    for opts in [
        "subformat=dynamic",
        "subformat=fixed",
        "block_size=1M",
        "block_state_zero=off",
        "log_size=2M,block_size=2M",
    ] {
        let out = dir.path().join("out.vhdx");
        let _ = std::fs::remove_file(&out);
        vdisk_ok(&["convert", "-O", "vhdx", "-o", opts, s(&src), s(&out)]);
        common::assert_qemu_check_clean(&out);
        assert_qemu_compare_identical(&src, &out);
        let back = dir.path().join("back.raw");
        vdisk_ok(&["convert", "-O", "raw", s(&out), s(&back)]);
        assert_qemu_compare_identical(&src, &back);
    }
}

/// Blank the parts of a new image that differ between any two creations: the creator
/// text, the two headers (random GUIDs and sequence numbers) and the page 83 GUID.
fn mask_random_fields(b: &mut [u8]) {
    b[8..520].fill(0);
    b[0x10000..0x11000].fill(0);
    b[0x20000..0x21000].fill(0);
    let md = u64::from_le_bytes(b[0x30000 + 16 + 32 + 16..][..8].try_into().unwrap()) as usize;
    b[md + 0x10000 + 16..md + 0x10000 + 32].fill(0);
}

#[test]
fn new_images_have_qemu_imgs_layout_byte_for_byte() {
    let dir = tempdir();
    for (opts, size) in [
        ("subformat=dynamic", "10M"),
        ("subformat=fixed", "5M"),
        ("subformat=fixed,block_state_zero=off", "5M"),
        ("block_size=1M,log_size=3M", "4609k"),
        ("block_state_zero=off", "2G"),
    ] {
        let (a, b) = (dir.path().join("a.vhdx"), dir.path().join("b.vhdx"));
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
        qemu_img_ok(&["create", "-q", "-f", "vhdx", "-o", opts, s(&a), size]);
        vdisk_ok(&["create", "-q", "-f", "vhdx", "-o", opts, s(&b), size]);
        let (mut x, mut y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(x.len(), y.len(), "{opts}: file length");
        mask_random_fields(&mut x);
        mask_random_fields(&mut y);
        common::assert_bytes_eq(opts, &x, &y);
        common::assert_qemu_check_clean(&b);
    }
}

fn open_vhdx(img: &Path) -> image::Image {
    image::open(
        img,
        &ImageOptions {
            format: Some(Format::of(&vdisk::vhdx::DRIVER)),
            ..Default::default()
        },
    )
    .expect("open vhdx")
}

#[test]
fn vdisk_and_qemu_take_turns_writing_one_image() {
    let dir = tempdir();
    let img = dir.path().join("turns.vhdx");
    let model = dir.path().join("model.raw");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        s(&img),
        "6M",
    ]);
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&model), "6M"]);
    let mut r = rng(11);
    for round in 0..6 {
        let off = r.below(6 * MIB - 300_000) & !511;
        let len = (1 + r.below(300_000)).next_multiple_of(512);
        let pat = 0x30 + round;
        let w = format!("write -P {pat} {off} {len}");
        if round % 2 == 0 {
            qemu_io_ok(&["-f", "vhdx", "-c", &w, s(&img)]);
        } else {
            let mut im = open_vhdx(&img);
            im.device
                .write_at(&vec![pat as u8; len as usize], off)
                .expect("write");
            im.device.close().expect("close");
        }
        qemu_io_ok(&["-f", "raw", "-c", &w, s(&model)]);
        common::assert_qemu_check_clean(&img);
        assert_qemu_compare_identical(&model, &img);
    }
}

/// An image QEMU left with a log to replay: qemu-io killed (through strace's fault
/// injection) at a write after its log entry was synced and before the BAT was. The kill
/// lands among several threads, so a few tries may be needed.
fn qemu_dirty_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("dirty.vhdx");
    for attempt in 0..60 {
        let _ = std::fs::remove_file(&img);
        qemu_img_ok(&["create", "-q", "-f", "vhdx", s(&img), "64M"]);
        qemu_io_ok(&["-f", "vhdx", "-c", "write -P 5 0 1M", s(&img)]);
        let when = format!("inject=pwrite64:signal=KILL:when={}", 4 + attempt % 4);
        let _ = common::run_program(
            "strace",
            [
                "-f",
                "-o",
                "/dev/null",
                "-e",
                &when,
                "qemu-io",
                "-f",
                "vhdx",
                "-c",
                "write -P 6 20M 4k",
                s(&img),
            ],
        );
        let (_, err, _) = answer(qemu_img(["info", s(&img)]));
        if err.contains("needs to be replayed") {
            return img;
        }
    }
    panic!("qemu-io never left a dirty log");
}

#[test]
fn a_log_qemu_left_dirty_is_refused_read_only_and_replayed_on_a_writable_open() {
    let dir = tempdir();
    let img = qemu_dirty_image(dir.path());
    for a in [vec!["info"], vec!["check"], vec!["map", "--output=json"]] {
        let mut a = a.clone();
        a.push(s(&img));
        assert_eq!(answer(vdisk(&a)), answer(qemu_img(&a)), "{a:?}");
    }
    let theirs = dir.path().join("theirs.vhdx");
    std::fs::copy(&img, &theirs).unwrap();
    let a = ["check", "-r", "all", "--output=json"];
    let q = answer(qemu_img([&a[..], &[s(&theirs)]].concat()));
    let v = answer(vdisk([&a[..], &[s(&img)]].concat()));
    assert_eq!(
        (v.0.replace("dirty.vhdx", "X"), v.2),
        (q.0.replace("theirs.vhdx", "X"), q.2)
    );
    assert_qemu_compare_identical(&theirs, &img);
    common::assert_qemu_check_clean(&img);
    qemu_io_ok(&["-f", "vhdx", "-c", "read -P 5 0 1M", s(&img)]);
}

/// Opens through a writable open, which replays a log a cut left (as a reboot would).
fn open_on(st: Arc<dyn Storage>, _writing: bool) -> vdisk::Result<Vhdx<Arc<dyn Storage>>> {
    Vhdx::open(st, OpenMode::default())
}

#[test]
fn a_power_cut_at_any_write_loses_no_flushed_data_and_qemu_replays_what_is_left() {
    let dir = tempdir();
    let empty = dir.path().join("empty.vhdx");
    qemu_create_1m(&empty, "6M");
    let rounds: Rounds = vec![
        vec![(100, 3000, 1), (2 * MIB - 10, 20, 2)],
        vec![(0, 512, 3), (5 * MIB, MIB as usize, 4)],
    ];
    let cuts = cut_rounds(
        "vhdx allocating writes",
        &std::fs::read(&empty).unwrap(),
        &vec![0u8; 6 * MIB as usize],
        &rounds,
        open_on,
        qemu_agrees_after_cut,
    );
    assert!(cuts >= 20, "{cuts} cut points");
}

/// QEMU opens what a cut left (replaying any log with `check -r all`) and reads what
/// vdisk read.
fn qemu_agrees_after_cut(cut: u64, bytes: &[u8], vdisk_read: &[u8]) {
    let dir = tempdir();
    let p = dir.path().join("cut.vhdx");
    std::fs::write(&p, bytes).unwrap();
    let out = qemu_img(["check", "-r", "all", s(&p)]);
    assert!(
        out.status.success(),
        "cut {cut}: {}",
        common::describe("check", &out)
    );
    let theirs = common::qemu_raw_contents(&p, dir.path());
    common::assert_bytes_eq(&format!("cut {cut}"), &theirs, vdisk_read);
}

/// Poke `bytes` at `at` into a copy of `base` and fix the checksum of the 4 KiB header or
/// 64 KiB region table at `sum_of` when given.
fn poked(base: &[u8], pokes: &[(usize, &[u8])], sum_of: Option<(usize, usize)>) -> Vec<u8> {
    let mut b = base.to_vec();
    for (at, bytes) in pokes {
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    if let Some((at, len)) = sum_of {
        b[at + 4..at + 8].fill(0);
        let crc = crc32c::crc32c(&b[at..at + len]);
        b[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

#[test]
fn hostile_images_get_one_clear_error_and_never_a_panic() {
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    qemu_create_1m(&base, "5M");
    qemu_io_ok(&["-f", "vhdx", "-c", "write -P 1 1M 4k", s(&base)]);
    let b = std::fs::read(&base).unwrap();
    let (h1, h2, rt) = (0x10000, 0x20000, 0x30000);
    let bat = 2 * MIB as usize;
    let md = 3 * MIB as usize;
    let far = (1u64 << 47).to_le_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "both headers bad",
            poked(&b, &[(h1 + 8, &[9]), (h2 + 8, &[9])], None),
            "No valid VHDX header found",
        ),
        (
            "region entry overlaps the log",
            poked(
                &b,
                &[(rt + 16 + 16, &MIB.to_le_bytes())],
                Some((rt, 0x10000)),
            ),
            "overlaps",
        ),
        (
            "region table bad checksum",
            poked(&b, &[(rt + 100, &[1])], None),
            "region table",
        ),
        (
            "metadata item past the region",
            poked(&b, &[(md + 32 + 16, &(2 * MIB as u32).to_le_bytes())], None),
            "outside the metadata region",
        ),
        (
            "block size out of range",
            poked(&b, &[(md + 0x10000, &(512u32 << 20).to_le_bytes())], None),
            "block size",
        ),
        (
            "huge disk size",
            poked(&b, &[(md + 0x10000 + 8, &far)], None),
            "64 TiB",
        ),
        (
            "BAT entry past the end",
            poked(&b, &[(bat + 8, &((1u64 << 40) | 6).to_le_bytes())], None),
            "points after end of file",
        ),
    ];
    for (what, bytes, expect) in cases {
        let img = dir.path().join("hostile.vhdx");
        std::fs::write(&img, &bytes).unwrap();
        let (_, err, code) = answer(vdisk(["info", s(&img)]));
        assert_eq!(code, 1, "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        let (_, _, qcode) = answer(qemu_img(["info", s(&img)]));
        assert_eq!(qcode, 1, "{what}: qemu-img opened it");
    }
    // One bad header: the other one is used, by both tools.
    let img = dir.path().join("one.vhdx");
    std::fs::write(&img, poked(&b, &[(h2 + 100, &[1])], None)).unwrap();
    assert_same_answers(&img);
}

#[test]
fn check_reports_bad_bat_entries_as_qemu_does() {
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    qemu_create_1m(&base, "5M");
    qemu_io_ok(&[
        "-f",
        "vhdx",
        "-c",
        "write -P 1 1M 4k",
        "-c",
        "write -P 2 3M 4k",
        s(&base),
    ]);
    let b = std::fs::read(&base).unwrap();
    let bat = 2 * MIB as usize;
    let past_end = ((1u64 << 40) | 6).to_le_bytes();
    let into_log = (MIB | 6).to_le_bytes();
    let last_mib = ((b.len() as u64 - MIB / 2) & !(MIB - 1) | 6).to_le_bytes();
    let cases: &[&[(usize, &[u8])]] = &[
        &[(bat + 8, &past_end)],
        &[(bat + 16, &into_log)],
        &[
            (bat + 8, &past_end),
            (bat + 24, &into_log),
            (bat, &last_mib),
        ],
    ];
    for (i, pokes) in cases.iter().enumerate() {
        let img = dir.path().join(format!("bad{i}.vhdx"));
        let mut bytes = poked(&b, pokes, None);
        if i == 2 {
            // The last payload block loses its end: QEMU's "end offset" message.
            bytes.truncate(bytes.len() - 4096);
        }
        std::fs::write(&img, bytes).unwrap();
        for out in ["human", "json"] {
            let a = ["check", "-f", "vhdx", "--output", out, s(&img)];
            assert_eq!(answer(vdisk(a)), answer(qemu_img(a)), "case {i} {out}");
        }
    }
}

/// A log entry under the header's log GUID, written by hand into `b`.
fn with_log_entry(b: &[u8], target: u64, corrupt: bool) -> Vec<u8> {
    let guid = [0x5a; 16];
    let mut entry = vec![0u8; 8192];
    entry[..4].copy_from_slice(b"loge");
    entry[8..12].copy_from_slice(&8192u32.to_le_bytes());
    entry[16..24].copy_from_slice(&1u64.to_le_bytes());
    entry[24..28].copy_from_slice(&1u32.to_le_bytes());
    entry[32..48].copy_from_slice(&guid);
    entry[48..56].copy_from_slice(&(b.len() as u64).to_le_bytes());
    entry[56..64].copy_from_slice(&(b.len() as u64).to_le_bytes());
    entry[64..68].copy_from_slice(b"zero");
    entry[72..80].copy_from_slice(&4096u64.to_le_bytes());
    entry[80..88].copy_from_slice(&target.to_le_bytes());
    entry[88..96].copy_from_slice(&1u64.to_le_bytes());
    let crc = crc32c::crc32c(&entry);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
    if corrupt {
        entry[5000] = 1;
    }
    let mut out = b.to_vec();
    out[MIB as usize..MIB as usize + 8192].copy_from_slice(&entry);
    // Both headers carry the log GUID.
    for h in [0x10000usize, 0x20000] {
        out[h + 48..h + 64].copy_from_slice(&guid);
        out[h + 4..h + 8].fill(0);
        let crc = crc32c::crc32c(&out[h..h + 4096]);
        out[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
    }
    out
}

#[test]
fn hostile_logs_are_refused_or_ignored_as_the_format_says() {
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    qemu_create_1m(&base, "5M");
    qemu_io_ok(&["-f", "vhdx", "-c", "write -P 1 1M 4k", s(&base)]);
    let b = std::fs::read(&base).unwrap();
    let img = dir.path().join("log.vhdx");
    // A bad checksum: no valid entry, nothing to replay; both tools open it.
    std::fs::write(&img, with_log_entry(&b, 2 * MIB, true)).unwrap();
    assert_same_answers(&img);
    // A valid entry writing into the header section or past the file: refused.
    for target in [0x10000, 1 << 40] {
        std::fs::write(&img, with_log_entry(&b, target, false)).unwrap();
        let (_, err, code) = answer(vdisk(["check", "-r", "all", s(&img)]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("VHDX log"), "{err}");
    }
    // A valid entry zeroing the BAT page: replayed, the written block is gone.
    std::fs::write(&img, with_log_entry(&b, 2 * MIB, false)).unwrap();
    let (_, err, code) = answer(vdisk(["info", s(&img)]));
    assert_eq!(code, 1);
    assert!(err.contains("needs to be replayed"), "{err}");
    let theirs = dir.path().join("theirs.vhdx");
    std::fs::copy(&img, &theirs).unwrap();
    vdisk_ok(&["check", "-r", "all", s(&img)]);
    qemu_img_ok(&["check", "-r", "all", s(&theirs)]);
    assert_qemu_compare_identical(&img, &theirs);
    qemu_io_ok(&["-f", "vhdx", "-c", "read -P 0 1M 4k", s(&img)]);
}

#[test]
fn a_differencing_image_reads_and_writes_through_its_parent() {
    let dir = tempdir();
    let parent = dir.path().join("parent.vhdx");
    let child = dir.path().join("child.vhdx");
    let model = dir.path().join("model.raw");
    qemu_create_1m(&parent, "4M");
    qemu_io_ok(&["-f", "vhdx", "-c", "write -P 0xa1 0 4M", s(&parent)]);
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&model), "4M"]);
    qemu_io_ok(&["-f", "raw", "-c", "write -P 0xa1 0 4M", s(&model)]);
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-b",
        "parent.vhdx",
        "-F",
        "vhdx",
        s(&child),
    ]);
    // The parent locator links to the parent's data write GUID, by relative path.
    let header_of = |p: &Path| {
        let doc = common::parse_json("dump", &vdisk_ok(&["dump", "--header", "--json", s(p)]));
        doc["header"].clone()
    };
    let (ph, ch) = (header_of(&parent), header_of(&child));
    let locator = &ch["parent_locator"];
    assert_eq!(locator["parent_linkage"], ph["data_write_guid"], "{ch}");
    assert_eq!(locator["relative_path"], ".\\parent.vhdx", "{ch}");
    assert_eq!(ch["has_parent"], true);
    // Its map resolves through the parent as that of a qcow2 overlay does in qemu-img.
    let overlay = dir.path().join("overlay.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "parent.vhdx",
        "-F",
        "vhdx",
        s(&overlay),
    ]);
    let theirs = qemu_img_ok(&["map", "--output=json", s(&overlay)]);
    assert_eq!(vdisk_ok(&["map", "--output=json", s(&child)]), theirs);
    // qemu-img refuses it; vdisk names the parent and reads through it.
    let (_, _, code) = answer(qemu_img(["info", s(&child)]));
    assert_eq!(code, 1);
    let info = vdisk_ok(&["info", "--output=json", s(&child)]);
    assert!(
        info.contains("\"backing-filename\": \"parent.vhdx\""),
        "{info}"
    );
    common::write_child_like_model(&child, &model, dir.path());
    let p = common::qemu_raw_contents(&parent, dir.path());
    assert!(p.iter().all(|&b| b == 0xa1), "the parent changed");
    std::fs::remove_file(&parent).unwrap();
    let again = dir.path().join("again.raw");
    let (_, err, code) = answer(vdisk(["convert", "-O", "raw", s(&child), s(&again)]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("parent.vhdx"), "{err}");
}

#[test]
fn a_parent_loop_is_refused_and_odd_logs_are_treated_as_qemu_does() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.vhdx"), dir.path().join("b.vhdx"));
    vdisk_ok(&["create", "-q", "-f", "vhdx", s(&a), "4M"]);
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-b",
        "a.vhdx",
        "-F",
        "vhdx",
        s(&b),
    ]);
    // a is made again as a child of b: a -> b -> a.
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-b",
        "b.vhdx",
        "-F",
        "vhdx",
        s(&a),
    ]);
    let out = dir.path().join("out.raw");
    let (_, err, code) = answer(vdisk(["convert", "-O", "raw", s(&a), s(&out)]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("loops"), "{err}");
    // A log GUID in the header with the log placed past the end of the file.
    let base = dir.path().join("base.vhdx");
    qemu_img_ok(&["create", "-q", "-f", "vhdx", s(&base), "4M"]);
    let bytes = std::fs::read(&base).unwrap();
    let mut pokes: Vec<(usize, &[u8])> = Vec::new();
    let guid = [0x5au8; 16];
    let far = (1u64 << 40).to_le_bytes();
    pokes.push((0x20000 + 48, &guid));
    pokes.push((0x20000 + 72, &far));
    let img = dir.path().join("far-log.vhdx");
    std::fs::write(&img, poked(&bytes, &pokes, Some((0x20000, 4096)))).unwrap();
    // It reads as zeros: no entries to replay, for either tool.
    assert_same_answers(&img);
    // A log length that is not whole MiB: refused by both.
    let odd = 4096u32.to_le_bytes();
    let img = dir.path().join("odd-log.vhdx");
    let pokes: Vec<(usize, &[u8])> = vec![(0x20000 + 48, &guid), (0x20000 + 68, &odd)];
    std::fs::write(&img, poked(&bytes, &pokes, Some((0x20000, 4096)))).unwrap();
    let (_, err, code) = answer(vdisk(["info", s(&img)]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("VHDX log"), "{err}");
    assert_eq!(answer(qemu_img(["info", s(&img)])).2, 1);
}

#[test]
fn a_power_cut_at_any_write_to_a_differencing_image_loses_no_flushed_data() {
    let dir = tempdir();
    let parent = dir.path().join("parent.vhdx");
    let child = dir.path().join("child.vhdx");
    qemu_create_1m(&parent, "4M");
    qemu_io_ok(&["-f", "vhdx", "-c", "write -P 0xa1 0 4M", s(&parent)]);
    let child_opts = ["create", "-q", "-f", "vhdx", "-o", "block_size=1M", "-b"];
    vdisk_ok(&[&child_opts[..], &["parent.vhdx", "-F", "vhdx", s(&child)]].concat());
    let parent_bytes = std::fs::read(&parent).unwrap();
    let rounds: Rounds = vec![
        vec![(100, 3000, 1), (2 * MIB - 10, 20, 2)],
        vec![(3 * MIB + 512, 512, 3)],
    ];
    let open_chain = |st: Arc<dyn Storage>, writing| -> vdisk::Result<Vhdx<Arc<dyn Storage>>> {
        let mut c = open_on(st, writing)?;
        let p: Arc<dyn Storage> =
            Arc::new(vdisk::storage::MemStorage::from_vec(parent_bytes.clone()));
        let ro = OpenMode {
            read_only: true,
            ..Default::default()
        };
        c.attach_backing(Box::new(Vhdx::open(p, ro)?))?;
        Ok(c)
    };
    let cuts = cut_rounds(
        "vhdx differencing writes",
        &std::fs::read(&child).unwrap(),
        &vec![0xa1u8; 4 * MIB as usize],
        &rounds,
        open_chain,
        |_, _, _| {},
    );
    assert!(cuts >= 15, "{cuts} cut points");
}
