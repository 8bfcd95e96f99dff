//! VHD (`vpc`) against qemu-img: images qemu-img makes read identically through vdisk
//! (info, map, contents), for every creator rule of the size; images vdisk makes equal
//! qemu-img's byte for byte but for the timestamp, UUID and checksum, and compare equal in
//! both directions; the two tools take turns writing one image; hostile images get QEMU's
//! reasons (or, where QEMU reads on, vdisk's own clear one); differencing images, which
//! qemu-img reads as if they had no parent, read through the parent their locators name;
//! power cuts at every write of allocating writes lose no flushed data.

mod common;

use common::crash::{cut_rounds, Rounds};
use common::{
    answer, assert_bytes_eq, qemu_img, qemu_img_ok, qemu_io_ok, rng, tempdir, vdisk, vdisk_ok,
    write_mixed_raw,
};
use std::path::Path;
use std::sync::Arc;
use vdisk::image::{self, ImageOptions};
use vdisk::storage::Storage;
use vdisk::vhd::footer::checksum;
use vdisk::vhd::Vhd;
use vdisk::BlockDevice;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `vdisk create -q -f vpc` with the words of `opts`, then `img` and the `size` words.
fn vdisk_create(opts: &str, img: &Path, size: &str) {
    let mut a: Vec<&str> = "create -q -f vpc".split(' ').collect();
    a.extend(opts.split_whitespace());
    a.push(s(img));
    a.extend(size.split_whitespace());
    vdisk_ok(&a);
}

/// The last reason of an error line (after the last ": ").
fn reason(e: &str) -> String {
    e.trim().rsplit(": ").next().unwrap_or("").to_string()
}

/// The guest contents of a VHD as qemu-img reads it (`-f vpc`: fixed disks probe as raw).
fn qemu_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("qemu-view.raw");
    qemu_img_ok(&["convert", "-f", "vpc", "-O", "raw", s(img), s(&out)]);
    std::fs::read(&out).expect("read converted image")
}

/// The guest contents of a VHD as vdisk reads it, with its parent.
fn vdisk_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("vdisk-view.raw");
    vdisk_ok(&["convert", "-f", "vpc", "-O", "raw", s(img), s(&out)]);
    std::fs::read(&out).expect("read converted image")
}

/// Set the footer at `at` (its checksum fixed) and, for dynamic disks, its copy at the end.
fn set_footer(b: &mut [u8], at: usize, field: usize, bytes: &[u8]) {
    b[at + field..at + field + bytes.len()].copy_from_slice(bytes);
    b[at + 0x40..at + 0x44].fill(0);
    let sum = checksum(&b[at..at + 512]);
    b[at + 0x40..at + 0x44].copy_from_slice(&sum.to_be_bytes());
}

/// Writes through qemu-io that cover partial blocks, block-spanning runs and whole blocks.
const QEMU_WRITES: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 2044k 8k",
    "write -P 0x33 3M 1M",
    "write -P 0x44 4609k 3k",
];

#[test]
fn qemu_made_images_read_identically_with_the_same_info_and_map() {
    let dir = tempdir();
    for opts in [
        "subformat=dynamic",
        "subformat=dynamic,force_size=on",
        "subformat=fixed",
        "subformat=fixed,force_size=on",
    ] {
        for size in ["5M", "1000001", "64M"] {
            let img = dir.path().join("q.vhd");
            qemu_img_ok(&["create", "-q", "-f", "vpc", "-o", opts, s(&img), size]);
            for w in QEMU_WRITES {
                // Writes past the end of the smaller images fail; the rest still apply.
                let _ = common::qemu_io(["-f", "vpc", "-c", w, s(&img)]);
            }
            for args in [
                vec!["info", "-f", "vpc"],
                vec!["info", "-f", "vpc", "--output=json"],
                vec!["map", "-f", "vpc", "--output=json"],
            ] {
                let mut a = args.clone();
                a.push(s(&img));
                assert_eq!(
                    answer(vdisk(&a)),
                    answer(qemu_img(&a)),
                    "{opts} {size} {a:?}"
                );
            }
            let (mine, theirs) = (vdisk_raw(&img, dir.path()), qemu_raw(&img, dir.path()));
            assert_bytes_eq(&format!("{opts} {size}"), &mine, &theirs);
        }
    }
}

