//! The sequential qcow2 layout (`qcow2::sequential`, `ops::convert::sequential`): convert
//! and delta write into a [`SequentialCheck`] storage, which fails any write below the
//! high-water mark, any read-back and any shrink. What it captured must pass
//! `qemu-img check` (no errors, no leaks) and read as the source (`qemu-img compare`), for
//! raw, qcow2 (compressed clusters, zero clusters) and VMDK sources, cluster sizes from
//! 512 bytes to 2 MiB, compat 0.10 and 1.1, refcount widths, extended L2 entries, `-B`
//! overlays, big sparse disks and deltas; vdisk must then write to such an image and leave
//! it clean. Raw and streamOptimized VMDK outputs of the ordinary convert pass the same
//! check.

mod common;

use common::*;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use vdisk::device::BlockDevice;
use vdisk::driver::CreateParams;
use vdisk::image::{self, ImageOptions};
use vdisk::ops::convert::sequential::{convert_sequential, SequentialTarget};
use vdisk::ops::convert::{convert, ConvertOptions};
use vdisk::storage::{FileStorage, Namespace, OpenOptions, SequentialCheck, Storage};
use vdisk::Format;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn open_ro(path: &Path) -> Box<dyn BlockDevice> {
    let opts = ImageOptions {
        read_only: true,
        ..Default::default()
    };
    image::open(path, &opts)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
        .device
}

fn kv(options: &[(&str, &str)]) -> Vec<(String, String)> {
    options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn copts() -> ConvertOptions {
    ConvertOptions {
        unallocated_is_zero: true,
        ..Default::default()
    }
}

/// Convert `src` (any format, probed) into `storage`, with `-o` `options` and, for an
/// overlay, the backing image `backing`.
fn seq_convert_with(
    src: &Path,
    options: &[(&str, &str)],
    backing: Option<&Path>,
    storage: Arc<dyn Storage>,
    copts: ConvertOptions,
) -> vdisk::Result<()> {
    let mut source = open_ro(src);
    let mut b = backing.map(open_ro);
    let options = kv(options);
    let target = SequentialTarget {
        storage,
        options: &options,
        backing: b.as_mut().map(|d| d.as_mut() as &mut dyn BlockDevice),
        scan_zeros: false,
    };
    convert_sequential(source.as_mut(), target, copts, &mut |_, _| {}, &mut |_| {})
}

fn checked_file(out: &Path) -> Arc<dyn Storage> {
    let file = FileStorage::create(out).expect("creating the output");
    Arc::new(SequentialCheck::new(Arc::new(file)))
}

fn seq_convert(src: &Path, out: &Path, options: &[(&str, &str)], backing: Option<&Path>) {
    seq_convert_with(src, options, backing, checked_file(out), copts()).unwrap_or_else(|e| {
        panic!(
            "sequential convert of {} with {options:?}: {e}",
            src.display()
        )
    });
}

/// The output must be a clean qcow2 image reading as `src`.
#[track_caller]
fn assert_good(out: &Path, src: &Path) {
    assert_qemu_check_clean(out);
    assert_qemu_compare_identical(src, out);
}

#[test]
fn raw_sources_at_every_cluster_size_compat_and_refcount_width() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    write_mixed_raw(&src, (3 << 20) + 1536, 192 << 10, 7);
    let mut cases: Vec<Vec<(&str, &str)>> = Vec::new();
    for cs in ["512", "4096", "65536", "2097152"] {
        for compat in ["0.10", "1.1"] {
            cases.push(vec![("cluster_size", cs), ("compat", compat)]);
        }
    }
    for bits in ["1", "2", "8", "32", "64"] {
        cases.push(vec![("cluster_size", "4096"), ("refcount_bits", bits)]);
    }
    cases.push(vec![("lazy_refcounts", "on"), ("compression_type", "zstd")]);
    for cs in ["16384", "65536", "2097152"] {
        cases.push(vec![("cluster_size", cs), ("extended_l2", "on")]);
    }
    for (i, options) in cases.iter().enumerate() {
        let out = path_in(&dir, &format!("out{i}.qcow2"));
        seq_convert(&src, &out, options, None);
        assert_good(&out, &src);
    }
    // -W and -m 4: the writer still gets the windows in guest order.
    let out = path_in(&dir, "w.qcow2");
    let parallel = ConvertOptions {
        out_of_order: true,
        workers: 4,
        ..copts()
    };
    let options = [("cluster_size", "4096")];
    seq_convert_with(&src, &options, None, checked_file(&out), parallel).unwrap();
    assert_good(&out, &src);
    // -S 0: every cluster allocated, holes included.
    let out = path_in(&dir, "full.qcow2");
    let full = ConvertOptions {
        fully_allocate: true,
        ..copts()
    };
    seq_convert_with(&src, &[], None, checked_file(&out), full).unwrap();
    assert_good(&out, &src);
    let map = qemu_img_ok(&["map", "--output=json", s(&out)]);
    assert!(!map.contains("\"data\": false"), "{map}");
}

