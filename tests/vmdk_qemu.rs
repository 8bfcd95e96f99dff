//! VMDK interoperability with QEMU's own tools, used as an independent oracle:
//! images qemu-img makes read identically through vdisk, images vdisk makes pass
//! `qemu-img check` and `qemu-img compare`, and writes through vdisk into qemu-made images
//! keep qemu-img happy.

mod common;

use std::path::{Path, PathBuf};
use vdisk::vmdk::{self, Subformat, VmdkCreateOptions, VmdkOpenOptions};
use vdisk::{BlockDevice, ExtentKind};

const MIB: u64 = 1 << 20;
const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

fn run(program: &str, args: &[&str]) -> std::process::Output {
    common::run_program(program, args)
}

/// Run a QEMU tool and insist that it succeeds.
fn qemu(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic bytes that do not compress to nothing.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A raw disk model with a few kinds of content: random data, a constant fill, a
/// partial grain, zeros.
fn sample_disk(size: u64) -> Vec<u8> {
    let mut disk = vec![0u8; size as usize];
    let mut put = |off: u64, data: &[u8]| {
        disk[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    put(0, &pattern(300_000, 1));
    put(MIB + 4096, &vec![0x5a; 100_000]);
    put(2 * MIB + 1000, &pattern(5000, 2));
    put(size - 70_000, &pattern(70_000, 3));
    disk
}

fn write_raw(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Read the whole guest disk through vdisk.
fn read_all(dev: &mut dyn BlockDevice) -> Vec<u8> {
    let size = dev.virtual_size();
    let mut out = vec![0u8; size as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(300_001);
        dev.read_at(&mut out[off as usize..(off + n) as usize], off)
            .unwrap();
        off += n;
    }
    out
}

/// Write `data` into a vdisk device front to back, skipping all-zero 64 KiB chunks (as
/// convert does), then close it.
fn fill_and_close(dev: &mut dyn BlockDevice, data: &[u8]) {
    for (i, chunk) in data.chunks(64 * 1024).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            dev.write_at(chunk, (i * 64 * 1024) as u64).unwrap();
        }
    }
    dev.close().unwrap();
}

fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: sizes differ");
    if let Some(i) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}

fn open_ro(path: &Path) -> vmdk::Vmdk {
    vmdk::open(
        path,
        &VmdkOpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn qemu_check_is_clean(path: &Path) {
    let out = qemu("qemu-img", &["check", "-f", "vmdk", path_str(path)]);
    assert!(out.contains("No errors were found"), "{out}");
}

/// `qemu-img compare`: the VMDK image `img` reads as the raw file `raw`.
fn compare_with_raw(raw: &Path, img: &Path) {
    qemu(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "vmdk",
            path_str(raw),
            path_str(img),
        ],
    );
}

/// `qemu-img convert -f vmdk -O raw`: the guest contents of `img` into `raw`.
fn vmdk_to_raw(img: &Path, raw: &Path) {
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "raw",
            path_str(img),
            path_str(raw),
        ],
    );
}

/// `qemu-img create`: a VMDK image `img` of subformat `sub` and `size` (qemu-img's syntax).
fn qemu_create(sub: &str, img: &Path, size: &str) {
    let opts = format!("subformat={sub}");
    qemu(
        "qemu-img",
        &["create", "-f", "vmdk", "-o", &opts, path_str(img), size],
    );
}

#[test]
fn vdisk_reads_every_subformat_qemu_img_writes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * MIB;
    let expected = sample_disk(size);
    let raw = write_raw(dir.path(), "src.raw", &expected);
    for sub in SUBFORMATS {
        let img = dir.path().join(format!("{sub}.vmdk"));
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                path_str(&raw),
                path_str(&img),
            ],
        );
        let mut dev = open_ro(&img);
        assert_eq!(dev.virtual_size(), size, "{sub}");
        assert_eq!(dev.create_type(), sub);
        assert_same(&read_all(&mut dev), &expected, sub);
        assert!(dev.check().unwrap().corruptions == 0, "{sub}");
    }
}