#[test]
fn the_creator_application_decides_the_size_as_in_qemu() {
    let dir = tempdir();
    let base = dir.path().join("base.vhd");
    qemu_img_ok(&["create", "-q", "-f", "vpc", s(&base), "8M"]);
    qemu_io_ok(&["-f", "vpc", "-c", "write -P 0x5a 8190k 2k", s(&base)]);
    // Hyper-V, Disk2VHD, Azure, XenServer and qemu's force_size images are sized by the
    // current-size field; Virtual PC and qemu's default ones by the geometry.
    for app in [
        b"win ", b"d2v ", b"wa\0\0", b"tap\0", b"qem2", b"vpc ", b"qemu",
    ] {
        let img = dir.path().join("app.vhd");
        let mut b = std::fs::read(&base).unwrap();
        let end = b.len() - 512;
        for at in [0, end] {
            set_footer(&mut b, at, 0x1c, app);
            set_footer(&mut b, at, 0x30, &(8 * MIB + 700).to_be_bytes());
        }
        std::fs::write(&img, &b).unwrap();
        for args in [
            vec!["info", "-f", "vpc"],
            vec!["map", "-f", "vpc", "--output=json"],
        ] {
            let mut a = args.clone();
            a.push(s(&img));
            assert_eq!(answer(vdisk(&a)), answer(qemu_img(&a)), "{app:?} {a:?}");
        }
        let (mine, theirs) = (vdisk_raw(&img, dir.path()), qemu_raw(&img, dir.path()));
        assert_bytes_eq(&format!("{app:?}"), &mine, &theirs);
    }
}

/// Zero the fields that differ between two new images: timestamp, checksum and UUID.
fn without_identity(mut b: Vec<u8>, footers: &[usize]) -> Vec<u8> {
    for &at in footers {
        b[at + 0x18..at + 0x1c].fill(0);
        b[at + 0x40..at + 0x54].fill(0);
    }
    b
}

#[test]
fn vdisk_creates_qemus_bytes_but_for_timestamp_uuid_and_checksum() {
    let dir = tempdir();
    for opts in [
        "subformat=dynamic",
        "subformat=dynamic,force_size=on",
        "subformat=fixed",
        "subformat=fixed,force_size=on",
    ] {
        for size in ["0", "5M", "1000001", "64M", "200G"] {
            if opts.contains("fixed") && size == "200G" {
                continue;
            }
            let (a, b) = (dir.path().join("a.vhd"), dir.path().join("b.vhd"));
            qemu_img_ok(&["create", "-q", "-f", "vpc", "-o", opts, s(&a), size]);
            vdisk_ok(&["create", "-q", "-f", "vpc", "-o", opts, s(&b), size]);
            let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            assert_eq!(x.len(), y.len(), "{opts} {size}: file length");
            let end = y.len() - 512;
            let footers: &[usize] = if opts.contains("fixed") {
                &[end]
            } else {
                &[0, end]
            };
            for &at in footers {
                let mut f = y[at..at + 512].to_vec();
                let stored = u32::from_be_bytes([f[0x40], f[0x41], f[0x42], f[0x43]]);
                f[0x40..0x44].fill(0);
                assert_eq!(stored, checksum(&f), "{opts} {size}: checksum at {at:#x}");
            }
            if footers.len() == 2 {
                assert_eq!(&y[..512], &y[end..], "{opts} {size}: the two footers");
            }
            let (x, y) = (without_identity(x, footers), without_identity(y, footers));
            assert_bytes_eq(&format!("{opts} {size}"), &x, &y);
        }
    }
}