#[test]
fn the_file_is_laid_out_header_metadata_then_data_in_guest_order() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    // Clusters 0, 5 and 2 (written in that order) hold distinct data.
    let cs = 65536usize;
    let mut data = vec![0u8; 8 * cs];
    for (k, c) in [0usize, 5, 2].iter().enumerate() {
        data[c * cs..(c + 1) * cs].fill(k as u8 + 1);
    }
    // Sparse: only the data clusters are allocated in the host file.
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(data.len() as u64).unwrap();
    for c in [0usize, 5, 2] {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&data[c * cs..(c + 1) * cs], (c * cs) as u64)
            .unwrap();
    }
    let out = path_in(&dir, "out.qcow2");
    let check = Arc::new(SequentialCheck::new(Arc::new(
        FileStorage::create(&out).unwrap(),
    )));
    seq_convert_with(&src, &[], None, check.clone(), copts()).unwrap();
    assert!(
        check.is_finished(),
        "closing the image finishes the storage"
    );
    drop(check);
    assert_good(&out, &src);
    let bytes = read(&out);
    // header, refcount table, one refcount block, L1, one L2, then clusters 0, 2, 5.
    assert_eq!(bytes.len(), 8 * cs);
    for (k, fill) in [1u8, 3, 2].iter().enumerate() {
        let at = (5 + k) * cs;
        assert!(
            bytes[at..at + cs].iter().all(|b| b == fill),
            "data cluster {k}"
        );
    }
    let map = qemu_img_ok(&["map", "--output=json", s(&out)]);
    assert!(map.contains("\"offset\": 327680"), "{map}");
}

#[test]
fn qcow2_sources_with_compressed_and_zero_clusters() {
    let dir = tempdir();
    let raw = path_in(&dir, "src.raw");
    write_mixed_raw(&raw, 4 << 20, 256 << 10, 11);
    let src = path_in(&dir, "src.qcow2");
    qemu_img_ok(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&src),
    ]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -z 1M 192k",
        "-c",
        "write -P 7 3M 4k",
        s(&src),
    ]);
    for options in [
        vec![],
        vec![("cluster_size", "4096")],
        vec![("cluster_size", "1048576"), ("compat", "0.10")],
    ] {
        let out = path_in(&dir, "out.qcow2");
        seq_convert(&src, &out, &options, None);
        assert_good(&out, &src);
    }
}

#[test]
fn vmdk_sources_sparse_and_stream_optimized() {
    let dir = tempdir();
    let raw = path_in(&dir, "src.raw");
    write_mixed_raw(&raw, 3 << 20, 128 << 10, 13);
    for sub in ["monolithicSparse", "streamOptimized"] {
        let src = path_in(&dir, &format!("{sub}.vmdk"));
        let o = format!("subformat={sub}");
        qemu_img_ok(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &o,
            s(&raw),
            s(&src),
        ]);
        let out = path_in(&dir, &format!("{sub}.qcow2"));
        seq_convert(&src, &out, &[("cluster_size", "16384")], None);
        assert_good(&out, &src);
    }
}

