//! `vdisk check` and `qemu-img check` report the same JSON on images qemu-img made with
//! the option combinations the other tools are tested with.

mod common;

fn sh(args: &[&str]) -> std::process::Output {
    let out = common::run_argv(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn check_json(bin: &str, path: &str) -> (Option<i32>, String) {
    let out = common::run_program(bin, ["check", "--output=json", path]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut v = v;
    if let Some(o) = v.as_object_mut() {
        o.remove("filename");
    }
    (out.status.code(), v.to_string())
}

#[test]
fn vdisk_and_qemu_img_report_the_same_counts_on_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let vdisk = env!("CARGO_BIN_EXE_vdisk");
    let options = [
        "cluster_size=65536",
        "cluster_size=512",
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=2M,refcount_bits=64",
        "compat=0.10",
        "compat=0.10,cluster_size=4096",
        "lazy_refcounts=on,refcount_bits=8",
        "preallocation=metadata",
        "preallocation=falloc,cluster_size=16384",
        "compression_type=zlib,refcount_bits=32",
    ];
    for (i, o) in options.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.qcow2"));
        let ps = p.to_str().unwrap();
        sh(&["qemu-img", "create", "-q", "-f", "qcow2", "-o", o, ps, "8M"]);
        if !o.contains("preallocation") {
            sh(&[
                "qemu-io",
                "-c",
                "write -P 1 0 1M",
                "-c",
                "write -z 2M 256k",
                "-c",
                "write -P 2 5M 100k",
                ps,
            ]);
            // 1-bit refcounts cannot count a cluster shared with a snapshot.
            let snapshots = !o.ends_with("refcount_bits=1");
            if snapshots {
                sh(&["qemu-img", "snapshot", "-c", "one", ps]);
            }
            sh(&[
                "qemu-io",
                "-c",
                "write -P 3 512k 1M",
                "-c",
                "discard 6M 1M",
                ps,
            ]);
            if snapshots {
                sh(&["qemu-img", "snapshot", "-c", "two", ps]);
            }
            sh(&["qemu-io", "-c", "write -c -P 4 6M 2M", ps]);
        }
        let q = check_json("qemu-img", ps);
        let v = check_json(vdisk, ps);
        assert_eq!(v, q, "options {o}");
    }
}

#[test]
fn raw_images_do_not_support_checks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.img");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let out = common::vdisk(["check", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(63));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("This image format does not support checks")
    );
}
