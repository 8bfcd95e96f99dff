//! Images on Ceph RBD (`rbd:POOL/IMAGE` names), against a real single-node cluster and with
//! qemu-img's own `rbd:` driver (qemu-block-extra) as the oracle.
//!
//! With the `rbd` cargo feature these tests need a running cluster: `.ci/run` starts one
//! with `.ci/ceph-dev.sh start` and exports `CEPH_CONF` (by hand:
//! `eval "$(.ci/ceph-dev.sh start)"`). Without the feature only the test that checks the
//! refusal message runs.

mod common;
#[cfg(feature = "rbd")]
mod nbd_common;

use common::*;

/// A key typed into an `rbd:` name is refused, and never echoed: every message quoting
/// the name shows `key=<redacted>` (no cluster is reached: the name is refused first).
#[test]
fn a_key_typed_into_an_rbd_name_never_shows_in_messages() {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, vec![1u8; 65536]).unwrap();
    let (raw, out) = (raw.to_str().unwrap(), dir.path().join("out.raw"));
    let name = "rbd:rbd/disk:id=admin:key=AQDtopSECRETvalue==";
    for args in [
        vec!["info", name],
        vec!["map", name],
        vec!["compare", name, raw],
        vec!["convert", "-O", "raw", name, out.to_str().unwrap()],
        vec!["convert", "-O", "qcow2", raw, name],
        vec!["create", "-f", "qcow2", name, "1M"],
        vec!["create", "-f", "raw", name, "1M"],
    ] {
        let o = vdisk(&args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{args:?}: {all}");
        assert!(!all.contains("topSECRET"), "{args:?}: {all}");
        assert!(all.contains("key=<redacted>"), "{args:?}: {all}");
    }
}

#[cfg(not(feature = "rbd"))]
#[test]
fn without_the_feature_rbd_names_are_refused_with_a_message_that_says_why() {
    eprintln!("tests/rbd.rs: built without the `rbd` feature: the cluster tests are skipped");
    for args in [
        vec!["info", "rbd:rbd/disk"],
        vec!["create", "-f", "raw", "rbd:rbd/disk", "1M"],
    ] {
        let out = vdisk(&args);
        let (_, err, code) = answer(out);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("cargo feature `rbd`"), "{args:?}: {err}");
    }
}

#[cfg(feature = "rbd")]
mod cluster {
    use super::common::twins::Tool;
    use super::common::*;
    use super::nbd_common::{Server, Via};
    use std::path::Path;

    /// The pool the tests use (`CEPH_RBD_POOL`, as `.ci/ceph-dev.sh` exports it).
    fn pool() -> String {
        assert!(
            std::env::var_os("CEPH_CONF").is_some(),
            "built with the `rbd` feature, these tests need a Ceph cluster: run \
             eval \"$(.ci/ceph-dev.sh start)\" first (or .ci/run)"
        );
        std::env::var("CEPH_RBD_POOL").unwrap_or_else(|_| "rbd".into())
    }

    /// An RBD image name for one test, removed (with its snapshots) when dropped.
    struct TestImage {
        spec: String,
    }

    impl TestImage {
        fn new(tag: &str) -> TestImage {
            let img = TestImage {
                spec: format!("{}/vdisk-test-{}-{tag}", pool(), std::process::id()),
            };
            img.remove();
            img
        }
        /// `rbd:POOL/IMAGE`, for vdisk and qemu-img.
        fn name(&self) -> String {
            format!("rbd:{}", self.spec)
        }
        fn remove(&self) {
            let _ = run_program("rbd", ["snap", "purge", "--no-progress", &self.spec]);
            let _ = run_program("rbd", ["rm", "--no-progress", &self.spec]);
        }
        /// Bytes the image's objects hold, as `rbd du` counts them.
        fn used(&self) -> u64 {
            let out = sh(&["rbd", "du", "--format", "json", &self.spec]);
            let v = parse_json("rbd du", &out);
            v["images"][0]["used_size"]
                .as_u64()
                .unwrap_or_else(|| panic!("rbd du: no used_size in {out}"))
        }
        fn exists(&self) -> bool {
            let (pool, image) = self.spec.split_once('/').unwrap();
            sh(&["rbd", "ls", pool]).lines().any(|l| l == image)
        }
    }