#[test]
fn vdisk_reads_qemu_io_writes_into_a_fresh_image_of_every_writable_subformat() {
    let dir = tempfile::tempdir().unwrap();
    for sub in &SUBFORMATS[..4] {
        for zeroed in ["off", "on"] {
            if zeroed == "on" && sub.contains("Flat") {
                continue;
            }
            let img = dir.path().join(format!("{sub}-{zeroed}.vmdk"));
            let opts = format!("subformat={sub},zeroed_grain={zeroed}");
            qemu(
                "qemu-img",
                &["create", "-f", "vmdk", "-o", &opts, path_str(&img), "4M"],
            );
            qemu(
                "qemu-io",
                &[
                    "-f",
                    "vmdk",
                    "-c",
                    "write -P 0x11 0 100k",
                    "-c",
                    "write -P 0x22 1M 64k",
                    "-c",
                    "write -P 0x33 3000k 7k",
                    "-c",
                    "write -z 1M 64k",
                    path_str(&img),
                ],
            );
            let raw = dir.path().join(format!("{sub}-{zeroed}.raw"));
            qemu(
                "qemu-img",
                &["convert", "-O", "raw", path_str(&img), path_str(&raw)],
            );
            let expected = std::fs::read(&raw).unwrap();
            let mut dev = open_ro(&img);
            assert_same(
                &read_all(&mut dev),
                &expected,
                &format!("{sub} zeroed_grain={zeroed}"),
            );
        }
    }
}

#[test]
fn qemu_img_check_and_compare_accept_every_subformat_vdisk_writes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * MIB + 512;
    let data = sample_disk(size);
    let raw = write_raw(dir.path(), "src.raw", &data);
    for sub in SUBFORMATS {
        let img = dir.path().join(format!("{sub}.vmdk"));
        let opts = VmdkCreateOptions {
            subformat: sub.parse::<Subformat>().unwrap(),
            ..Default::default()
        };
        let mut dev = vmdk::create(&img, size, &opts).unwrap();
        fill_and_close(&mut dev, &data);
        drop(dev);
        qemu_check_is_clean(&img);
        compare_with_raw(&raw, &img);
        // And back: raw → vmdk → raw is byte-identical through vdisk too.
        let mut dev = open_ro(&img);
        assert_same(&read_all(&mut dev), &data, sub);
        let report = dev.check().unwrap();
        assert!(report.is_clean(), "{sub}: {report:?}");
    }
}

#[test]
fn images_vdisk_creates_match_qemu_img_options() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("opts.vmdk");
    let mut opts = VmdkCreateOptions::default();
    for (k, v) in [
        ("adapter_type", "lsilogic"),
        ("hwversion", "7"),
        ("toolsversion", "123"),
        ("zeroed_grain", "on"),
    ] {
        opts.parse_option(k, v).unwrap();
    }
    let mut dev = vmdk::create(&img, 3 * MIB, &opts).unwrap();
    dev.write_at(&[7u8; 512], 0).unwrap();
    dev.write_zeroes(0, 64 * 1024).unwrap();
    dev.close().unwrap();
    drop(dev);
    qemu_check_is_clean(&img);
    let info = qemu("qemu-img", &["info", "--output=json", path_str(&img)]);
    assert!(
        info.contains("\"create-type\": \"monolithicSparse\""),
        "{info}"
    );
    let text = String::from_utf8_lossy(&std::fs::read(&img).unwrap()[512..4096]).into_owned();
    assert!(text.contains("ddb.adapterType = \"lsilogic\""), "{text}");
    assert!(text.contains("ddb.geometry.heads = \"255\""), "{text}");
    assert!(text.contains("ddb.virtualHWVersion = \"7\""), "{text}");
    assert!(text.contains("ddb.toolsVersion = \"123\""), "{text}");
    qemu(
        "qemu-io",
        &["-f", "vmdk", "-c", "read -P 0 0 64k", path_str(&img)],
    );
    let mut dev = open_ro(&img);
    let st = dev.block_status(0, 64 * 1024).unwrap();
    assert_eq!(st.kind, ExtentKind::Zero);
}

