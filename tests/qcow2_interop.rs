//! Interoperability with QEMU: `qemu-img` and `qemu-io` 10 are the oracle.
//!
//! * images vdisk creates or writes pass `qemu-img check` and read back identically in QEMU;
//! * images QEMU creates and fills read identically through vdisk;
//! * `vdisk info --output=json` agrees with `qemu-img info --output=json`.
//!
//! Images are small (a few MiB) so the whole matrix of cluster sizes, compat levels and
//! refcount widths runs in seconds in release mode. Matrix tests run every combination and
//! report all failing ones together (see `common::run_cases`).

mod common;

use common::*;
use rand::Rng;
use std::path::Path;
use vdisk::qcow2::{self, Qcow2};
use vdisk::storage::{self, FileStorage};
use vdisk::BlockDevice;

/// Virtual size of most test images: not a multiple of any cluster size above 512 bytes, so
/// the partial last cluster is exercised.
const SIZE: u64 = (4 << 20) + 1536;

/// What QEMU writes into its test images (`qemu-io` commands), for an image of [`SIZE`]:
/// data with several patterns (one unaligned), zeroes over data and over nothing, discards
/// over data, and a write that runs to the last byte of the disk.
const QEMU_IO_SCRIPT: &[&str] = &[
    "write -P 0xab 0 100k",
    "write -P 0xcd 1049576 3000",
    "write -P 0xef 2M 1M",
    "write -z 64k 128k",
    "write -z 2304k 256k",
    "discard 2560k 128k",
    "write -P 0x11 3M 1050112",
    "discard 3584k 64k",
    "write -z -u 1536k 64k",
    "write -P 0x22 1600k 7k",
];

fn qcow2_opts(cluster_size: u64, compat: &str, refcount_bits: u32) -> String {
    format!("cluster_size={cluster_size},compat={compat},refcount_bits={refcount_bits}")
}

/// Create a qcow2 image with qemu-img and run [`QEMU_IO_SCRIPT`] on it.
fn qemu_made_image(path: &Path, opts: &str) {
    let p = path.to_str().expect("utf-8 path");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        p,
        &SIZE.to_string(),
    ]);
    let mut args = vec!["-f", "qcow2"];
    for c in QEMU_IO_SCRIPT {
        args.push("-c");
        args.push(c);
    }
    args.push(p);
    qemu_io_ok(&args);
}