/// A raw base and a source that differs from it: new data, data overwritten, and base
/// data zeroed (which the overlay must hide).
fn base_and_changed(dir: &TempDir) -> (PathBuf, PathBuf) {
    let base = path_in(dir, "base.raw");
    let mut data = write_mixed_raw(&base, 4 << 20, 128 << 10, 17);
    let src = path_in(dir, "changed.raw");
    data[100_000..300_000].fill(0x5a);
    data[1 << 20..(1 << 20) + 200_000].fill(0);
    data[(3 << 20) + 7..(3 << 20) + 9].copy_from_slice(b"xy");
    std::fs::write(&src, &data).unwrap();
    (base, src)
}

#[test]
fn overlays_onto_a_backing_file_hold_only_the_differences() {
    let dir = tempdir();
    let (base, src) = base_and_changed(&dir);
    let cases = [
        ("1.1", "512", "off"),
        ("1.1", "65536", "off"),
        ("0.10", "512", "off"),
        ("0.10", "65536", "off"),
        ("1.1", "32768", "on"),
    ];
    for (compat, cs, extended_l2) in cases {
        {
            let out = path_in(&dir, &format!("overlay-{compat}-{cs}-{extended_l2}.qcow2"));
            let options = [
                ("backing_file", s(&base)),
                ("backing_fmt", "raw"),
                ("compat", compat),
                ("cluster_size", cs),
                ("extended_l2", extended_l2),
            ];
            seq_convert(&src, &out, &options, Some(&base));
            assert_good(&out, &src);
            let len = std::fs::metadata(&out).unwrap().len();
            assert!(
                len < 1 << 20,
                "{compat}/{cs}: the overlay holds {len} bytes"
            );
        }
    }
}

#[test]
fn big_sparse_disks() {
    let dir = tempdir();
    let src = path_in(&dir, "big.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "4T"]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 2 1T 128k",
        "-c",
        "write -P 3 4398046445568 64k",
        s(&src),
    ]);
    let out = path_in(&dir, "big-out.qcow2");
    seq_convert(&src, &out, &[], None);
    assert_good(&out, &src);
    // An overlay of a 4 TiB disk over its old state: only the differences are read.
    let old = path_in(&dir, "big-old.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&old), "4T"]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 9 2T 64k",
        s(&old),
    ]);
    let out = path_in(&dir, "big-overlay.qcow2");
    let options = [("backing_file", s(&old)), ("backing_fmt", "qcow2")];
    seq_convert(&src, &out, &options, Some(&old));
    assert_good(&out, &src);
    let raw = path_in(&dir, "sparse.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(16 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"end", (16 << 30) - 3).unwrap();
    f.write_all_at(b"middle", 5 << 30).unwrap();
    let out = path_in(&dir, "sparse-512.qcow2");
    seq_convert(&raw, &out, &[("cluster_size", "512")], None);
    assert_good(&out, &raw);
}

#[test]
fn vdisk_writes_to_a_sequential_image_afterwards_and_it_stays_clean() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    let mut data = write_mixed_raw(&src, 2 << 20, 128 << 10, 19);
    for (options, name) in [
        (vec![], "v3.qcow2"),
        (vec![("compat", "0.10")], "v2.qcow2"),
        (vec![("extended_l2", "on")], "ext.qcow2"),
    ] {
        let out = path_in(&dir, name);
        seq_convert(&src, &out, &options, None);
        let mut img = image::open(&out, &ImageOptions::default()).unwrap();
        let writes: [(u64, &[u8]); 3] = [
            (0, b"head"),
            (1_500_000, &[9u8; 70_000]),
            ((2 << 20) - 5, b"tail!"),
        ];
        let mut want = data.clone();
        for (at, bytes) in writes {
            img.device.write_at(bytes, at).unwrap();
            want[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }
        img.device.close().unwrap();
        drop(img);
        assert_qemu_check_clean(&out);
        assert_bytes_eq(name, &qemu_raw_contents(&out, dir.path()), &want);
    }
    data.clear();
}