#[test]
fn writes_through_vdisk_into_a_qemu_made_monolithic_sparse_image_keep_qemu_img_happy() {
    let dir = tempfile::tempdir().unwrap();
    for zeroed in ["off", "on"] {
        let img = dir.path().join(format!("w-{zeroed}.vmdk"));
        let size = 6 * MIB;
        qemu(
            "qemu-img",
            &[
                "create",
                "-f",
                "vmdk",
                "-o",
                &format!("zeroed_grain={zeroed}"),
                path_str(&img),
                "6M",
            ],
        );
        qemu(
            "qemu-io",
            &[
                "-f",
                "vmdk",
                "-c",
                "write -P 0x44 512k 128k",
                path_str(&img),
            ],
        );
        let mut model = vec![0u8; size as usize];
        model[512 * 1024..640 * 1024].fill(0x44);
        let mut dev = vmdk::open(&img, &VmdkOpenOptions::default()).unwrap();
        let writes: [(u64, Vec<u8>); 5] = [
            (0, pattern(70_000, 9)),           // one grain and a bit
            (530 * 1024, pattern(3000, 10)),   // inside a qemu-written grain
            (4 * MIB - 100, pattern(200, 11)), // across a grain boundary
            (size - 512, vec![0xee; 512]),     // last sector
            (2 * MIB, pattern(64 * 1024, 12)), // a whole grain
        ];
        for (off, data) in &writes {
            dev.write_at(data, *off).unwrap();
            model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        dev.write_zeroes(2 * MIB, 64 * 1024).unwrap();
        model[2 * MIB as usize..(2 * MIB + 64 * 1024) as usize].fill(0);
        dev.write_zeroes(512 * 1024 + 100, 1000).unwrap();
        model[512 * 1024 + 100..512 * 1024 + 1100].fill(0);
        assert_same(&read_all(&mut dev), &model, "before close");
        dev.close().unwrap();
        assert!(dev.check().unwrap().corruptions == 0);
        drop(dev);
        qemu_check_is_clean(&img);
        let raw = write_raw(dir.path(), "model.raw", &model);
        compare_with_raw(&raw, &img);
    }
}

#[test]
fn info_matches_qemu_img_info_for_every_subformat() {
    let dir = tempfile::tempdir().unwrap();
    for sub in SUBFORMATS {
        let img = dir.path().join(format!("{sub}.vmdk"));
        qemu_create(sub, &img, "3M");
        let out = qemu("qemu-img", &["info", "--output=json", path_str(&img)]);
        let theirs: serde_json::Value = serde_json::from_str(&out).unwrap();
        let dev = open_ro(&img);
        let ours = serde_json::to_value(dev.info()).unwrap();
        assert_eq!(ours, theirs["format-specific"]["data"], "{sub}");
        assert_eq!(
            dev.cluster_size(),
            theirs.get("cluster-size").and_then(|v| v.as_u64()),
            "{sub}"
        );
        let human = qemu("qemu-img", &["info", path_str(&img)]);
        let block: Vec<String> = human
            .lines()
            .skip_while(|l| *l != "Format specific information:")
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| l[4..].to_string())
            .collect();
        assert_eq!(dev.human_lines(), block, "{sub}");
    }
}