#[test]
fn an_azure_fixed_image_has_the_exact_size_and_footer() {
    let dir = tempdir();
    let img = dir.path().join("azure.vhd");
    vdisk_create("-o subformat=fixed,force_size=on", &img, "1G");
    let b = std::fs::read(&img).unwrap();
    assert_eq!(b.len() as u64, 1024 * MIB + 512, "file size");
    let f = &b[b.len() - 512..];
    let be32 = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    assert_eq!(&f[..8], b"conectix");
    assert_eq!(be32(0x08), 2, "features");
    assert_eq!(be32(0x0c), 0x0001_0000, "version");
    assert_eq!(be64(0x10), u64::MAX, "data offset");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now - 946_684_800).abs_diff(u64::from(be32(0x18))) < 600,
        "timestamp"
    );
    assert_eq!(&f[0x1c..0x20], b"qem2", "creator application");
    assert_eq!(be32(0x20), 0x0005_0003, "creator version");
    assert_eq!(&f[0x24..0x28], b"Wi2k", "creator OS");
    assert_eq!((be64(0x28), be64(0x30)), (1024 * MIB, 1024 * MIB), "sizes");
    assert_eq!(&f[0x38..0x3c], &[0xff, 0xff, 16, 255], "geometry");
    assert_eq!(be32(0x3c), 2, "fixed");
    let mut zeroed = f.to_vec();
    zeroed[0x40..0x44].fill(0);
    assert_eq!(be32(0x40), checksum(&zeroed), "checksum");
    assert_ne!(&f[0x44..0x54], &[0u8; 16], "UUID");
    assert!(
        f[0x54..].iter().all(|&x| x == 0),
        "saved state and reserved bytes"
    );
    assert!(b[..1024 * MIB as usize].iter().all(|&x| x == 0), "data");
    let info = vdisk_ok(&["info", "-f", "vpc", s(&img)]);
    assert!(
        info.contains("virtual size: 1 GiB (1073741824 bytes)"),
        "{info}"
    );
}

#[test]
fn vdisk_made_images_compare_equal_in_both_directions() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    // Not a whole number of blocks, nor of CHS cylinders.
    write_mixed_raw(&src, 9 * MIB + 4096, 300 << 10, 7);
    for opts in [
        "subformat=dynamic",
        "subformat=dynamic,force_size=on",
        "subformat=fixed,force_size=on",
        "subformat=fixed",
    ] {
        let out = dir.path().join("out.vhd");
        vdisk_ok(&["convert", "-O", "vpc", "-o", opts, s(&src), s(&out)]);
        let q = qemu_img_ok(&["compare", "-f", "raw", "-F", "vpc", s(&src), s(&out)]);
        assert!(q.contains("Images are identical."), "{opts}: {q}");
        let back = dir.path().join("back.raw");
        vdisk_ok(&["convert", "-f", "vpc", "-O", "raw", s(&out), s(&back)]);
        let q = qemu_img_ok(&["compare", "-f", "raw", "-F", "raw", s(&src), s(&back)]);
        assert!(q.contains("Images are identical."), "{opts}: {q}");
        // And what qemu-img converts to vpc, vdisk reads the same.
        let theirs = dir.path().join("theirs.vhd");
        qemu_img_ok(&["convert", "-O", "vpc", "-o", opts, s(&src), s(&theirs)]);
        let a = ["compare", "-f", "vpc", "-F", "vpc", s(&theirs), s(&out)];
        assert_eq!(answer(vdisk(a)), answer(qemu_img(a)), "{opts}");
        // Zeros inside new blocks stay holes, as in qemu-img's output.
        use std::os::unix::fs::MetadataExt;
        let used = |p: &Path| std::fs::metadata(p).unwrap().blocks();
        let (mine, qemu) = (used(&out), used(&theirs));
        assert!(
            opts.contains("fixed") || mine <= qemu,
            "{opts}: host blocks {mine} vs {qemu}"
        );
    }
}

#[test]
fn vdisk_and_qemu_take_turns_writing_one_image() {
    let dir = tempdir();
    let img = dir.path().join("turns.vhd");
    let model = dir.path().join("model.raw");
    vdisk_create("-o force_size=on", &img, "9M");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&model), "9M"]);
    let mut r = rng(11);
    for round in 0..6 {
        let off = r.below(9 * MIB - 300_000);
        let len = 1 + r.below(300_000);
        let pat = 0x30 + round;
        if round % 2 == 0 {
            let w = format!("write -P {pat} {off} {len}");
            qemu_io_ok(&["-f", "vpc", "-c", &w, s(&img)]);
        } else {
            let mut im = image::open(&img, &ImageOptions::default()).expect("open vhd");
            im.device
                .write_at(&vec![pat as u8; len as usize], off)
                .expect("write");
            im.device.close().expect("close");
        }
        let w = format!("write -P {pat} {off} {len}");
        qemu_io_ok(&["-f", "raw", "-c", &w, s(&model)]);
        let q = qemu_img_ok(&["compare", "-f", "raw", "-F", "vpc", s(&model), s(&img)]);
        assert!(q.contains("Images are identical."), "round {round}: {q}");
    }
}