#[test]
fn what_cannot_be_laid_out_in_advance_is_refused_clearly() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    write_mixed_raw(&src, 1 << 20, 64 << 10, 23);
    let out = path_in(&dir, "out.qcow2");
    let refused = |options: &[(&str, &str)], copts: ConvertOptions, word: &str| {
        let err =
            seq_convert_with(&src, options, None, checked_file(&out), copts).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(word), "{options:?}: {text}");
    };
    let compress = ConvertOptions {
        compress: true,
        ..copts()
    };
    refused(&[], compress, "compressed clusters");
    refused(&[("preallocation", "metadata")], copts(), "preallocation");
    refused(&[("data_file", "d.raw")], copts(), "external data file");
    let luks = [("encrypt.format", "luks"), ("encrypt.key-secret", "s")];
    let err = seq_convert_with(&src, &luks, None, checked_file(&out), copts());
    assert!(err.is_err(), "encryption is refused");
}

/// Fails every write after the first `left`.
struct FailAfter {
    inner: SequentialCheck,
    left: AtomicUsize,
}

impl Storage for FailAfter {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.left.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.left.store(0, Ordering::SeqCst);
            return Err(io::Error::other("the upload failed"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sequential(&self) -> bool {
        true
    }
}

#[test]
fn a_storage_failing_at_any_write_fails_the_convert_cleanly() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    write_mixed_raw(&src, 2 << 20, 64 << 10, 29);
    let options = [("cluster_size", "65536")];
    let mut n = 0;
    loop {
        let storage = Arc::new(FailAfter {
            inner: SequentialCheck::new(Arc::new(vdisk::storage::MemStorage::new())),
            left: AtomicUsize::new(n),
        });
        match seq_convert_with(&src, &options, None, storage, copts()) {
            Err(e) => assert!(e.to_string().contains("upload failed"), "write {n}: {e}"),
            Ok(()) => break,
        }
        n += 1;
        assert!(n < 1000, "the convert never finished");
    }
    assert!(n >= 5, "only {n} writes: header, metadata and data");
}

/// A namespace whose new files are [`SequentialCheck`]s over memory, kept by name.
#[derive(Default)]
struct SequentialFiles {
    files: Mutex<Vec<(PathBuf, Arc<vdisk::storage::MemStorage>)>>,
}

impl Namespace for SequentialFiles {
    fn open(&self, path: &Path, _opts: OpenOptions) -> io::Result<Arc<dyn Storage>> {
        Err(io::Error::other(format!(
            "{} cannot be opened",
            path.display()
        )))
    }
    fn create(&self, path: &Path, _unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        let mem = Arc::new(vdisk::storage::MemStorage::new());
        self.files
            .lock()
            .unwrap()
            .push((path.to_path_buf(), mem.clone()));
        Ok(Arc::new(SequentialCheck::new(mem)))
    }
    fn same_file(&self, a: &Path, b: &Path) -> bool {
        a == b
    }
    fn list(&self, _dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

#[test]
fn raw_and_stream_optimized_vmdk_outputs_are_sequential_already() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    write_mixed_raw(&src, 3 << 20, 128 << 10, 31);
    for (format, options, name) in [
        (Format::RAW, vec![], "out.raw"),
        (
            Format::VMDK,
            kv(&[("subformat", "streamOptimized")]),
            "out.vmdk",
        ),
    ] {
        let ns = SequentialFiles::default();
        let params = CreateParams {
            size: Some(3 << 20),
            options: &options,
            unsafe_cache: false,
        };
        let mut out = (format.driver().create)(&ns, Path::new(name), &params)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut source = open_ro(&src);
        convert(source.as_mut(), out.as_mut(), copts(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(out);
        let files = ns.files.lock().unwrap();
        assert_eq!(files.len(), 1, "{name}: one file");
        let path = path_in(&dir, name);
        std::fs::write(&path, files[0].1.to_vec()).unwrap();
        if format == Format::VMDK {
            assert_qemu_check_clean(&path);
        }
        assert_qemu_compare_identical(&src, &path);
    }
}

#[test]
fn a_delta_written_into_a_sequential_storage_replays_onto_the_old_state() {
    use vdisk::ops::delta::{self, Changes, Source};
    let dir = tempdir();
    let img = path_in(&dir, "vm.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "8M"]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 3M",
        "-c",
        "write -P 2 5M 1M",
        s(&img),
    ]);
    qemu_img_ok(&["snapshot", "-c", "s1", s(&img)]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 3 64k 100k",
        "-c",
        "write -z 1M 1M",
        "-c",
        "write -P 4 7M 4k",
        s(&img),
    ]);
    let old = path_in(&dir, "old.raw");
    qemu_img_ok(&["convert", "-l", "s1", "-O", "raw", s(&img), s(&old)]);
    let source = Source {
        path: &img,
        format: None,
        force_share: false,
    };
    let changes = Changes::Snapshots {
        from: "s1".into(),
        to: None,
    };
    for compat in ["1.1", "0.10"] {
        let mut c = delta::changed(&source, &changes).unwrap();
        let out = path_in(&dir, &format!("delta-{compat}.qcow2"));
        let options = kv(&[
            ("backing_file", s(&old)),
            ("backing_fmt", "raw"),
            ("compat", compat),
        ]);
        let stats = delta::write_sequential(&mut c.image, &c.extents, checked_file(&out), &options)
            .unwrap_or_else(|e| panic!("{compat}: {e}"));
        assert!(
            stats.data_clusters >= 3 && stats.zero_clusters >= 8,
            "{stats:?}"
        );
        drop(c);
        assert_good(&out, &img);
    }
}

#[test]
fn the_zero_scan_leaves_out_the_zeros_a_raw_source_holds() {
    let dir = tempdir();
    let src = path_in(&dir, "zeros.raw");
    // 8 MiB written: data, then zeros the host file holds as allocated, then data.
    let mut data = vec![0u8; 8 << 20];
    data[..1 << 20].copy_from_slice(&random_bytes(37, 1 << 20));
    data[(7 << 20) + 5] = 1;
    std::fs::write(&src, &data).unwrap();
    for scan_zeros in [false, true] {
        let out = path_in(&dir, &format!("scan-{scan_zeros}.qcow2"));
        let mut source = open_ro(&src);
        let target = SequentialTarget {
            storage: checked_file(&out),
            options: &[],
            backing: None,
            scan_zeros,
        };
        convert_sequential(
            source.as_mut(),
            target,
            copts(),
            &mut |_, _| {},
            &mut |_| {},
        )
        .unwrap();
        assert_good(&out, &src);
        let len = std::fs::metadata(&out).unwrap().len();
        // 17 data clusters of 64 KiB when scanned, all 128 otherwise.
        match scan_zeros {
            true => assert!(len < 2 << 20, "{len}"),
            false => assert!(len > 8 << 20, "{len}"),
        }
    }
    // The scanned output maps what an ordinary convert maps.
    let ordinary = path_in(&dir, "ordinary.qcow2");
    vdisk_ok(&["convert", "-O", "qcow2", s(&src), s(&ordinary)]);
    let data_runs = |p: &Path| {
        let map = qemu_img_ok(&["map", "--output=json", s(p)]);
        map.lines()
            .filter(|l| l.contains("\"data\": true"))
            .map(|l| l.split("\"offset\"").next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        data_runs(&path_in(&dir, "scan-true.qcow2")),
        data_runs(&ordinary)
    );
}