#[test]
fn multi_extent_images_over_two_gibibytes_read_and_write_across_extent_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * 1024 * MIB + 4 * MIB;
    let boundary = 2 * 1024 * MIB;
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        // qemu-made, written by qemu-io across the boundary, read by vdisk.
        let img = dir.path().join(format!("q-{sub}.vmdk"));
        qemu_create(sub, &img, &size.to_string());
        qemu(
            "qemu-io",
            &[
                "-f",
                "vmdk",
                "-c",
                &format!("write -P 0x66 {} 128k", boundary - 64 * 1024),
                path_str(&img),
            ],
        );
        let mut dev = open_ro(&img);
        assert_eq!(dev.virtual_size(), size);
        assert_eq!(dev.info().extents.len(), 2);
        let mut buf = vec![0u8; 256 * 1024];
        dev.read_at(&mut buf, boundary - 128 * 1024).unwrap();
        assert!(buf[..64 * 1024].iter().all(|&b| b == 0));
        assert!(buf[64 * 1024..192 * 1024].iter().all(|&b| b == 0x66));
        assert!(buf[192 * 1024..].iter().all(|&b| b == 0));
        drop(dev);

        // vdisk-made, written across the boundary, checked by qemu.
        let img = dir.path().join(format!("v-{sub}.vmdk"));
        let opts = VmdkCreateOptions {
            subformat: sub.parse().unwrap(),
            ..Default::default()
        };
        let mut dev = vmdk::create(&img, size, &opts).unwrap();
        let data = pattern(100_000, 5);
        dev.write_at(&data, boundary - 50_000).unwrap();
        dev.close().unwrap();
        drop(dev);
        qemu_check_is_clean(&img);
        qemu(
            "qemu-io",
            &[
                "-f",
                "vmdk",
                "-r",
                "-c",
                &format!("read -v {} 16", boundary - 50_000),
                path_str(&img),
            ],
        );
        let raw = dir.path().join("region.raw");
        qemu(
            "qemu-img",
            &["convert", "-O", "raw", path_str(&img), path_str(&raw)],
        );
        let file = std::fs::File::open(&raw).unwrap();
        let mut got = vec![0u8; data.len()];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut got, boundary - 50_000).unwrap();
        assert_same(&got, &data, sub);
        std::fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn a_stream_optimized_image_refuses_out_of_order_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.vmdk");
    let opts = VmdkCreateOptions {
        subformat: Subformat::StreamOptimized,
        ..Default::default()
    };
    let mut dev = vmdk::create(&img, 2 * MIB, &opts).unwrap();
    dev.write_at(&[1u8; 1000], MIB).unwrap();
    let err = dev.write_at(&[1u8; 10], 0).unwrap_err().to_string();
    assert!(err.contains("increasing"), "{err}");
    dev.write_zeroes(MIB + 1000, 1000).unwrap();
    dev.write_at(&[2u8; 10], MIB + 2000).unwrap();
    dev.close().unwrap();
    drop(dev);
    qemu_check_is_clean(&img);
    let mut dev = open_ro(&img);
    assert!(dev.is_read_only());
    let mut buf = vec![0u8; 3000];
    dev.read_at(&mut buf, MIB).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 1));
    assert!(buf[1000..2000].iter().all(|&b| b == 0));
    assert!(buf[2000..2010].iter().all(|&b| b == 2));
    let st = dev.block_status(0, 2 * MIB).unwrap();
    assert_eq!((st.kind, st.length), (ExtentKind::Unallocated, MIB));
    let st = dev.block_status(MIB, MIB).unwrap();
    assert!(st.compressed && st.kind == ExtentKind::Data);
}

/// Write a descriptor file naming the given extent lines.
fn custom_descriptor(dir: &Path, name: &str, create_type: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\n\
         createType=\"{create_type}\"\n\n# Extent description\n{}\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.adapterType = \"lsilogic\"\nddb.custom.unknownKey = \"kept\"\n",
        lines.join("\n")
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_hand_written_descriptor_mixing_flat_sparse_and_vmfs_extents_reads_as_qemu_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // A flat file whose guest data starts 8 sectors in.
    let mut flat = vec![0xeeu8; 4096];
    flat.extend(pattern(MIB as usize, 21));
    std::fs::write(dir.path().join("part1.raw"), &flat).unwrap();
    // A sparse extent made by qemu (the extent file of a twoGbMaxExtentSparse image).
    let sparse_desc = dir.path().join("sp.vmdk");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            path_str(&sparse_desc),
            "2M",
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 0x77 100k 300k",
            path_str(&sparse_desc),
        ],
    );
    std::fs::write(dir.path().join("part3.raw"), pattern(512 * 1024, 22)).unwrap();
    let img = custom_descriptor(
        dir.path(),
        "multi.vmdk",
        "vmfs",
        &[
            format!("RW {} FLAT \"part1.raw\" 8", MIB / 512),
            format!("RW {} SPARSE \"sp-s001.vmdk\"", 2 * MIB / 512),
            format!("RW {} VMFS \"part3.raw\"", 512 * 1024 / 512),
        ],
    );
    let raw = dir.path().join("multi.raw");
    vmdk_to_raw(&img, &raw);
    let expected = std::fs::read(&raw).unwrap();
    let mut dev = open_ro(&img);
    assert_eq!(dev.virtual_size(), 3 * MIB + 512 * 1024);
    assert_same(&read_all(&mut dev), &expected, "multi-extent");
    assert_eq!(dev.cluster_size(), None);
    let d = dev.descriptor().unwrap();
    assert_eq!(d.ddb_value("ddb.custom.unknownKey"), Some("kept"));
    let out = qemu("qemu-img", &["info", "--output=json", path_str(&img)]);
    let theirs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        serde_json::to_value(dev.info()).unwrap(),
        theirs["format-specific"]["data"]
    );

    // Writes through vdisk land where qemu looks for them.
    drop(dev);
    let mut dev = vmdk::open(&img, &VmdkOpenOptions::default()).unwrap();
    let data = pattern(200_000, 23);
    let at = MIB - 100_000; // across the FLAT → SPARSE boundary
    dev.write_at(&data, at).unwrap();
    dev.close().unwrap();
    drop(dev);
    qemu_check_is_clean(&img);
    vmdk_to_raw(&img, &raw);
    let after = std::fs::read(&raw).unwrap();
    assert_same(
        &after[at as usize..at as usize + data.len()],
        &data,
        "after write",
    );
    assert_eq!(
        &std::fs::read(dir.path().join("part1.raw")).unwrap()[..4096],
        &[0xee; 4096][..]
    );
}

