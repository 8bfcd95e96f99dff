//! `compare` and `measure` against qemu-img on the same inputs: the same messages, exit
//! codes and figures.

mod common;

fn sh(args: &[&str]) {
    let out = common::run_argv(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn both(args: &[&str]) -> ((Option<i32>, String), (Option<i32>, String)) {
    let run = |bin: &str| {
        let out = common::run_program(bin, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    (run("qemu-img"), run(env!("CARGO_BIN_EXE_vdisk")))
}

#[test]
fn compare_agrees_with_qemu_img_on_messages_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (a, b, c, d) = (p("a.qcow2"), p("b.qcow2"), p("c.qcow2"), p("d.qcow2"));
    for (f, size) in [(&a, "4M"), (&b, "4M"), (&c, "5M"), (&d, "4M")] {
        sh(&["qemu-img", "create", "-q", "-f", "qcow2", f, size]);
    }
    sh(&["qemu-io", "-c", "write -P 1 0 64k", &a]);
    sh(&[
        "qemu-io",
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 2 1000 1",
        &b,
    ]);
    sh(&[
        "qemu-io",
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 1 4M 1",
        &c,
    ]);
    sh(&[
        "qemu-io",
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 0 64k 64k",
        &d,
    ]);
    let raw = p("a.raw");
    sh(&["qemu-img", "convert", "-O", "raw", &a, &raw]);
    let cases: Vec<Vec<&str>> = vec![
        vec!["compare", &a, &b],
        vec!["compare", &a, &c],
        vec!["compare", "-s", &a, &c],
        vec!["compare", &a, &d],
        vec!["compare", "-s", &a, &d],
        vec!["compare", &a, &raw],
        vec!["compare", "-f", "qcow2", "-F", "raw", &a, &raw],
        vec!["compare", &a, "/nonexistent/image"],
    ];
    for args in cases {
        let (q, v) = both(&args);
        assert_eq!(v, q, "{args:?}");
    }
}

#[test]
fn measure_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("in.qcow2").to_str().unwrap().to_string();
    let raw = dir.path().join("in.raw").to_str().unwrap().to_string();
    sh(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &img,
        "16M",
    ]);
    sh(&[
        "qemu-io",
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -P 2 5M 3k",
        "-c",
        "write -c -P 3 8M 64k",
        &img,
    ]);
    sh(&["qemu-img", "create", "-q", "-f", "raw", &raw, "10M"]);
    sh(&[
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "write -P 1 4k 4k",
        "-c",
        "write -P 1 3M 1M",
        &raw,
    ]);
    let opts = [
        "",
        "cluster_size=4096",
        "compat=0.10",
        "refcount_bits=1,cluster_size=512",
        "preallocation=full",
        "backing_file=x.qcow2",
        "cluster_size=2M,refcount_bits=64",
    ];
    for input in [&img, &raw] {
        for o in opts {
            let mut args = vec!["measure", "--output=json", "-O", "qcow2"];
            if !o.is_empty() {
                args.extend(["-o", o]);
            }
            args.push(input);
            let (q, v) = both(&args);
            assert_eq!(v, q, "{args:?}");
        }
        let (q, v) = both(&["measure", "-O", "raw", input]);
        assert_eq!(v, q);
    }
    for size in ["0", "1", "1M", "1G", "1T"] {
        let (q, v) = both(&["measure", "-O", "qcow2", "--size", size]);
        assert_eq!(v, q, "--size {size}");
    }
}
