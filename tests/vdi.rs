//! VDI against qemu-img: images qemu-img makes read identically through vdisk (info, map,
//! check, contents); images vdisk makes pass `qemu-img check` and compare equal; the two
//! tools take turns writing one image; differencing images read through their parent
//! (which qemu-img cannot do); power cuts at every write of allocating writes lose no
//! flushed data.

mod common;

use common::crash::{cut_rounds, Rounds};
use common::{
    answer, assert_qemu_compare_identical, qemu_img, qemu_img_ok, qemu_io_ok, rng, s, tempdir,
    vdisk, vdisk_ok, write_mixed_raw,
};
use std::path::Path;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::vdi::Vdi;
use vdisk::BlockDevice;

const MIB: u64 = 1 << 20;

fn raw_of(img: &Path, fmt: &str, dir: &Path, tag: &str) -> Vec<u8> {
    let out = dir.join(format!("{tag}.raw"));
    qemu_img_ok(&["convert", "-f", fmt, "-O", "raw", s(img), s(&out)]);
    std::fs::read(&out).expect("read converted image")
}

/// Writes through qemu-io that cover partial blocks, block-spanning runs and whole blocks.
const QEMU_WRITES: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 1020k 8k",
    "write -P 0x33 3M 1M",
    "write -P 0x44 4609k 3k",
];

#[test]
fn qemu_made_images_read_identically_with_the_same_info_map_and_check() {
    let dir = tempdir();
    for (opts, size) in [
        ("static=off", "5M"),
        ("static=on", "3M"),
        ("static=off", "4609k"),
    ] {
        let img = dir.path().join(format!("q-{opts}-{size}.vdi"));
        qemu_img_ok(&["create", "-q", "-f", "vdi", "-o", opts, s(&img), size]);
        for w in QEMU_WRITES {
            // Writes past the end of the smaller images fail; the rest still apply.
            let _ = common::qemu_io(["-f", "vdi", "-c", w, s(&img)]);
        }
        for args in [
            vec!["info", "-f", "vdi"],
            vec!["info", "-f", "vdi", "--output=json"],
            vec!["check", "-f", "vdi"],
            vec!["check", "-f", "vdi", "--output=json"],
        ] {
            let mut a = args.clone();
            a.push(s(&img));
            assert_eq!(answer(vdisk(&a)), answer(qemu_img(&a)), "{a:?}");
        }
        let a = ["map", "-f", "vdi", "--output=json", s(&img)];
        assert_eq!(answer(vdisk(a)), answer(qemu_img(a)), "{img:?}");
        let mine = dir.path().join("mine.raw");
        vdisk_ok(&["convert", "-f", "vdi", "-O", "raw", s(&img), s(&mine)]);
        let theirs = raw_of(&img, "vdi", dir.path(), "theirs");
        common::assert_bytes_eq("vdi contents", &std::fs::read(&mine).unwrap(), &theirs);
    }
}

#[test]
fn vdisk_made_images_pass_qemu_check_and_compare_equal() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    write_mixed_raw(&src, 9 * MIB + 4096, 300 << 10, 7);
    for opts in ["static=off", "static=on"] {
        let out = dir.path().join(format!("out-{opts}.vdi"));
        vdisk_ok(&["convert", "-O", "vdi", "-o", opts, s(&src), s(&out)]);
        common::assert_qemu_check_clean(&out);
        assert_qemu_compare_identical(&src, &out);
        let back = dir.path().join("back.raw");
        vdisk_ok(&["convert", "-O", "raw", s(&out), s(&back)]);
        assert_qemu_compare_identical(&src, &back);
        // An empty image made by each tool: the same bytes but for the two random UUIDs.
        let (a, b) = (dir.path().join("a.vdi"), dir.path().join("b.vdi"));
        qemu_img_ok(&["create", "-q", "-f", "vdi", "-o", opts, s(&a), "7M"]);
        vdisk_ok(&["create", "-q", "-f", "vdi", "-o", opts, s(&b), "7M"]);
        let (mut x, mut y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        x[0x188..0x1a8].fill(0);
        y[0x188..0x1a8].fill(0);
        assert_eq!(x.len(), y.len(), "{opts}: file length");
        common::assert_bytes_eq(opts, &x, &y);
    }
}