#[test]
fn probe_check_measure_and_resize_answer_as_qemu() {
    let dir = tempdir();
    let (dynamic, fixed) = (dir.path().join("d.vhd"), dir.path().join("f.vhd"));
    qemu_img_ok(&["create", "-q", "-f", "vpc", s(&dynamic), "4M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        s(&fixed),
        "4M",
    ]);
    // qemu probes only the first bytes: a fixed disk, whose footer is at the end, is raw.
    for img in [&dynamic, &fixed] {
        let a = ["info", "--output=json", s(img)];
        assert_eq!(answer(vdisk(a)), answer(qemu_img(a)), "{img:?}");
    }
    for a in [
        vec!["check", "-f", "vpc", s(&dynamic)],
        vec!["resize", "-f", "vpc", s(&dynamic), "8M"],
        vec!["measure", "-O", "vpc", "--size", "4M"],
    ] {
        let (mine, theirs) = (answer(vdisk(&a)), answer(qemu_img(&a)));
        assert_eq!(mine.2, theirs.2, "{a:?}: {mine:?} {theirs:?}");
    }
    let (_, err, code) = answer(vdisk(["check", "-f", "vpc", s(&dynamic)]));
    assert_eq!(
        (code, err.trim()),
        (63, "This image format does not support checks")
    );
}

/// A copy of `base` with `poke` applied, written to `dir/name`.
fn poked(base: &[u8], dir: &Path, name: &str, poke: impl Fn(&mut Vec<u8>)) -> std::path::PathBuf {
    let mut b = base.to_vec();
    poke(&mut b);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn set_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn hostile_images_get_qemus_reason_or_one_clear_error_and_never_a_panic() {
    let dir = tempdir();
    let src = dir.path().join("base.vhd");
    qemu_img_ok(&["create", "-q", "-f", "vpc", s(&src), "8M"]);
    qemu_io_ok(&[
        "-f",
        "vpc",
        "-c",
        "write -P 1 0 4k",
        "-c",
        "write -P 2 4M 4k",
        s(&src),
    ]);
    let base = std::fs::read(&src).unwrap();
    let end = base.len() - 512;
    type Poke = Box<dyn Fn(&mut Vec<u8>)>;
    // (what, poke): QEMU refuses each of these; vdisk gives the same reason.
    let qemu_refuses: Vec<(&str, Poke)> = vec![
        ("bad checksum", Box::new(|b| b[0x40] ^= 1)),
        ("no cookie", Box::new(|b| b[0] = b'x')),
        ("no header magic", Box::new(|b| b[0x200] = b'x')),
        ("block size 256", Box::new(|b| set_be32(b, 0x220, 256))),
        ("block size 3M", Box::new(|b| set_be32(b, 0x220, 3 << 20))),
        ("no entries", Box::new(|b| set_be32(b, 0x21c, 0))),
        (
            "too many entries",
            Box::new(|b| set_be32(b, 0x21c, 0x7fff_ffff)),
        ),
        (
            "block past the end",
            Box::new(|b| set_be32(b, 0x600, 0x0010_0000)),
        ),
        (
            "too large",
            Box::new(move |b| {
                set_footer(b, 0, 0x1c, b"win ");
                set_footer(b, 0, 0x30, &(0xff00_0001u64 * 512).to_be_bytes());
            }),
        ),
        (
            "fixed footer whose end is not fixed",
            Box::new(move |b| {
                b[0] = b'x';
                set_footer(b, end, 0x3c, &3u32.to_be_bytes());
            }),
        ),
    ];
    for (what, poke) in &qemu_refuses {
        let img = poked(&base, dir.path(), "hostile.vhd", poke);
        let a = ["info", "-f", "vpc", s(&img)];
        let (mine, theirs) = (answer(vdisk(a)), answer(qemu_img(a)));
        assert_eq!((mine.2, theirs.2), (1, 1), "{what}: {mine:?} {theirs:?}");
        assert_eq!(reason(&mine.1), reason(&theirs.1), "{what}");
    }
    // QEMU opens these and would corrupt them on a write; vdisk refuses them clearly.
    let vdisk_refuses: Vec<(&str, Poke, &str)> = vec![
        (
            "block into the BAT",
            Box::new(|b| set_be32(b, 0x600, 3)),
            "overlaps the BAT",
        ),
        (
            "block into the header",
            Box::new(|b| set_be32(b, 0x600, 1)),
            "overlaps the dynamic header",
        ),
        (
            "two blocks in one place",
            Box::new(|b| {
                let first = b[0x600..0x604].to_vec();
                b[0x608..0x60c].copy_from_slice(&first);
            }),
            "overlaps block",
        ),
        (
            "a fixed footer at the start of a dynamic disk",
            Box::new(|b| set_footer(b, 0, 0x3c, &2u32.to_be_bytes())),
            "invalid VPC image",
        ),
        (
            "a BAT of 2^21 entries in a 4 MiB file",
            Box::new(move |b| {
                set_footer(b, 0, 0x1c, b"win ");
                set_footer(b, 0, 0x30, &(1u64 << 40).to_be_bytes());
                set_be32(b, 0x21c, 1 << 21);
                set_be32(b, 0x220, 512 << 10);
            }),
            "do not fit in the file",
        ),
    ];
    for (what, poke, want) in &vdisk_refuses {
        let img = poked(&base, dir.path(), "hostile.vhd", poke);
        let (_, err, code) = answer(vdisk(["info", "-f", "vpc", s(&img)]));
        assert_eq!(code, 1, "{what}: {err}");
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{what}: {err}"
        );
    }
    // A fixed disk whose footer claims more than the file holds.
    let fixed = dir.path().join("fixed.vhd");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        s(&fixed),
        "1M",
    ]);
    let b = std::fs::read(&fixed).unwrap();
    let img = poked(&b, dir.path(), "short.vhd", |b| {
        let end = b.len() - 512;
        set_footer(b, end, 0x1c, b"win ");
        set_footer(b, end, 0x30, &(4 * MIB).to_be_bytes());
    });
    let (_, err, code) = answer(vdisk(["info", "-f", "vpc", s(&img)]));
    assert!(code == 1 && err.contains("larger than the"), "{err}");
}

