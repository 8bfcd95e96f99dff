//! Hostile and damaged VMDK images: every bad value gives a clear error naming what is
//! wrong, never a panic, and descriptors cannot reach files outside their directory.

mod common;

use rand::Rng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vdisk::vmdk::{self, Subformat, VmdkCreateOptions, VmdkOpenOptions};
use vdisk::{BlockDevice, Error};

const MIB: u64 = 1 << 20;

fn rw() -> VmdkOpenOptions {
    VmdkOpenOptions::default()
}

fn ro() -> VmdkOpenOptions {
    VmdkOpenOptions {
        read_only: true,
        ..Default::default()
    }
}

/// A 4 MiB monolithicSparse image with some data, made by vdisk.
fn sparse_image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.vmdk");
    let mut dev = vmdk::create(&path, 4 * MIB, &VmdkCreateOptions::default()).unwrap();
    dev.write_at(&[0xab; 200_000], 0).unwrap();
    dev.close().unwrap();
    path
}

fn stream_image(dir: &Path) -> PathBuf {
    let path = dir.join("stream.vmdk");
    let opts = VmdkCreateOptions {
        subformat: Subformat::StreamOptimized,
        ..Default::default()
    };
    let mut dev = vmdk::create(&path, 4 * MIB, &opts).unwrap();
    dev.write_at(&vec![0x5c; 300_000], 0).unwrap();
    dev.close().unwrap();
    path
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn open_err(path: &Path, opts: &VmdkOpenOptions) -> String {
    match vmdk::open(path, opts) {
        Ok(_) => panic!("{} opened but should not have", path.display()),
        Err(e) => e.to_string(),
    }
}

fn descriptor_with(dir: &Path, extent_lines: &str) -> PathBuf {
    let path = dir.join("desc.vmdk");
    std::fs::write(
        &path,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\n# Extent description\n{extent_lines}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_grain_size_of_zero_or_over_a_gibibyte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for grain in [0u64, 0x20_0001, u64::MAX] {
        let path = sparse_image(dir.path());
        poke(&path, 20, &grain.to_le_bytes());
        let err = open_err(&path, &ro());
        assert!(err.contains("grain size"), "{grain}: {err}");
        assert!(err.contains("VMDK sparse header"), "{err}");
    }
}

#[test]
fn grain_tables_of_more_than_512_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    poke(&path, 44, &513u32.to_le_bytes());
    assert!(open_err(&path, &ro()).contains("grain table entries"));
}

#[test]
fn a_grain_directory_past_the_end_of_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    poke(&path, 56, &(1u64 << 40).to_le_bytes());
    let err = open_err(&path, &ro());
    assert!(
        err.contains("grain directory") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn a_huge_capacity_is_refused_before_any_table_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    poke(&path, 12, &(1u64 << 62).to_le_bytes());
    assert!(open_err(&path, &ro()).contains("too large"));
    poke(&path, 12, &(1u64 << 43).to_le_bytes());
    poke(&path, 20, &1u64.to_le_bytes());
    assert!(open_err(&path, &ro()).contains("too large"));
}

#[test]
fn a_sparse_header_of_version_four_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    poke(&path, 4, &4u32.to_le_bytes());
    let err = vmdk::open(&path, &ro()).err().expect("version 4 must fail");
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("version 4"), "{err}");
}

#[test]
fn an_uncompressed_version_three_extent_opens_only_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    poke(&path, 4, &3u32.to_le_bytes());
    assert!(open_err(&path, &rw()).contains("read only"));
    let mut dev = vmdk::open(&path, &ro()).unwrap();
    let mut buf = [0u8; 16];
    dev.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0xab; 16]);
}

#[test]
fn a_file_truncated_before_its_first_grain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert!(open_err(&path, &ro()).contains("truncated"));
    std::fs::write(&path, b"KD").unwrap();
    assert!(open_err(&path, &ro()).contains("too small"));
}

#[test]
fn a_truncated_stream_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = stream_image(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 1024).unwrap();
    let err = open_err(&path, &ro());
    assert!(err.contains("truncated stream"), "{err}");
}

#[test]
fn a_stream_that_was_never_closed_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.vmdk");
    let opts = VmdkCreateOptions {
        subformat: Subformat::StreamOptimized,
        ..Default::default()
    };
    let mut dev = vmdk::create(&path, 4 * MIB, &opts).unwrap();
    dev.write_at(&[1u8; 70_000], 0).unwrap();
    drop(dev);
    assert!(open_err(&path, &ro()).contains("truncated stream"));
}

#[test]
fn a_corrupt_compressed_grain_fails_the_read_not_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = stream_image(dir.path());
    // The first grain's marker sits at the first grain offset (sector 128).
    poke(&path, 128 * 512 + 8, &u32::MAX.to_le_bytes());
    let mut dev = vmdk::open(&path, &ro()).unwrap();
    let mut buf = [0u8; 512];
    let err = dev.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(err.contains("compressed"), "{err}");
    poke(&path, 128 * 512 + 8, &100u32.to_le_bytes());
    poke(&path, 128 * 512 + 12, &[0xff; 100]);
    let mut dev = vmdk::open(&path, &ro()).unwrap();
    assert!(dev.read_at(&mut buf, 0).is_err());
}

#[test]
fn a_stream_optimized_image_opened_later_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = stream_image(dir.path());
    let mut dev = vmdk::open(&path, &rw()).unwrap();
    assert!(dev.is_read_only());
    assert!(matches!(dev.write_at(&[1], 0), Err(Error::ReadOnly(_))));
}