#[test]
fn vdisk_and_qemu_take_turns_writing_one_image() {
    let dir = tempdir();
    let img = dir.path().join("turns.vdi");
    let model = dir.path().join("model.raw");
    vdisk_ok(&["create", "-q", "-f", "vdi", s(&img), "6M"]);
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&model), "6M"]);
    let mut r = rng(11);
    for round in 0..6 {
        let off = r.below(6 * MIB - 300_000);
        let len = 1 + r.below(300_000);
        let pat = 0x30 + round;
        if round % 2 == 0 {
            let w = format!("write -P {pat} {off} {len}");
            qemu_io_ok(&["-f", "vdi", "-c", &w, s(&img)]);
        } else {
            let mut im = image::open(
                &img,
                &ImageOptions {
                    format: Some(Format::of(&vdisk::vdi::DRIVER)),
                    ..Default::default()
                },
            )
            .expect("open vdi");
            im.device
                .write_at(&vec![pat as u8; len as usize], off)
                .expect("write");
            im.device.close().expect("close");
        }
        let w = format!("write -P {pat} {off} {len}");
        qemu_io_ok(&["-f", "raw", "-c", &w, s(&model)]);
        common::assert_qemu_check_clean(&img);
        assert_qemu_compare_identical(&model, &img);
    }
}

#[test]
fn check_reports_a_broken_block_map_as_qemu_does_and_refuses_repairs_as_qemu_does() {
    let dir = tempdir();
    let base = dir.path().join("base.vdi");
    qemu_img_ok(&["create", "-q", "-f", "vdi", s(&base), "5M"]);
    qemu_io_ok(&[
        "-f",
        "vdi",
        "-c",
        "write -P 1 1M 4k",
        "-c",
        "write -P 2 3M 4k",
        s(&base),
    ]);
    let pokes: &[&[(usize, &[u8])]] = &[
        &[(0x184, &[7])],                                     // count too high
        &[(0x200, &[9, 0, 0, 0]), (0x208, &[1, 0, 0, 0])],    // too large, and used twice
        &[(0x184, &[0]), (0x20c, &[0xfe, 0xff, 0xff, 0xff])], // count too low, a zero block
    ];
    for (i, poke) in pokes.iter().enumerate() {
        let img = dir.path().join(format!("bad{i}.vdi"));
        let mut b = std::fs::read(&base).unwrap();
        for (at, bytes) in *poke {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        std::fs::write(&img, b).unwrap();
        // QEMU's VDI check only reports: `-r` is refused as unsupported (exit 63).
        for repair in [&[][..], &["-r", "leaks"], &["-r", "all"]] {
            for out in ["human", "json"] {
                let a = [
                    &["check", "-f", "vdi", "--output", out][..],
                    repair,
                    &[s(&img)],
                ]
                .concat();
                let (mine, theirs) = (answer(vdisk(&a)), answer(qemu_img(&a)));
                assert_eq!(mine, theirs, "case {i} {a:?}");
            }
        }
    }
    // An image that does not open fails the same way with `-r`.
    let img = dir.path().join("bad-header.vdi");
    let mut b = std::fs::read(&base).unwrap();
    b[0x40] ^= 1;
    std::fs::write(&img, b).unwrap();
    let a = ["check", "-r", "all", "-f", "vdi", s(&img)];
    let (mine, theirs) = (answer(vdisk(a)), answer(qemu_img(a)));
    assert_eq!((mine.2, theirs.2), (1, 1), "{mine:?} {theirs:?}");
}

#[test]
fn hostile_headers_get_qemus_error_and_never_a_panic() {
    let dir = tempdir();
    let base = dir.path().join("base.vdi");
    qemu_img_ok(&["create", "-q", "-f", "vdi", s(&base), "5M"]);
    let pokes: &[(usize, &[u8])] = &[
        (0x44, &[0, 0, 2, 0]),
        (0x154, &[1, 2, 0, 0]),
        (0x158, &[1, 4, 0, 0]),
        (0x168, &[0, 1, 0, 0]),
        (0x178, &[0, 0, 0x20, 0]),
        (0x180, &[4]),
        (0x1a8, &[1]),
        (0x1b8, &[1]),
        (0x170, &[0, 0, 0, 0, 0, 0, 0, 0x40]),
        (0x180, &[0x81, 0xff, 0xff, 0x1f]),
    ];
    for (at, bytes) in pokes {
        let img = dir.path().join("hostile.vdi");
        let mut b = std::fs::read(&base).unwrap();
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&img, b).unwrap();
        let a = ["info", "-f", "vdi", s(&img)];
        let (mine, theirs) = (answer(vdisk(a)), answer(qemu_img(a)));
        assert_eq!(mine.2, 1, "{at:#x}: {mine:?}");
        assert_eq!(theirs.2, 1, "{at:#x}: {theirs:?}");
        let reason = |e: &str| e.rsplit(": ").next().unwrap_or("").trim().to_string();
        assert_eq!(reason(&mine.1), reason(&theirs.1), "{at:#x}");
    }
    // A block map larger than the file: refused before anything is sized from it.
    let img = dir.path().join("huge.vdi");
    let mut b = std::fs::read(&base).unwrap();
    b[0x170..0x178].copy_from_slice(&(1u64 << 40).to_le_bytes());
    b[0x180..0x184].copy_from_slice(&(1u32 << 20).to_le_bytes());
    std::fs::write(&img, b).unwrap();
    let (_, err, code) = answer(vdisk(["info", s(&img)]));
    assert_eq!(code, 1);
    assert!(err.contains("VDI block map"), "{err}");
}