/// Make `parent` (8 MiB of 0xa1 but for a hole at 5 MiB), its differencing child through
/// vdisk, and the raw model of the parent.
fn parent_and_child(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let parent = dir.join("parent.vhd");
    let child = dir.join("child.vhd");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "force_size=on",
        s(&parent),
        "8M",
    ]);
    qemu_io_ok(&[
        "-f",
        "vpc",
        "-c",
        "write -P 0xa1 0 4M",
        "-c",
        "write -P 0xa1 6M 2M",
        s(&parent),
    ]);
    vdisk_create("-b parent.vhd -F vpc", &child, "");
    let mut model = vec![0xa1u8; 8 * MIB as usize];
    model[4 * MIB as usize..6 * MIB as usize].fill(0);
    (parent, child, model)
}

#[test]
fn a_differencing_image_records_its_parent_and_reads_through_it() {
    let dir = tempdir();
    let (parent, child, mut model) = parent_and_child(dir.path());
    let (p, c) = (
        std::fs::read(&parent).unwrap(),
        std::fs::read(&child).unwrap(),
    );
    assert_eq!(&c[0x3c..0x40], &[0, 0, 0, 4], "disk type");
    assert_eq!(&c[0x228..0x238], &p[0x44..0x54], "parent UUID");
    let utf16be: Vec<u8> = "parent.vhd"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    assert_eq!(
        &c[0x240..0x240 + utf16be.len()],
        &utf16be[..],
        "parent name"
    );
    let locator = |slot: usize| {
        let e = 0x200 + 0x240 + slot * 24;
        let len = u32::from_be_bytes(c[e + 8..e + 12].try_into().unwrap()) as usize;
        let at = u64::from_be_bytes(c[e + 16..e + 24].try_into().unwrap()) as usize;
        let units: Vec<u16> = c[at..at + len]
            .chunks(2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]))
            .collect();
        (c[e..e + 4].to_vec(), String::from_utf16(&units).unwrap())
    };
    assert_eq!(locator(0), (b"W2ru".to_vec(), ".\\parent.vhd".to_string()));
    let abs = std::fs::canonicalize(&parent).unwrap();
    assert_eq!(locator(1), (b"W2ku".to_vec(), abs.display().to_string()));
    let mtime = std::fs::metadata(&parent).unwrap().modified().unwrap();
    let secs = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 946_684_800;
    assert_eq!(
        &c[0x238..0x23c],
        &(secs as u32).to_be_bytes(),
        "parent timestamp"
    );
    let info = vdisk_ok(&["info", "--output=json", s(&child)]);
    assert!(
        info.contains("\"backing-filename\": \"parent.vhd\""),
        "{info}"
    );
    // Writes of partial sectors, across blocks, and zeros, through vdisk.
    let writes: &[(u64, usize, u8)] = &[
        (MIB - 1000, 5000, 0xc2),
        (2 * MIB - 7, 9, 0xc3),
        (5 * MIB + 100, 300, 0xc4),
    ];
    let mut im = image::open(&child, &ImageOptions::default()).expect("open child");
    let mut written = vec![false; model.len() / 512];
    for &(off, len, b) in writes {
        im.device.write_at(&vec![b; len], off).expect("write");
        model[off as usize..off as usize + len].fill(b);
        written[off as usize / 512..=(off as usize + len - 1) / 512].fill(true);
    }
    im.device.write_zeroes(7 * MIB, 4096).expect("zero");
    model[7 * MIB as usize..7 * MIB as usize + 4096].fill(0);
    written[7 * 2048..7 * 2048 + 8].fill(true);
    im.device.close().expect("close");
    drop(im);
    assert_bytes_eq("vdisk view", &vdisk_raw(&child, dir.path()), &model);
    // qemu-img reads the child alone: its own sectors, zeros elsewhere.
    let own: Vec<u8> = (0..model.len())
        .map(|i| if written[i / 512] { model[i] } else { 0 })
        .collect();
    assert_bytes_eq("qemu view", &qemu_raw(&child, dir.path()), &own);
    assert_eq!(
        qemu_raw(&parent, dir.path())[..4 * MIB as usize],
        vec![0xa1; 4 * MIB as usize][..]
    );
    // Moved with its parent, the child finds it by the relative locator; copied alone to
    // another directory, by the absolute one.
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for f in ["parent.vhd", "child.vhd"] {
        std::fs::copy(dir.path().join(f), moved.join(f)).unwrap();
    }
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(&child, elsewhere.join("child.vhd")).unwrap();
    std::fs::remove_file(&parent).unwrap();
    assert_bytes_eq(
        "moved",
        &vdisk_raw(&moved.join("child.vhd"), dir.path()),
        &model,
    );
    std::fs::copy(moved.join("parent.vhd"), &parent).unwrap();
    assert_bytes_eq(
        "elsewhere",
        &vdisk_raw(&elsewhere.join("child.vhd"), dir.path()),
        &model,
    );
    // Without its parent, or with another image in its place, one clear error.
    std::fs::remove_file(&parent).unwrap();
    let (_, err, code) = answer(vdisk(["info", s(&child)]));
    assert!(
        code == 1 && err.contains("could not find the parent"),
        "{err}"
    );
    qemu_img_ok(&["create", "-q", "-f", "vpc", s(&parent), "8M"]);
    let (_, err, code) = answer(vdisk(["info", s(&child)]));
    assert!(code == 1 && err.contains("its UUID is"), "{err}");
}