fn open_rw(path: &Path) -> Qcow2<FileStorage> {
    let s = FileStorage::open(
        path,
        storage::OpenOptions {
            write: true,
            unsafe_cache: false,
        },
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Qcow2::open(s, qcow2::OpenOptions::default())
        .unwrap_or_else(|e| panic!("Qcow2::open {}: {e}", path.display()))
}

fn open_ro(path: &Path) -> Qcow2<FileStorage> {
    let s = FileStorage::open(path, storage::OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Qcow2::open(
        s,
        qcow2::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("Qcow2::open {}: {e}", path.display()))
}

/// Read the whole disk through the library in odd-sized pieces (crossing cluster and L2
/// boundaries at every possible phase).
fn library_contents(img: &mut Qcow2<FileStorage>) -> Vec<u8> {
    let size = img.virtual_size();
    let mut out = vec![0u8; size as usize];
    let mut pos = 0usize;
    let mut piece = 3000usize;
    while pos < out.len() {
        let end = (pos + piece).min(out.len());
        img.read_at(&mut out[pos..end], pos as u64)
            .unwrap_or_else(|e| panic!("read_at({pos}, {}): {e}", end - pos));
        pos = end;
        piece = piece * 7 % 200_003 + 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Images vdisk makes, checked by QEMU.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Layout {
    cluster_size: u64,
    compat: &'static str,
    refcount_bits: u32,
}

fn every_layout() -> Vec<Layout> {
    let mut v = Vec::new();
    for cluster_size in CLUSTER_SIZES {
        for compat in ["0.10", "1.1"] {
            for &refcount_bits in refcount_widths(compat) {
                v.push(Layout {
                    cluster_size,
                    compat,
                    refcount_bits,
                });
            }
        }
    }
    v
}

#[test]
fn images_vdisk_creates_pass_qemu_check_and_take_qemu_writes_for_every_layout() {
    let dir = tempdir();
    run_cases("vdisk create + qemu-img check", &every_layout(), |l| {
        let path = dir.path().join(format!(
            "c{}-{}-r{}.qcow2",
            l.cluster_size, l.compat, l.refcount_bits
        ));
        let p = path.to_str().unwrap();
        let opts = qcow2_opts(l.cluster_size, l.compat, l.refcount_bits);
        vdisk_ok(&["create", "-q", "-f", "qcow2", "-o", &opts, p, "5M"]);
        assert_qemu_check_clean(&path);
        let info = parse_json("qemu-img info", &qemu_img_ok(&["info", "--output=json", p]));
        assert_eq!(info["virtual-size"], 5 << 20);
        assert_eq!(info["cluster-size"], l.cluster_size);
        assert_eq!(info["format-specific"]["data"]["compat"], l.compat);
        assert_eq!(
            info["format-specific"]["data"]["refcount-bits"],
            l.refcount_bits
        );
        // QEMU can fill the image, and vdisk then reads what QEMU reads.
        let mut args = vec!["-f", "qcow2"];
        for c in QEMU_IO_SCRIPT {
            args.extend(["-c", c]);
        }
        args.push(p);
        qemu_io_ok(&args);
        assert_qemu_check_clean(&path);
        assert_bytes_eq(
            "vdisk vs qemu-img reading a vdisk-made image QEMU wrote",
            &vdisk_raw_contents(&path, dir.path()),
            &qemu_raw_contents(&path, dir.path()),
        );
    });
}

#[test]
fn images_vdisk_creates_with_preallocation_pass_qemu_check() {
    let dir = tempdir();
    let mut cases = Vec::new();
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for compat in ["0.10", "1.1"] {
            for prealloc in ["metadata", "falloc", "full"] {
                cases.push((cs, compat, prealloc));
            }
        }
    }
    run_cases(
        "vdisk create -o preallocation",
        &cases,
        |&(cs, compat, prealloc)| {
            let path = dir.path().join(format!("p{cs}-{compat}-{prealloc}.qcow2"));
            let p = path.to_str().unwrap();
            let opts = format!("cluster_size={cs},compat={compat},preallocation={prealloc}");
            vdisk_ok(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                p,
                &SIZE.to_string(),
            ]);
            assert_qemu_check_clean(&path);
            // Every guest cluster is allocated, and reads as zeros.
            let map = parse_json("qemu-img map", &qemu_img_ok(&["map", "--output=json", p]));
            for m in map.as_array().expect("map is an array") {
                assert_eq!(
                    m["data"], true,
                    "unallocated range in a preallocated image: {m}"
                );
            }
            let zeros = vec![0u8; SIZE as usize];
            assert_bytes_eq(
                "preallocated contents",
                &qemu_raw_contents(&path, dir.path()),
                &zeros,
            );
        },
    );
}

/// One change to a disk, applied both to a qcow2 image and to a raw reference in memory.
#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Discard(u64, u64),
}

/// A deterministic list of operations on a disk of `size` bytes with `cs`-byte clusters:
/// unaligned writes, writes crossing L2 boundaries, zeroing and cluster-aligned discards.
fn random_ops(seed: u64, size: u64, cs: u64, count: usize) -> Vec<Op> {
    let mut r = rng(seed);
    let whole = size / cs * cs; // discards stay clear of a partial last cluster
    let mut ops = Vec::new();
    for i in 0..count {
        let max_len = (3 * cs).clamp(4096, 256 << 10);
        let len = r.gen_range(1..=max_len).min(size - 1);
        let off = r.gen_range(0..size - len);
        let op = match r.gen_range(0..10) {
            0..=5 => Op::Write(off, pattern(i as u32 + 1, off, len as usize)),
            6 | 7 => Op::Zero(off, len),
            _ => {
                let n = r.gen_range(1..=4u64).min(whole / cs);
                let start = r.gen_range(0..=whole / cs - n) * cs;
                Op::Discard(start, n * cs)
            }
        };
        ops.push(op);
    }
    // One long write across several L2 tables' worth of small clusters, then one whose
    // contents qemu-io can verify with a pattern.
    let long = (2 * cs + 777).min(size - 5000 - cs / 2);
    ops.push(Op::Write(cs / 2, random_bytes(seed, long as usize)));
    ops.push(Op::Write(size - 5000, vec![0x5a; 5000]));
    ops
}

/// Apply `ops` to the image and to `reference` (the expected guest contents).
fn apply(img: &mut dyn BlockDevice, reference: &mut [u8], ops: &[Op], cs: u64) {
    for op in ops {
        match op {
            Op::Write(off, data) => {
                img.write_at(data, *off)
                    .unwrap_or_else(|e| panic!("write_at({off}, {}): {e}", data.len()));
                reference[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
            Op::Zero(off, len) => {
                img.write_zeroes(*off, *len)
                    .unwrap_or_else(|e| panic!("write_zeroes({off}, {len}): {e}"));
                reference[*off as usize..(*off + *len) as usize].fill(0);
            }
            Op::Discard(off, len) => {
                img.discard(*off, *len)
                    .unwrap_or_else(|e| panic!("discard({off}, {len}): {e}"));
                // Whole clusters are released and read as zeros (no backing file).
                let start = off.div_ceil(cs) * cs;
                let end = (off + len) / cs * cs;
                if end > start {
                    reference[start as usize..end as usize].fill(0);
                }
            }
        }
    }
}

/// After vdisk wrote `path`: QEMU finds it clean and reads `reference` from it, and so does
/// vdisk after reopening.
fn verify_written_image(path: &Path, reference: &[u8], dir: &Path) {
    assert_qemu_check_clean(path);
    let ref_path = dir.join(format!(
        "{}.ref.raw",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&ref_path, reference).unwrap();
    assert_qemu_compare_identical(&ref_path, path);
    let p = path.to_str().unwrap();
    let last = format!("read -P 0x5a {} 5000", reference.len() - 5000);
    qemu_io_ok(&["-f", "qcow2", "-r", "-c", &last, p]);
    let mut img = open_ro(path);
    assert_bytes_eq(
        "vdisk re-read after writing",
        &library_contents(&mut img),
        reference,
    );
    let _ = std::fs::remove_file(&ref_path);
}

#[test]
fn vdisk_writes_into_images_it_created_stay_clean_for_every_layout() {
    let dir = tempdir();
    run_cases("vdisk create + library writes", &every_layout(), |l| {
        let path = dir.path().join(format!(
            "w{}-{}-r{}.qcow2",
            l.cluster_size, l.compat, l.refcount_bits
        ));
        let opts = qcow2_opts(l.cluster_size, l.compat, l.refcount_bits);
        let p = path.to_str().unwrap();
        vdisk_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            p,
            &SIZE.to_string(),
        ]);
        let mut reference = vec![0u8; SIZE as usize];
        {
            let mut img = open_rw(&path);
            let ops = random_ops(
                l.cluster_size ^ u64::from(l.refcount_bits),
                SIZE,
                l.cluster_size,
                40,
            );
            apply(&mut img, &mut reference, &ops, l.cluster_size);
            img.flush().expect("flush");
        }
        verify_written_image(&path, &reference, dir.path());
    });
}

// ---------------------------------------------------------------------------------------
// Images QEMU makes, read and written by vdisk.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct QemuImage {
    layout: Layout,
    preallocation: &'static str,
}

impl QemuImage {
    fn opts(&self) -> String {
        let l = self.layout;
        format!(
            "{},preallocation={}",
            qcow2_opts(l.cluster_size, l.compat, l.refcount_bits),
            self.preallocation
        )
    }

    fn file_name(&self, prefix: &str) -> String {
        let l = self.layout;
        format!(
            "{prefix}-c{}-{}-r{}-{}.qcow2",
            l.cluster_size, l.compat, l.refcount_bits, self.preallocation
        )
    }
}

/// Every layout without preallocation, plus every preallocation mode for a spread of
/// cluster sizes and both compat levels.
fn qemu_images(refcount_widths_v3: &[u32]) -> Vec<QemuImage> {
    let mut v = Vec::new();
    for layout in every_layout() {
        if layout.compat == "1.1" && !refcount_widths_v3.contains(&layout.refcount_bits) {
            continue;
        }
        v.push(QemuImage {
            layout,
            preallocation: "off",
        });
    }
    for cluster_size in [512u64, 4096, 65536, 2 << 20] {
        for compat in ["0.10", "1.1"] {
            for preallocation in ["metadata", "falloc", "full"] {
                v.push(QemuImage {
                    layout: Layout {
                        cluster_size,
                        compat,
                        refcount_bits: 16,
                    },
                    preallocation,
                });
            }
        }
    }
    v
}

#[test]
fn images_qemu_creates_read_identically_through_vdisk() {
    let dir = tempdir();
    let cases = qemu_images(&[1, 2, 4, 8, 16, 32, 64]);
    run_cases("qemu-made image read by vdisk", &cases, |q| {
        let path = dir.path().join(q.file_name("r"));
        qemu_made_image(&path, &q.opts());
        let expected = qemu_raw_contents(&path, dir.path());
        assert_eq!(expected.len() as u64, SIZE);
        assert_bytes_eq(
            "vdisk convert -O raw vs qemu-img convert -O raw",
            &vdisk_raw_contents(&path, dir.path()),
            &expected,
        );
        let mut img = open_ro(&path);
        assert_bytes_eq(
            "library read_at vs qemu-img convert -O raw",
            &library_contents(&mut img),
            &expected,
        );
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn compressed_images_qemu_creates_read_identically_through_vdisk() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    // Compressible text-like data with holes, so some clusters compress and some do not.
    let mut data = write_mixed_raw(&src, SIZE, 96 << 10, 7);
    for (i, b) in data.iter_mut().enumerate().skip(1 << 20).take(1 << 20) {
        *b = b"compressible text "[i % 18];
    }
    std::fs::write(&src, &data).unwrap();
    let cases: Vec<(u64, &str)> = [512u64, 4096, 65536, 2 << 20]
        .into_iter()
        .flat_map(|cs| [(cs, "0.10"), (cs, "1.1")])
        .collect();
    run_cases(
        "qemu-img convert -c, read by vdisk",
        &cases,
        |&(cs, compat)| {
            let path = dir.path().join(format!("z{cs}-{compat}.qcow2"));
            let p = path.to_str().unwrap();
            let opts = format!("cluster_size={cs},compat={compat}");
            qemu_img_ok(&[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &opts,
                src.to_str().unwrap(),
                p,
            ]);
            assert_bytes_eq(
                "vdisk convert -O raw of a compressed image",
                &vdisk_raw_contents(&path, dir.path()),
                &data,
            );
            let mut img = open_ro(&path);
            assert_bytes_eq(
                "library read of a compressed image",
                &library_contents(&mut img),
                &data,
            );
        },
    );
}

#[test]
fn vdisk_writes_into_images_qemu_created_stay_clean_and_read_back_in_qemu() {
    let dir = tempdir();
    let cases = qemu_images(&[1, 16, 64]);
    run_cases("library writes into qemu-made images", &cases, |q| {
        let path = dir.path().join(q.file_name("w"));
        qemu_made_image(&path, &q.opts());
        let mut reference = qemu_raw_contents(&path, dir.path());
        let cs = q.layout.cluster_size;
        {
            let mut img = open_rw(&path);
            let ops = random_ops(
                cs.rotate_left(7) ^ u64::from(q.layout.refcount_bits),
                SIZE,
                cs,
                40,
            );
            apply(&mut img, &mut reference, &ops, cs);
            img.flush().expect("flush");
        }
        verify_written_image(&path, &reference, dir.path());
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn compressed_clusters_qemu_wrote_can_be_overwritten_by_vdisk() {
    let dir = tempdir();
    let src = dir.path().join("text.raw");
    let data: Vec<u8> = (0..SIZE as usize)
        .map(|i| b"the quick brown fox "[i % 20])
        .collect();
    std::fs::write(&src, &data).unwrap();
    let cases = [512u64, 65536, 2 << 20];
    run_cases("overwrite compressed clusters", &cases, |&cs| {
        let path = dir.path().join(format!("oc{cs}.qcow2"));
        let p = path.to_str().unwrap();
        let opts = format!("cluster_size={cs}");
        qemu_img_ok(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &opts,
            src.to_str().unwrap(),
            p,
        ]);
        let mut reference = data.clone();
        {
            let mut img = open_rw(&path);
            let ops = random_ops(cs, SIZE, cs, 30);
            apply(&mut img, &mut reference, &ops, cs);
            img.flush().expect("flush");
        }
        verify_written_image(&path, &reference, dir.path());
    });
}

// ---------------------------------------------------------------------------------------
// vdisk convert, checked by QEMU.
// ---------------------------------------------------------------------------------------

#[test]
fn vdisk_convert_raw_to_qcow2_is_clean_identical_and_sparse() {
    let dir = tempdir();
    let src = dir.path().join("mixed.raw");
    write_mixed_raw(&src, 6 << 20, 256 << 10, 42);
    let s = src.to_str().unwrap();
    let mut cases: Vec<String> = vec![String::new()];
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for compat in ["0.10", "1.1"] {
            cases.push(format!("cluster_size={cs},compat={compat}"));
        }
    }
    cases.push("refcount_bits=1".into());
    cases.push("refcount_bits=64,cluster_size=1k".into());
    cases.push("preallocation=metadata".into());
    run_cases("vdisk convert raw -> qcow2", &cases, |opts| {
        let name = if opts.is_empty() { "default" } else { opts };
        let out = dir
            .path()
            .join(format!("{}.qcow2", name.replace([',', '='], "_")));
        let o = out.to_str().unwrap();
        if opts.is_empty() {
            vdisk_ok(&["convert", "-f", "raw", "-O", "qcow2", s, o]);
        } else {
            vdisk_ok(&["convert", "-f", "raw", "-O", "qcow2", "-o", opts, s, o]);
        }
        assert_qemu_check_clean(&out);
        assert_qemu_compare_identical(&src, &out);
        if !opts.contains("preallocation") {
            // Not much bigger than what qemu-img writes for the same input.
            let theirs = dir
                .path()
                .join(format!("{}.qemu.qcow2", name.replace([',', '='], "_")));
            let t = theirs.to_str().unwrap();
            if opts.is_empty() {
                qemu_img_ok(&["convert", "-f", "raw", "-O", "qcow2", s, t]);
            } else {
                qemu_img_ok(&["convert", "-f", "raw", "-O", "qcow2", "-o", opts, s, t]);
            }
            let ours = std::fs::metadata(&out).unwrap().len();
            let qemu = std::fs::metadata(&theirs).unwrap().len();
            let info = parse_json("qemu-img info", &qemu_img_ok(&["info", "--output=json", o]));
            let cs = info["cluster-size"].as_u64().unwrap();
            assert!(
                ours <= qemu + 8 * cs,
                "vdisk's qcow2 is {ours} bytes, qemu-img's {qemu} bytes"
            );
        }
    });
}

#[test]
fn vdisk_convert_qcow2_to_qcow2_and_to_raw_is_identical() {
    let dir = tempdir();
    let cases = [
        ("cluster_size=512,compat=0.10", "cluster_size=2M"),
        (
            "cluster_size=64k,refcount_bits=1",
            "cluster_size=4k,compat=0.10",
        ),
        (
            "cluster_size=2M,refcount_bits=64",
            "cluster_size=512,refcount_bits=8",
        ),
        (
            "cluster_size=64k,preallocation=metadata",
            "cluster_size=64k",
        ),
    ];
    run_cases(
        "vdisk convert qcow2 -> qcow2/raw",
        &cases,
        |&(src_opts, dst_opts)| {
            let src = dir
                .path()
                .join(format!("{}.src.qcow2", src_opts.replace([',', '='], "_")));
            qemu_made_image(&src, src_opts);
            let s = src.to_str().unwrap();
            let q2 = dir
                .path()
                .join(format!("{}.dst.qcow2", dst_opts.replace([',', '='], "_")));
            vdisk_ok(&[
                "convert",
                "-O",
                "qcow2",
                "-o",
                dst_opts,
                s,
                q2.to_str().unwrap(),
            ]);
            assert_qemu_check_clean(&q2);
            assert_qemu_compare_identical(&src, &q2);
            let raw = dir
                .path()
                .join(format!("{}.dst.raw", src_opts.replace([',', '='], "_")));
            vdisk_ok(&["convert", "-O", "raw", s, raw.to_str().unwrap()]);
            assert_qemu_compare_identical(&src, &raw);
            assert_bytes_eq(
                "vdisk qcow2->raw vs qemu-img",
                &read(&raw),
                &qemu_raw_contents(&src, dir.path()),
            );
        },
    );
}

// ---------------------------------------------------------------------------------------
// info --output=json
// ---------------------------------------------------------------------------------------

#[test]
fn vdisk_info_json_matches_qemu_img_info_json() {
    let dir = tempdir();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // (file, how it is made)
    let mut images: Vec<(String, Vec<String>)> = Vec::new();
    let mut qemu_create = |name: &str, opts: &str, size: &str| {
        let p = d(name);
        qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", opts, &p, size]);
        images.push((p, vec![]));
    };
    qemu_create("v2.qcow2", "compat=0.10", "1G");
    qemu_create("v3.qcow2", "compat=1.1", "10G");
    qemu_create("r1.qcow2", "refcount_bits=1,cluster_size=512", "3M");
    qemu_create("r64.qcow2", "refcount_bits=64,cluster_size=2M", "100G");
    qemu_create("lazy.qcow2", "lazy_refcounts=on", "64M");
    qemu_create("odd.qcow2", "cluster_size=4k", "12345k");
    let base = d("v2.qcow2");
    let overlay = d("overlay.qcow2");
    qemu_img_ok(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &overlay,
    ]);
    images.push((overlay, vec![]));
    let made = d("made-by-vdisk.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=16k,refcount_bits=8",
        &made,
        "77M",
    ]);
    images.push((made, vec![]));
    let raw = d("disk.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", &raw, "5M"]);
    images.push((raw, vec![]));
    // An image with data, so actual sizes differ from the empty case.
    let full = d("data.qcow2");
    qemu_made_image(Path::new(&full), "cluster_size=64k");
    images.push((full, vec![]));

    run_cases("info --output=json", &images, |(path, _)| {
        let ours = parse_json("vdisk info", &vdisk_ok(&["info", "--output=json", path]));
        let theirs = parse_json(
            "qemu-img info",
            &qemu_img_ok(&["info", "--output=json", path]),
        );
        for key in [
            "virtual-size",
            "format",
            "cluster-size",
            "dirty-flag",
            "format-specific",
            "filename",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
        ] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "key {key}: vdisk {} vs qemu-img {}",
                ours.get(key).map(|v| v.to_string()).unwrap_or_default(),
                theirs.get(key).map(|v| v.to_string()).unwrap_or_default()
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Extreme geometries: the largest L1 tables and the largest virtual sizes.
// ---------------------------------------------------------------------------------------

#[test]
fn vdisk_writes_at_the_far_end_of_huge_sparse_images() {
    let dir = tempdir();
    // (who creates it, cluster size, virtual size): 127 GiB with 512-byte clusters needs an
    // L1 table of 4 million entries (QEMU's limit is 32 MiB of L1); 1 PiB with 2 MiB
    // clusters; 8 TiB with 64 KiB clusters and 1-bit refcounts.
    let cases = [
        ("qemu-img", "cluster_size=512", 127u64 << 30),
        ("vdisk", "cluster_size=512", 127 << 30),
        ("vdisk", "cluster_size=2M", 1 << 50),
        ("qemu-img", "cluster_size=2M,compat=0.10", 1 << 50),
        ("vdisk", "refcount_bits=1", 8 << 40),
    ];
    run_cases("huge sparse images", &cases, |&(maker, opts, size)| {
        let path = dir
            .path()
            .join(format!("{maker}-{}.qcow2", opts.replace([',', '='], "_")));
        let p = path.to_str().unwrap();
        let args = [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            p,
            &size.to_string(),
        ];
        if maker == "vdisk" {
            vdisk_ok(&args);
        } else {
            qemu_img_ok(&args);
        }
        let mut img = open_rw(&path);
        assert_eq!(img.virtual_size(), size);
        let tail = vec![0xc3u8; 3 << 20];
        img.write_at(&tail, size - tail.len() as u64)
            .expect("write at the end");
        img.write_at(&[0x3c; 4096], size / 2 + 512)
            .expect("write in the middle");
        img.flush().expect("flush");
        drop(img);
        assert_qemu_check_clean(&path);
        let end = format!("read -P 0xc3 {} {}", size - tail.len() as u64, tail.len());
        let mid = format!("read -P 0x3c {} 4096", size / 2 + 512);
        let before = format!("read -P 0 {} 512", size / 2);
        qemu_io_ok(&[
            "-f", "qcow2", "-r", "-c", &end, "-c", &mid, "-c", &before, p,
        ]);
        let _ = std::fs::remove_file(&path);
    });
}