/// Make `child` a differencing image of `parent`: an empty dynamic image of the same size
/// whose link UUID is the parent's image UUID.
fn make_differencing(parent: &Path, child: &Path, size: &str) {
    qemu_img_ok(&["create", "-q", "-f", "vdi", s(child), size]);
    let p = std::fs::read(parent).unwrap();
    let mut c = std::fs::read(child).unwrap();
    c[0x4c] = 4;
    c[0x1a8..0x1b8].copy_from_slice(&p[0x188..0x198]);
    c[0x1b8..0x1c8].copy_from_slice(&p[0x198..0x1a8]);
    std::fs::write(child, c).unwrap();
}

#[test]
fn a_parent_loop_and_a_missing_parent_are_refused_with_one_clear_error() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.vdi"), dir.path().join("b.vdi"));
    qemu_img_ok(&["create", "-q", "-f", "vdi", s(&b), "4M"]);
    // a's parent is b, then b's parent is a (b made differencing with a's UUID).
    make_differencing(&b, &a, "4M");
    let other = dir.path().join("other.vdi");
    std::fs::rename(&b, &other).unwrap();
    make_differencing(&a, &b, "4M");
    let mut bb = std::fs::read(&b).unwrap();
    bb[0x188..0x198].copy_from_slice(&std::fs::read(&other).unwrap()[0x188..0x198]);
    std::fs::write(&b, bb).unwrap();
    std::fs::remove_file(&other).unwrap();
    let out = dir.path().join("out.raw");
    for args in [
        vec!["info", "--backing-chain", s(&a)],
        vec!["convert", "-O", "raw", s(&a), s(&out)],
    ] {
        let (_, err, code) = answer(vdisk(&args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("loops back"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // An image linked to its own UUID has no parent in its directory.
    let mut aa = std::fs::read(&a).unwrap();
    let own = aa[0x188..0x198].to_vec();
    aa[0x1a8..0x1b8].copy_from_slice(&own);
    std::fs::write(&a, aa).unwrap();
    std::fs::remove_file(&b).unwrap();
    let (_, err, code) = answer(vdisk(["info", s(&a)]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("could not find the parent"), "{err}");
}

#[test]
fn a_differencing_image_reads_through_its_parent_found_by_uuid() {
    let dir = tempdir();
    let parent = dir.path().join("parent.vdi");
    let child = dir.path().join("child.vdi");
    let model = dir.path().join("model.raw");
    // Block 4 of the parent is never written, block 5 is not touched in the child: reads
    // there come from the parent (data) and from its hole (zeros).
    qemu_img_ok(&["create", "-q", "-f", "vdi", s(&parent), "6M"]);
    qemu_io_ok(&[
        "-f",
        "vdi",
        "-c",
        "write -P 0xa1 0 4M",
        "-c",
        "write -P 0xa5 5M 1M",
        s(&parent),
    ]);
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&model), "6M"]);
    qemu_io_ok(&[
        "-f",
        "raw",
        "-c",
        "write -P 0xa1 0 4M",
        "-c",
        "write -P 0xa5 5M 1M",
        s(&model),
    ]);
    std::fs::write(dir.path().join("unrelated.txt"), b"not an image").unwrap();
    make_differencing(&parent, &child, "6M");
    // qemu-img refuses it; vdisk names the parent and reads through it.
    let (_, err, code) = answer(qemu_img(["info", s(&child)]));
    assert_eq!(
        (code, err.trim_end().ends_with("(non-NULL link UUID)")),
        (1, true)
    );
    let info = vdisk_ok(&["info", "--output=json", s(&child)]);
    assert!(
        info.contains("\"backing-filename\": \"parent.vdi\""),
        "{info}"
    );
    common::write_child_like_model(&child, &model, dir.path());
    // The map goes through the parent where the child has nothing.
    let map = vdisk_ok(&["map", "--output=json", s(&child)]);
    assert!(
        map.contains("\"start\": 5242880, \"length\": 1048576, \"depth\": 1"),
        "{map}"
    );
    // The parent is unchanged.
    let p = raw_of(&parent, "vdi", dir.path(), "parent");
    assert!(p[..4 << 20].iter().all(|&b| b == 0xa1));
    // dump shows every section when none is asked for.
    let dump = vdisk_ok(&["dump", s(&child)]);
    assert!(
        dump.contains("block_map") && dump.contains("uuid_link"),
        "{dump}"
    );
    // Without the parent, opening fails with a clear error.
    std::fs::remove_file(&parent).unwrap();
    let (_, err, code) = answer(vdisk(["info", s(&child)]));
    assert_eq!(code, 1);
    assert!(err.contains("could not find the parent"), "{err}");
}

#[test]
fn a_power_cut_at_any_write_of_allocating_writes_loses_no_flushed_data() {
    let dir = tempdir();
    let empty = dir.path().join("empty.vdi");
    qemu_img_ok(&["create", "-q", "-f", "vdi", s(&empty), "6M"]);
    let rounds: Rounds = vec![
        vec![(100, 3000, 1), (2 * MIB - 10, 20, 2)],
        vec![(0, 512, 3), (5 * MIB, MIB as usize, 4)],
        vec![(MIB + 7, 70_000, 5), (3 * MIB, 1, 6)],
    ];
    let cuts = cut_rounds(
        "vdi allocating writes",
        &std::fs::read(&empty).unwrap(),
        &vec![0u8; 6 * MIB as usize],
        &rounds,
        |st, writing| Vdi::open(st, !writing),
        |cut, bytes, _| judge_after_cut(cut, bytes),
    );
    assert!(cuts >= 9, "{cuts} cut points");
}

/// After a cut, QEMU may only see a count that is too high (blocks counted but not yet in
/// the map); a writable open through vdisk corrects it, and then QEMU's check is clean.
fn judge_after_cut(cut: u64, bytes: &[u8]) {
    let dir = tempdir();
    let p = dir.path().join("cut.vdi");
    std::fs::write(&p, bytes).unwrap();
    let (_, err, code) = answer(qemu_img(["check", "-f", "vdi", s(&p)]));
    if code != 0 {
        let (is, should) = parse_mismatch(&err).unwrap_or_else(|| panic!("cut {cut}: {err}"));
        assert!(is < should, "cut {cut}: {err}");
        let mut im = image::open(&p, &ImageOptions::default()).expect("writable open");
        im.device.close().expect("close");
        drop(im);
        common::assert_qemu_check_clean(&p);
    }
}

fn parse_mismatch(err: &str) -> Option<(u32, u32)> {
    let rest = err.split("allocated blocks mismatch, is ").nth(1)?;
    let (is, rest) = rest.split_once(", should be ")?;
    let should = rest.split_whitespace().next()?;
    Some((is.parse().ok()?, should.parse().ok()?))
}