#[test]
fn a_parent_loop_and_a_protocol_name_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let (x, a, b) = (d.join("x.vhd"), d.join("a.vhd"), d.join("b.vhd"));
    vdisk_ok(&["create", "-q", "-f", "vpc", s(&x), "4M"]);
    vdisk_create("-b x.vhd -F vpc", &a, "");
    vdisk_create("-b a.vhd -F vpc", &b, "");
    // b, given x's UUID, takes x's place: a -> x (really b) -> a.
    let uuid = std::fs::read(&x).unwrap()[0x44..0x54].to_vec();
    let mut bb = std::fs::read(&b).unwrap();
    let end = bb.len() - 512;
    for at in [0, end] {
        set_footer(&mut bb, at, 0x44, &uuid);
    }
    std::fs::write(&x, &bb).unwrap();
    let (_, err, code) = answer(vdisk(["info", "--backing-chain", s(&a)]));
    assert!(code == 1 && err.contains("loops back"), "{err}");
    // A parent named by a protocol is never opened.
    let c = d.join("c.vhd");
    let (_, err, code) = answer(vdisk([
        "create",
        "-q",
        "-f",
        "vpc",
        "-b",
        "nbd:localhost:1",
        "-F",
        "vpc",
        s(&c),
        "4M",
    ]));
    assert!(code == 1 && err.contains("protocol"), "{err}");
}