    impl Drop for TestImage {
        fn drop(&mut self) {
            self.remove();
        }
    }

    /// A 64 MiB qcow2 with data in some 4 MiB objects, zeros written in others, and
    /// holes: allocation differs object by object.
    fn sparse_source(dir: &Path) -> std::path::PathBuf {
        let src = dir.join("src.qcow2");
        qemu_img_ok(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "64M"]);
        qemu_io_ok(&[
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0x5c 10M 3M",
            "-c",
            "write -z 20M 4M",
            "-c",
            "write -P 0x11 40M 64k",
            "-c",
            "write -P 0x77 63M 1M",
            src.to_str().unwrap(),
        ]);
        src
    }

    fn map_json(tool: &str, name: &str) -> serde_json::Value {
        let out = match tool {
            "qemu-img" => qemu_img_ok(&["map", "--output=json", "-f", "raw", name]),
            _ => vdisk_ok(&["map", "--output=json", "-f", "raw", name]),
        };
        parse_json(&format!("{tool} map"), &out)
    }

    /// A test directory with [`sparse_source`] in it, and an RBD image for the test
    /// holding the source as raw, written by `tool` ("vdisk" or "qemu-img").
    fn source_in_rbd(tag: &str, tool: &str) -> (TempDir, std::path::PathBuf, TestImage) {
        let dir = tempdir();
        let src = sparse_source(dir.path());
        let img = TestImage::new(tag);
        let args = ["convert", "-O", "raw", s(&src), &img.name()];
        match tool {
            "qemu-img" => qemu_img_ok(&args),
            _ => vdisk_ok(&args),
        };
        (dir, src, img)
    }

    /// `qemu-img check` of `name` succeeds.
    fn qemu_checks(name: &str) {
        let check = qemu_img(["check", name]);
        assert!(
            check.status.success(),
            "{}",
            describe("qemu-img check", &check)
        );
    }

    #[test]
    fn vdisk_convert_into_rbd_and_back_equals_the_source_and_qemu_reads_it() {
        let (dir, src, img) = source_in_rbd("roundtrip", "vdisk");
        // qemu-img reads what vdisk wrote
        qemu_img_ok(&[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &img.name(),
        ]);
        let back = dir.path().join("back.qcow2");
        vdisk_ok(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &img.name(),
            back.to_str().unwrap(),
        ]);
        assert_qemu_compare_identical(&src, &back);
        assert_qemu_check_clean(&back);
    }

    #[test]
    fn vdisk_reads_what_qemu_img_wrote_to_rbd() {
        let (dir, src, img) = source_in_rbd("fromqemu", "qemu-img");
        vdisk_ok(&["compare", src.to_str().unwrap(), &img.name()]);
        let ours = dir.path().join("ours.raw");
        let theirs = dir.path().join("theirs.raw");
        vdisk_ok(&["convert", "-O", "raw", &img.name(), ours.to_str().unwrap()]);
        qemu_img_ok(&[
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            theirs.to_str().unwrap(),
        ]);
        assert_bytes_eq("rbd image read by vdisk", &read(&ours), &read(&theirs));
    }

    #[test]
    fn a_sparse_source_gives_the_same_allocated_extents_as_qemu_img_convert() {
        let dir = tempdir();
        let src = sparse_source(dir.path());
        let ours = TestImage::new("sparse-vdisk");
        let theirs = TestImage::new("sparse-qemu");
        vdisk_ok(&["convert", "-O", "raw", src.to_str().unwrap(), &ours.name()]);
        qemu_img_ok(&[
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &theirs.name(),
        ]);
        let used = ours.used();
        assert_eq!(
            used,
            theirs.used(),
            "rbd du of vdisk's and qemu-img's conversions"
        );
        // data in 5 of the 16 4 MiB objects (10M..13M spans two); the zeros written at
        // 20M are not stored
        assert_eq!(used, 5 * (4 << 20), "rbd du of vdisk's conversion");
        assert_eq!(
            map_json("qemu-img", &ours.name()),
            map_json("qemu-img", &theirs.name())
        );
    }

    #[test]
    fn info_map_and_compare_agree_with_qemu_img_on_the_same_rbd_image() {
        let (dir, src, img) = source_in_rbd("parity", "qemu-img");
        assert_eq!(
            map_json("vdisk", &img.name()),
            map_json("qemu-img", &img.name())
        );
        let info = |tool: &str| {
            let args = ["info", "--output=json", &img.name()];
            let out = match tool {
                "qemu-img" => qemu_img_ok(&args),
                _ => vdisk_ok(&args),
            };
            parse_json(tool, &out)
        };
        let (ours, theirs) = (info("vdisk"), info("qemu-img"));
        for key in ["virtual-size", "format", "actual-size", "dirty-flag"] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "info key {key}\n{ours}\n{theirs}"
            );
        }
        let human = vdisk_ok(&["info", &img.name()]);
        assert!(human.contains("disk size: unavailable"), "{human}");
        // compare: identical (0) and different (1), as qemu-img says
        let other = dir.path().join("other.raw");
        qemu_img_ok(&[
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            other.to_str().unwrap(),
        ]);
        qemu_io_ok(&[
            "-f",
            "raw",
            "-c",
            "write -P 0x42 30M 512",
            other.to_str().unwrap(),
        ]);
        for (b, want) in [(src.as_path(), 0), (other.as_path(), 1)] {
            let b = b.to_str().unwrap();
            let (_, _, ours) = answer(vdisk(["compare", &img.name(), b]));
            let (_, _, theirs) = answer(qemu_img(["compare", &img.name(), b]));
            assert_eq!((ours, theirs), (want, want), "compare with {b}");
        }
    }

    #[test]
    fn a_qcow2_image_can_live_inside_an_rbd_image() {
        let dir = tempdir();
        let src = sparse_source(dir.path());
        let img = TestImage::new("qcow2");
        vdisk_ok(&["convert", "-O", "qcow2", src.to_str().unwrap(), &img.name()]);
        qemu_checks(&img.name());
        qemu_img_ok(&["compare", src.to_str().unwrap(), &img.name()]);
        let theirs = TestImage::new("qcow2-qemu");
        qemu_img_ok(&["create", "-q", "-f", "qcow2", &theirs.name(), "8M"]);
        qemu_io_ok(&["-c", "write -P 0x3c 1M 1M", &theirs.name()]);
        let info = parse_json(
            "info",
            &vdisk_ok(&["info", "--output=json", &theirs.name()]),
        );
        assert_eq!(info["format"], "qcow2");
        let out = dir.path().join("out.raw");
        vdisk_ok(&[
            "convert",
            "-O",
            "raw",
            &theirs.name(),
            out.to_str().unwrap(),
        ]);
        let mut want = vec![0u8; 8 << 20];
        want[1 << 20..2 << 20].fill(0x3c);
        assert_bytes_eq("qcow2 in rbd read by vdisk", &read(&out), &want);
    }

    #[test]
    fn vmdk_images_sparse_and_stream_optimized_can_live_inside_rbd_images() {
        let dir = tempdir();
        let src = sparse_source(dir.path());
        for subformat in ["monolithicSparse", "streamOptimized"] {
            let img = TestImage::new(&format!("vmdk-{subformat}"));
            let opt = format!("subformat={subformat}");
            vdisk_ok(&[
                "convert",
                "-O",
                "vmdk",
                "-o",
                &opt,
                src.to_str().unwrap(),
                &img.name(),
            ]);
            qemu_checks(&img.name());
            qemu_img_ok(&["compare", src.to_str().unwrap(), &img.name()]);
            let info = parse_json("info", &vdisk_ok(&["info", "--output=json", &img.name()]));
            assert_eq!(info["format"], "vmdk", "{subformat}");
        }
    }

    #[test]
    fn create_resize_and_measure_work_on_rbd_names() {
        let img = TestImage::new("create");
        vdisk_ok(&["create", "-f", "raw", &img.name(), "32M"]);
        let size = |name: &str| {
            parse_json("info", &qemu_img_ok(&["info", "--output=json", name]))["virtual-size"]
                .as_u64()
        };
        assert_eq!(size(&img.name()), Some(32 << 20));
        let again = vdisk(["create", "-f", "raw", &img.name(), "32M"]);
        let (_, err, code) = answer(again);
        assert_eq!(code, 1, "creating an existing rbd image: {err}");
        assert!(err.contains("File exists"), "{err}");
        vdisk_ok(&["resize", "-f", "raw", &img.name(), "48M"]);
        assert_eq!(size(&img.name()), Some(48 << 20));
        let ours = vdisk_ok(&["measure", "-O", "qcow2", "--output=json", &img.name()]);
        let theirs = qemu_img_ok(&["measure", "-O", "qcow2", "--output=json", &img.name()]);
        assert_eq!(parse_json("vdisk", &ours), parse_json("qemu-img", &theirs));
    }

    #[test]
    fn convert_n_onto_a_written_rbd_image_zeroes_and_frees_what_the_source_has_not() {
        let dir = tempdir();
        let src = sparse_source(dir.path());
        let img = TestImage::new("existing");
        let full = dir.path().join("full.raw");
        std::fs::write(&full, vec![0xeeu8; 64 << 20]).unwrap();
        qemu_img_ok(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            full.to_str().unwrap(),
            &img.name(),
        ]);
        assert_eq!(img.used(), 64 << 20);
        vdisk_ok(&[
            "convert",
            "-n",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &img.name(),
        ]);
        qemu_img_ok(&["compare", "-F", "raw", src.to_str().unwrap(), &img.name()]);
        assert!(
            img.used() < 64 << 20,
            "zeroed objects were freed: {}",
            img.used()
        );
    }

    #[test]
    fn a_failed_convert_removes_the_rbd_image_it_created_and_only_that() {
        // A qcow2 whose data lies past its truncated end: convert fails after the output
        // was created. vdisk removes the new RBD image (qemu-img would leave it).
        let dir = tempdir();
        let broken = dir.path().join("broken.qcow2");
        qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&broken), "8M"]);
        qemu_io_ok(&["-c", "write -P 0x11 0 4M", s(&broken)]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&broken)
            .and_then(|f| f.set_len(1 << 20))
            .expect("truncating the source");
        for fmt in ["raw", "qcow2"] {
            let img = TestImage::new(&format!("failed-{fmt}"));
            let (_, err, code) = answer(vdisk(["convert", "-O", fmt, s(&broken), &img.name()]));
            assert_eq!(code, 1, "{err}");
            assert!(err.contains("past the end of the file"), "{err}");
            assert!(!img.exists(), "the {fmt} output was removed");
        }
        // An image that was there before stays, as qemu-img leaves it.
        let (_dir, _src, img) = source_in_rbd("failed-existing", "vdisk");
        let (_, err, code) = answer(vdisk(["convert", "-O", "raw", s(&broken), &img.name()]));
        assert_eq!(code, 1, "{err}");
        assert!(img.exists(), "an existing image is never removed: {err}");
    }

    #[test]
    fn a_snapshot_reads_as_it_was_and_refuses_writes() {
        let (_dir, src, img) = source_in_rbd("snap", "vdisk");
        sh(&[
            "rbd",
            "snap",
            "create",
            "--no-progress",
            &format!("{}@s1", img.spec),
        ]);
        qemu_io_ok(&["-f", "raw", "-c", "write -P 0x99 0 4M", &img.name()]);
        let snap = format!("{}@s1", img.name());
        vdisk_ok(&["compare", src.to_str().unwrap(), &snap]);
        let (_, _, code) = answer(vdisk(["compare", src.to_str().unwrap(), &img.name()]));
        assert_eq!(code, 1, "the head changed after the snapshot");
        let (_, err, code) = answer(vdisk(["resize", "-f", "raw", &snap, "128M"]));
        assert_eq!(code, 1, "resizing a snapshot: {err}");
    }

    #[test]
    fn a_wrong_pool_or_key_is_a_clear_error_and_writes_nothing() {
        let dir = tempdir();
        let src = sparse_source(dir.path());
        let img = TestImage::new("denied");
        let bad_pool = format!("rbd:no-such-pool-{}/x", std::process::id());
        let (_, err, code) = answer(vdisk([
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &bad_pool,
        ]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("error opening pool no-such-pool"), "{err}");
        let keyring = dir.path().join("wrong.keyring");
        // a well-formed key that is not the cluster's
        let key = sh(&["ceph-authtool", "--gen-print-key"]).trim().to_string();
        std::fs::write(&keyring, format!("[client.admin]\n\tkey = {key}\n")).unwrap();
        let wrong_key = format!("{}:keyring={}", img.name(), keyring.display());
        let (_, err, code) = answer(vdisk([
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &wrong_key,
        ]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("error connecting"), "{err}");
        assert!(!err.contains(&key), "the key is never printed: {err}");
        assert!(!img.exists(), "nothing was created with a wrong key");
    }

    #[test]
    fn serve_exports_an_rbd_image_that_qemu_img_reads_over_nbd() {
        let (dir, src, img) = source_in_rbd("serve", "vdisk");
        let name = img.name();
        let flags = ["-r", "-f", "raw"];
        let server = Server::start_in(dir.path(), Tool::Vdisk, Path::new(&name), Via::Unix, &flags);
        let out = qemu_img(["compare", src.to_str().unwrap(), &server.uri("")]);
        server.stop();
        assert!(
            out.status.success(),
            "{}",
            describe("qemu-img compare over nbd", &out)
        );
    }

    /// Whether `qemu-img map` of `uri` (over NBD) reports data at `offset`.
    fn data_at(uri: &str, offset: u64) -> bool {
        let out = qemu_img_ok(&["map", "--output=json", "-f", "raw", uri]);
        let map = parse_json("qemu-img map over nbd", &out);
        let extents = map.as_array().expect("a map is a list");
        extents.iter().any(|e| {
            let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            start <= offset && offset < start + len && e["data"] == true
        })
    }

    #[test]
    fn a_served_rbd_image_reports_its_new_data_after_writes_and_zeroing() {
        // vdisk keeps what one pass over the object map found; every write, zeroing and
        // resize must drop it, or block status would keep calling new data a hole.
        let (dir, _src, img) = source_in_rbd("served-map", "vdisk");
        let name = img.name();
        let flags = ["-f", "raw", "-t"];
        let server = Server::start_in(dir.path(), Tool::Vdisk, Path::new(&name), Via::Unix, &flags);
        let uri = server.uri("");
        const MIB: u64 = 1 << 20;
        assert!(data_at(&uri, 10 * MIB) && !data_at(&uri, 48 * MIB));
        qemu_io_ok(&["-f", "raw", "-c", "write -P 0x42 48M 64k", &uri]);
        assert!(data_at(&uri, 48 * MIB), "a write into a hole shows as data");
        // A zeroing of whole objects frees them: the map says so at once.
        qemu_io_ok(&["-f", "raw", "-c", "write -z -u 8M 8M", &uri]);
        assert!(
            !data_at(&uri, 10 * MIB),
            "zeroed objects no longer hold data"
        );
        let read = qemu_io_ok(&[
            "-f",
            "raw",
            "-c",
            "read -P 0x42 48M 64k",
            "-c",
            "read -P 0 8M 8M",
            &uri,
        ]);
        assert!(!read.contains("Pattern verification failed"), "{read}");
        // SIGTERM: the server closes the image, so removing it does not wait out the
        // watch a killed client leaves behind (30 s).
        server.stop();
    }
}