#[test]
fn zero_and_read_only_extents_read_as_zeros_and_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ro.raw"), vec![0x31u8; 64 * 1024]).unwrap();
    let img = custom_descriptor(
        dir.path(),
        "z.vmdk",
        "custom",
        &[
            "RW 128 ZERO".to_string(),
            "RDONLY 128 FLAT \"ro.raw\" 0".to_string(),
        ],
    );
    let mut dev = vmdk::open(&img, &VmdkOpenOptions::default()).unwrap();
    assert_eq!(dev.virtual_size(), 128 * 1024);
    let mut buf = vec![1u8; 128 * 1024];
    dev.read_at(&mut buf, 0).unwrap();
    assert!(buf[..65536].iter().all(|&b| b == 0));
    assert!(buf[65536..].iter().all(|&b| b == 0x31));
    assert_eq!(
        dev.block_status(0, 128 * 1024).unwrap().kind,
        ExtentKind::Zero
    );
    assert!(dev.write_at(&[1], 0).is_err());
    assert!(dev.write_at(&[1], 65536).is_err());
}

/// qemu-img 10 creates zero-sized VMDK images but cannot open them (it refuses the
/// embedded createType or asserts on an empty extent list); vdisk opens both its own and
/// qemu's.
#[test]
fn zero_sized_images_of_every_subformat_open_as_empty_disks() {
    let dir = tempfile::tempdir().unwrap();
    for sub in SUBFORMATS {
        let ours = dir.path().join(format!("empty-{sub}.vmdk"));
        let opts = VmdkCreateOptions {
            subformat: sub.parse().unwrap(),
            ..Default::default()
        };
        let mut dev = vmdk::create(&ours, 0, &opts).unwrap();
        dev.close().unwrap();
        drop(dev);
        let theirs = dir.path().join(format!("qemu-{sub}.vmdk"));
        qemu_create(sub, &theirs, "0");
        for img in [&ours, &theirs] {
            let mut dev = open_ro(img);
            assert_eq!(dev.virtual_size(), 0, "{sub}");
            assert!(dev.check().unwrap().is_clean(), "{sub}");
        }
    }
}

#[test]
fn the_first_write_changes_the_cid_of_qemu_made_images_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    for sub in &SUBFORMATS[..4] {
        let img = dir.path().join(format!("cid-{sub}.vmdk"));
        qemu_create(sub, &img, "3M");
        let cid_of = |img: &Path| -> u64 {
            let out = qemu("qemu-img", &["info", "--output=json", path_str(img)]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["format-specific"]["data"]["cid"].as_u64().unwrap()
        };
        let before = cid_of(&img);
        let mut dev = vmdk::open(&img, &VmdkOpenOptions::default()).unwrap();
        assert_eq!(u64::from(dev.info().cid), before);
        let data = pattern(150_000, 31);
        dev.write_at(&data, 1000).unwrap();
        dev.write_at(&data[..10], 2 * MIB).unwrap();
        dev.close().unwrap();
        drop(dev);
        assert_ne!(cid_of(&img), before, "{sub}");
        qemu_check_is_clean(&img);
        let mut model = vec![0u8; 3 * MIB as usize];
        model[1000..151_000].copy_from_slice(&data);
        model[2 * MIB as usize..2 * MIB as usize + 10].copy_from_slice(&data[..10]);
        let raw = write_raw(dir.path(), "cid.raw", &model);
        compare_with_raw(&raw, &img);
    }
}