#[test]
fn dump_shows_footer_header_locators_and_bat() {
    let dir = tempdir();
    let (_parent, child, _) = parent_and_child(dir.path());
    let mut im = image::open(&child, &ImageOptions::default()).expect("open child");
    im.device
        .write_at(&[7; 1024], 2 * MIB + 512)
        .expect("write");
    im.device.close().expect("close");
    drop(im);
    let doc = common::parse_json("dump", &vdisk_ok(&["dump", "--json", s(&child)]));
    assert_eq!(doc["footer"]["disk_type"], "Differencing");
    assert_eq!(doc["footer"]["checksum_valid"], true);
    assert_eq!(doc["end_footer"]["matches_copy"], true);
    let h = &doc["dynamic_header"];
    assert_eq!(
        (h["block_size"].as_u64(), h["max_table_entries"].as_u64()),
        (Some(2 * MIB), Some(4))
    );
    assert_eq!(h["parent_locators"][0]["platform"], "W2ru");
    assert_eq!(h["parent_locators"][0]["text"], "parent.vhd");
    assert_eq!(h["parent_locators"][1]["platform"], "W2ku");
    let bat = doc["bat"].as_array().expect("bat");
    assert_eq!(bat.len(), 1, "{bat:?}");
    assert_eq!(
        (bat[0]["block"].as_u64(), bat[0]["sectors_present"].as_u64()),
        (Some(1), Some(2))
    );
}

/// Power cuts at every write of rounds of allocating writes, each round flushed: rounds
/// flushed before the cut read back intact, the round in flight reads old or new, and
/// qemu-img still opens the image and reads it.
fn power_cuts(differencing: bool) {
    let dir = tempdir();
    let (parent, img, base) = if differencing {
        let (p, c, model) = parent_and_child(dir.path());
        (Some(std::fs::read(p).unwrap()), c, model)
    } else {
        let img = dir.path().join("empty.vhd");
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "force_size=on",
            s(&img),
            "8M",
        ]);
        (None, img, vec![0u8; 8 * MIB as usize])
    };
    let rounds: Rounds = vec![
        vec![(100, 3000, 1), (2 * MIB - 10, 20, 2)],
        vec![(0, 512, 3), (6 * MIB, MIB as usize, 4)],
        vec![(MIB + 7, 70_000, 5), (5 * MIB, 1, 6)],
    ];
    let open = |st: Arc<dyn Storage>, writing: bool| -> vdisk::Result<Vhd<Arc<dyn Storage>>> {
        let mut v = Vhd::open(st, !writing)?;
        if let Some(p) = &parent {
            let ps: Arc<dyn Storage> = Arc::new(vdisk::storage::MemStorage::from_vec(p.clone()));
            v.attach_backing(Box::new(Vhd::open(ps, true)?))?;
        }
        Ok(v)
    };
    let what = if differencing {
        "vhd differencing writes"
    } else {
        "vhd allocating writes"
    };
    let initial = std::fs::read(&img).unwrap();
    let cuts = cut_rounds(what, &initial, &base, &rounds, open, |cut, bytes, got| {
        let d = tempdir();
        let p = d.path().join("cut.vhd");
        std::fs::write(&p, bytes).unwrap();
        let theirs = qemu_raw(&p, d.path());
        if !differencing {
            assert_bytes_eq(&format!("cut {cut}: qemu's view"), &theirs, got);
        }
    });
    assert!(cuts >= 9, "{cuts} cut points");
}

#[test]
fn a_power_cut_at_any_write_of_allocating_writes_loses_no_flushed_data() {
    power_cuts(false);
}

#[test]
fn a_power_cut_at_any_write_of_a_differencing_image_loses_no_flushed_data() {
    power_cuts(true);
}