#[test]
fn a_grain_table_pointing_past_the_end_of_the_file_is_an_error_and_a_check_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path());
    // Header: gd at sector 26 for a vdisk/qemu-style 4 MiB image; its first entry.
    let mut gd_entry = [0u8; 4];
    let f = std::fs::File::open(&path).unwrap();
    let mut hdr = [0u8; 64];
    f.read_exact_at(&mut hdr, 0).unwrap();
    let gd = u64::from_le_bytes(hdr[56..64].try_into().unwrap()) * 512;
    f.read_exact_at(&mut gd_entry, gd).unwrap();
    let gt = u64::from(u32::from_le_bytes(gd_entry)) * 512;
    // Entry 1 of the grain table: a grain far past the end of the file.
    poke(&path, gt + 4, &0x0100_0000u32.to_le_bytes());
    let mut dev = vmdk::open(&path, &ro()).unwrap();
    let report = dev.check().unwrap();
    assert!(report.corruptions >= 2, "{report:?}"); // past EOF + redundant copy differs
    assert!(
        report.messages.iter().any(|m| m.contains("past the end")),
        "{report:?}"
    );
    assert!(
        report.messages.iter().any(|m| m.contains("redundant")),
        "{report:?}"
    );
    // A grain directory entry pointing past the end of the file fails reads cleanly.
    poke(&path, gd, &0x00ff_ffffu32.to_le_bytes());
    let mut dev = vmdk::open(&path, &ro()).unwrap();
    let mut buf = [0u8; 512];
    let err = dev.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(
        err.contains("grain table") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn malformed_extent_lines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.raw"), vec![0u8; 4096]).unwrap();
    for line in [
        "RW 8 FLAT \"x.raw\"",
        "RW eight FLAT \"x.raw\" 0",
        "RW 8 FLAT x.raw 0",
        "RW 8 SPARSE \"x.raw\" 0",
        "RW 8 WEIRD \"x.raw\"",
        "RW 8 FLAT \"x.raw\" 0 trailing",
        "RW 99999999999999999999 FLAT \"x.raw\" 0",
    ] {
        let path = descriptor_with(dir.path(), line);
        let err = open_err(&path, &ro());
        assert!(err.contains("extent line"), "{line}: {err}");
    }
}

#[test]
fn extent_paths_outside_the_descriptor_directory_are_refused_unless_allowed() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("images");
    std::fs::create_dir(&dir).unwrap();
    let secret = outer.path().join("secret.raw");
    std::fs::write(&secret, vec![0x42u8; 4096]).unwrap();
    for name in ["../secret.raw".to_string(), secret.display().to_string()] {
        let path = descriptor_with(&dir, &format!("RW 8 FLAT \"{name}\" 0"));
        let err = open_err(&path, &ro());
        assert!(
            err.contains("outside the descriptor's directory"),
            "{name}: {err}"
        );
        let allow = VmdkOpenOptions {
            read_only: true,
            allow_outside_extents: true,
            ..Default::default()
        };
        let mut dev = vmdk::open(&path, &allow).unwrap();
        let mut buf = [0u8; 8];
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0x42; 8]);
    }
}

#[test]
fn a_descriptor_of_version_four_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = descriptor_with(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("version=1", "version=4")).unwrap();
    assert!(matches!(
        vmdk::open(&path, &ro()),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn an_oversized_descriptor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = descriptor_with(dir.path(), "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&"# padding padding padding\n".repeat(50_000));
    std::fs::write(&path, text).unwrap();
    assert!(open_err(&path, &ro()).contains("larger than"));
    let path = sparse_image(dir.path());
    poke(&path, 36, &(1u64 << 40).to_le_bytes());
    assert!(open_err(&path, &ro()).contains("embedded descriptor"));
}

#[test]
fn a_missing_extent_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = descriptor_with(dir.path(), "RW 8 FLAT \"gone.raw\" 0");
    assert!(open_err(&path, &ro()).contains("gone.raw"));
}

#[test]
fn an_unknown_create_type_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = descriptor_with(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("monolithicFlat", "fullDevice")).unwrap();
    let err = open_err(&path, &ro());
    assert!(err.contains("fullDevice"), "{err}");
}

#[test]
fn random_damage_to_headers_and_descriptors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let pristine_sparse = std::fs::read(sparse_image(dir.path())).unwrap();
    let pristine_stream = std::fs::read(stream_image(dir.path())).unwrap();
    let mut rng = common::rng(6);
    let path = dir.path().join("fuzz.vmdk");
    for round in 0..400 {
        let mut bytes = if round % 2 == 0 {
            pristine_sparse.clone()
        } else {
            pristine_stream.clone()
        };
        let len = bytes.len();
        for _ in 0..rng.gen_range(1..8) {
            // Mostly the header and descriptor; sometimes the tables, grains or footer.
            let at = match rng.gen_range(0..4) {
                0 | 1 => rng.gen_range(0..80),
                2 => rng.gen_range(512..2048),
                _ => rng.gen_range(0..len),
            };
            bytes[at] = rng.gen();
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(mut dev) = vmdk::open(&path, &ro()) {
            let size = dev.virtual_size().min(8 * MIB);
            let mut buf = vec![0u8; 65536];
            let mut off = 0;
            while off + 65536 <= size {
                let _ = dev.read_at(&mut buf, off);
                let _ = dev.block_status(off, 65536);
                off += 65536;
            }
            let _ = dev.check();
        }
    }
}
