//! Images in S3-compatible storage (`s3://BUCKET/KEY` names), against a real RADOS gateway,
//! with curl (`--aws-sigv4`) as the independent client that uploads, downloads and lists.
//!
//! These tests need a gateway: `.ci/run` starts one with `.ci/ceph-dev.sh start`, which
//! exports `AWS_ENDPOINT_URL`, the keys and `S3_BUCKET` (by hand:
//! `eval "$(.ci/ceph-dev.sh start)"`). Without `AWS_ENDPOINT_URL` and `S3_BUCKET` each test
//! prints a note and passes. Every vdisk run is checked for the secret key in its output.

mod common;
mod nbd_common;

use common::twins::Tool;
use common::*;
use nbd_common::{Server, Via};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The gateway and bucket the tests use.
struct S3 {
    endpoint: String,
    access: String,
    secret: String,
    region: String,
    bucket: String,
    prefix: String,
}

/// The gateway from the environment, or `None` (with a note) when there is none.
fn s3(tag: &str) -> Option<S3> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(endpoint), Some(bucket)) = (var("AWS_ENDPOINT_URL"), var("S3_BUCKET")) else {
        eprintln!(
            "tests/s3.rs: AWS_ENDPOINT_URL / S3_BUCKET not set: skipped (run eval \"$(.ci/ceph-dev.sh start)\" first)"
        );
        return None;
    };
    Some(S3 {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        access: var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        secret: var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
        bucket,
        prefix: format!("vdisk-tests/{}-{tag}", std::process::id()),
    })
}

impl S3 {
    /// `s3://BUCKET/PREFIX/name`.
    fn name(&self, name: &str) -> String {
        format!("s3://{}/{}/{name}", self.bucket, self.prefix)
    }
    fn url(&self, name: &str) -> String {
        format!("{}/{}/{}/{name}", self.endpoint, self.bucket, self.prefix)
    }
    /// curl, signing with the test keys (a PUT's body unsigned, other bodies empty).
    fn curl(&self, args: &[&str]) -> Output {
        let payload = match args.contains(&"-T") {
            true => "UNSIGNED-PAYLOAD",
            false => "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        };
        let mut argv = vec![
            "-sS".to_string(),
            "--aws-sigv4".into(),
            format!("aws:amz:{}:s3", self.region),
            "--user".into(),
            format!("{}:{}", self.access, self.secret),
            "-H".into(),
            format!("x-amz-content-sha256: {payload}"),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        run_program("curl", argv)
    }
    fn upload(&self, local: &Path, name: &str) {
        let out = self.curl(&["-f", "-T", local.to_str().unwrap(), &self.url(name)]);
        ok("curl upload", out);
    }
    fn download(&self, name: &str, local: &Path) {
        let out = self.curl(&["-f", "-o", local.to_str().unwrap(), &self.url(name)]);
        ok("curl download", out);
    }
    /// HTTP status of a HEAD of the object.
    fn head(&self, name: &str) -> String {
        let out = self.curl(&[
            "-I",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &self.url(name),
        ]);
        ok("curl HEAD", out)
    }
    /// The multipart uploads in progress under this test's prefix.
    fn uploads(&self) -> usize {
        // curl signs a query as it is written: sorted, and '/' escaped.
        let prefix = self.prefix.replace('/', "%2F");
        let url = format!(
            "{}/{}?prefix={prefix}%2F&uploads=",
            self.endpoint, self.bucket
        );
        let body = ok("curl list uploads", self.curl(&["-f", &url]));
        assert!(body.contains("ListMultipartUploadsResult"), "{body}");
        body.matches("<Upload>").count()
    }
    /// vdisk with `env` overrides; fails the test if the secret key shows in its output.
    fn vdisk(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut argv: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        argv.push(vdisk_bin().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = run_program("env", argv);
        for secret in [self.secret.as_str(), WRONG_SECRET] {
            let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
            let shown = String::from_utf8_lossy(&all).contains(secret);
            assert!(
                secret.is_empty() || !shown,
                "{}",
                describe("secret in output", &out)
            );
        }
        out
    }
    fn vdisk_ok(&self, args: &[&str]) -> String {
        ok(&format!("vdisk {args:?}"), self.vdisk(&[], args))
    }
    /// A failing run's stderr (exit code 1, or 2 for compare as qemu-img).
    fn vdisk_fails(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.vdisk(env, args);
        let code = if args[0] == "compare" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{}", describe("vdisk", &out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for S3 {
    /// Remove every object under the test's prefix.
    fn drop(&mut self) {
        let prefix = self.prefix.replace('/', "%2F");
        let url = format!(
            "{}/{}?list-type=2&prefix={prefix}%2F",
            self.endpoint, self.bucket
        );
        let listing = String::from_utf8_lossy(&self.curl(&[&url]).stdout).into_owned();
        for part in listing.split("<Key>").skip(1) {
            let key = part.split("</Key>").next().unwrap_or_default();
            let _ = self.curl(&[
                "-X",
                "DELETE",
                &format!("{}/{}/{key}", self.endpoint, self.bucket),
            ]);
        }
    }
}

/// A secret key the tests pass on purpose, which must never show either.
const WRONG_SECRET: &str = "wrongSECRETkey0123456789wrongSECRETkey01";

/// A qcow2 image of `mib` MiB with data at a few places (some in a later 16 MiB part).
fn sample_qcow2(dir: &Path, mib: u64) -> std::path::PathBuf {
    assert!(mib >= 24);
    let path = dir.join("src.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
        &format!("{mib}M"),
    ]);
    let p = path.to_str().unwrap();
    qemu_io_ok(&["-c", "write -P 0x5a 0 3M", "-c", "write -P 0x11 17M 1M", p]);
    qemu_io_ok(&["-c", &format!("write -P 0xc3 {}M 64k", mib - 1), p]);
    path
}

#[test]
fn an_image_in_a_bucket_of_any_format_reads_like_the_local_file() {
    let Some(s3) = s3("read") else { return };
    let dir = tempdir();
    let src = sample_qcow2(dir.path(), 24);
    for (fmt, opts) in [
        ("qcow2", ""),
        ("vmdk", "subformat=streamOptimized"),
        ("vpc", ""),
        ("vdi", ""),
        ("vhdx", ""),
    ] {
        let local = dir.path().join(format!("img.{fmt}"));
        let mut args = vec!["convert", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([src.to_str().unwrap(), local.to_str().unwrap()]);
        qemu_img_ok(&args);
        s3.upload(&local, &format!("img.{fmt}"));
        let remote = s3.name(&format!("img.{fmt}"));
        let l = local.to_str().unwrap();
        let info: serde_json::Value =
            parse_json("info", &s3.vdisk_ok(&["info", "--output=json", &remote]));
        let linfo = parse_json("info", &vdisk_ok(&["info", "--output=json", l]));
        assert_eq!(info["format"], linfo["format"], "{fmt}");
        assert_eq!(info["virtual-size"], linfo["virtual-size"], "{fmt}");
        assert_eq!(info["filename"], remote.as_str(), "{fmt}");
        let same = s3.vdisk_ok(&["compare", l, &remote]);
        assert_eq!(same.trim(), "Images are identical.", "{fmt}");
        let map = s3.vdisk_ok(&["map", "--output=json", &remote]);
        let lmap = vdisk_ok(&["map", "--output=json", l]);
        assert_eq!(parse_json("map", &map), parse_json("map", &lmap), "{fmt}");
    }
    // Out of a bucket: the copy equals the source.
    let back = dir.path().join("back.qcow2");
    s3.vdisk_ok(&[
        "convert",
        "-O",
        "qcow2",
        &s3.name("img.vhdx"),
        back.to_str().unwrap(),
    ]);
    assert_qemu_compare_identical(&src, &back);
    assert_qemu_check_clean(&back);
}

#[test]
fn convert_writes_raw_and_stream_optimized_vmdk_into_a_bucket() {
    let Some(s3) = s3("write") else { return };
    let dir = tempdir();
    // 40 MiB of raw output: three parts, the last one short.
    let src = sample_qcow2(dir.path(), 40);
    for (name, args) in [
        ("out.raw", vec!["-O", "raw"]),
        (
            "out.vmdk",
            vec!["-O", "vmdk", "-o", "subformat=streamOptimized"],
        ),
    ] {
        let mut argv = vec!["convert"];
        argv.extend(args);
        let remote = s3.name(name);
        argv.extend([src.to_str().unwrap(), remote.as_str()]);
        s3.vdisk_ok(&argv);
        let local = dir.path().join(name);
        s3.download(name, &local);
        if name.ends_with(".vmdk") {
            assert_qemu_check_clean(&local);
        }
        assert_qemu_compare_identical(&src, &local);
    }
    assert_eq!(
        std::fs::metadata(dir.path().join("out.raw")).unwrap().len(),
        40 << 20
    );
    assert_eq!(s3.uploads(), 0);
}

#[test]
fn qcow2_output_and_deltas_are_laid_out_sequentially_into_a_bucket() {
    let Some(s3) = s3("seqqcow2") else { return };
    let dir = tempdir();
    let src = sample_qcow2(dir.path(), 40);
    let p = src.to_str().unwrap();
    // convert -O qcow2, then -c refused with a clear message and nothing left.
    s3.vdisk_ok(&["convert", "-O", "qcow2", p, &s3.name("q.qcow2")]);
    let local = dir.path().join("q.qcow2");
    s3.download("q.qcow2", &local);
    assert_qemu_check_clean(&local);
    assert_qemu_compare_identical(&src, &local);
    let err = s3.vdisk_fails(
        &[],
        &["convert", "-c", "-O", "qcow2", p, &s3.name("c.qcow2")],
    );
    assert!(err.contains("sequentially"), "{err}");
    assert_eq!(s3.head("c.qcow2"), "404");
    // convert -B: an overlay over the old state holding only what changed.
    let old = dir.path().join("old.qcow2");
    qemu_img_ok(&["convert", "-O", "qcow2", p, old.to_str().unwrap()]);
    qemu_io_ok(&["-c", "write -P 0x77 5M 1M", "-c", "write -z 0 1M", p]);
    let o = old.to_str().unwrap();
    s3.vdisk_ok(&[
        "convert",
        "-O",
        "qcow2",
        "-B",
        o,
        "-F",
        "qcow2",
        p,
        &s3.name("b.qcow2"),
    ]);
    let overlay = dir.path().join("b.qcow2");
    s3.download("b.qcow2", &overlay);
    assert_qemu_check_clean(&overlay);
    assert_qemu_compare_identical(&src, &overlay);
    assert!(std::fs::metadata(&overlay).unwrap().len() < 4 << 20);
    // A delta from a snapshot to the active disk, uploaded, replays onto a copy of the
    // snapshot's state.
    qemu_img_ok(&["snapshot", "-c", "s1", p]);
    let s1 = dir.path().join("s1.qcow2");
    qemu_img_ok(&[
        "convert",
        "-l",
        "s1",
        "-O",
        "qcow2",
        p,
        s1.to_str().unwrap(),
    ]);
    qemu_io_ok(&["-c", "write -P 0x99 20M 2M", "-c", "write -z 0 64k", p]);
    let remote = s3.name("d.qcow2");
    s3.vdisk_ok(&[
        "delta", "--from", "s1", "-b", "s1.qcow2", "-F", "qcow2", p, &remote,
    ]);
    let delta = dir.path().join("d.qcow2");
    s3.download("d.qcow2", &delta);
    assert_qemu_check_clean(&delta);
    assert_qemu_compare_identical(&src, &delta);
    // Applied on the other side: committed into the copy of the old state, which then
    // equals the source.
    qemu_img_ok(&["commit", "-q", delta.to_str().unwrap()]);
    assert_qemu_compare_identical(&src, &s1);
    assert_eq!(s3.uploads(), 0);
}

#[test]
fn a_format_written_out_of_order_fails_clearly_and_leaves_no_object() {
    let Some(s3) = s3("order") else { return };
    let dir = tempdir();
    let src = sample_qcow2(dir.path(), 24);
    let err = s3.vdisk_fails(
        &[],
        &[
            "convert",
            "-O",
            "vhdx",
            src.to_str().unwrap(),
            &s3.name("q.vhdx"),
        ],
    );
    assert!(
        err.contains("written in order") && err.contains("offset 0x"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(s3.head("q.vhdx"), "404");
    assert_eq!(s3.uploads(), 0);
    let err = s3.vdisk_fails(&[], &["create", "-f", "raw", &s3.name("c.raw"), "1M"]);
    assert!(err.contains("s3://") && err.contains("convert"), "{err}");
    assert_eq!(s3.head("c.raw"), "404");
}

#[test]
fn a_wrong_secret_key_is_one_clear_error_and_writes_nothing() {
    let Some(s3) = s3("secret") else { return };
    let dir = tempdir();
    let src = sample_qcow2(dir.path(), 24);
    let wrong = [("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)];
    let err = s3.vdisk_fails(
        &wrong,
        &[
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &s3.name("w.raw"),
        ],
    );
    assert!(
        err.contains("SignatureDoesNotMatch") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert_eq!(s3.head("w.raw"), "404");
    assert_eq!(s3.uploads(), 0);
    s3.upload(&src, "r.qcow2");
    let err = s3.vdisk_fails(&wrong, &["info", &s3.name("r.qcow2")]);
    assert!(
        err.contains("Could not open") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    let err = s3.vdisk_fails(
        &[("AWS_ACCESS_KEY_ID", "NOSUCHKEY")],
        &["info", &s3.name("r.qcow2")],
    );
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
}

#[test]
fn missing_objects_and_objects_that_are_not_images_are_clear_errors() {
    let Some(s3) = s3("missing") else { return };
    let dir = tempdir();
    let err = s3.vdisk_fails(&[], &["info", &s3.name("absent.qcow2")]);
    assert!(err.contains("no such object"), "{err}");
    let err = s3.vdisk_fails(&[], &["info", "s3://vdisk-no-such-bucket/x"]);
    assert!(err.contains("NoSuchBucket"), "{err}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"not a disk image, just some words\n").unwrap();
    s3.upload(&text, "notes.txt");
    let err = s3.vdisk_fails(&[], &["info", "-f", "qcow2", &s3.name("notes.txt")]);
    assert!(err.contains("qcow2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = s3.vdisk_fails(
        &[],
        &[
            "compare",
            "-f",
            "vmdk",
            &s3.name("notes.txt"),
            text.to_str().unwrap(),
        ],
    );
    assert!(err.contains("VMDK"), "{err}");
}

/// What the fault proxy does with the Nth part upload (from 0) it sees, or with GETs.
#[derive(Clone, Copy)]
enum Fault {
    /// Pass everything (the proxy only counts).
    Nothing,
    /// Drop the connection of every ranged GET after the first `n`.
    CutGetsAfter(usize),
    /// Drop the connection of every part upload after the first `n`.
    StopAfter(usize),
    /// Drop the first try of every part upload (the retry goes through).
    FirstTryOfEach,
    /// Pass half the body of a whole-object PUT to the gateway, then cut both connections.
    CutPut,
}

/// What the fault proxy saw.
#[derive(Default)]
struct Seen {
    /// Uploads (parts, or whole-object PUTs with [`Fault::CutPut`]).
    puts: AtomicUsize,
    /// Ranged GETs.
    gets: AtomicUsize,
    /// Ranged GETs being answered now, and the most at one time.
    active_gets: AtomicUsize,
    max_gets: AtomicUsize,
}

/// A proxy between vdisk and the gateway that cuts part uploads (`PUT ...partNumber=`) or
/// ranged GETs as `fault` says; every other request passes. One upstream connection per
/// request.
fn fault_proxy(upstream: &str, fault: Fault) -> (String, Arc<Seen>) {
    let tried = Arc::new(Mutex::new(HashSet::new()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = upstream.trim_start_matches("http://").to_string();
    let puts = Arc::new(Seen::default());
    let seen = puts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (up, seen, tried) = (upstream.clone(), seen.clone(), tried.clone());
            std::thread::spawn(move || serve_one(client, &up, &seen, &tried, fault));
        }
    });
    (format!("http://{addr}"), puts)
}

fn serve_one(
    client: TcpStream,
    upstream: &str,
    seen: &Seen,
    tried: &Mutex<HashSet<String>>,
    fault: Fault,
) {
    let puts = &seen.puts;
    let mut reader = BufReader::new(client.try_clone().unwrap());
    loop {
        let mut head = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line.to_ascii_lowercase().starts_with("connection:") {
                continue;
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            head.extend_from_slice(line.as_bytes());
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let first = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if matches!(fault, Fault::CutPut)
            && first.starts_with("PUT ")
            && !first.contains("partNumber=")
        {
            puts.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut up) = TcpStream::connect(upstream) {
                let _ = up.write_all(&head).and(up.write_all(&body[..len / 2]));
                let _ = up.shutdown(Shutdown::Both);
            }
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let ranged = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("\r\nrange:");
        let get = first.starts_with("GET ") && ranged;
        if get {
            let n = seen.gets.fetch_add(1, Ordering::SeqCst);
            if matches!(fault, Fault::CutGetsAfter(k) if n >= k) {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            let now = seen.active_gets.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_gets.fetch_max(now, Ordering::SeqCst);
        }
        if first.starts_with("PUT ") && first.contains("partNumber=") {
            let n = puts.fetch_add(1, Ordering::SeqCst);
            let cut = match fault {
                Fault::CutPut | Fault::Nothing | Fault::CutGetsAfter(_) => false,
                Fault::StopAfter(k) => n >= k,
                Fault::FirstTryOfEach => {
                    let part = first.split("partNumber=").nth(1).unwrap_or_default();
                    let part = part
                        .split(['&', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    tried.lock().unwrap().insert(part)
                }
            };
            if cut {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        }
        let relayed = relay(upstream, &head, &body, &client);
        if get {
            seen.active_gets.fetch_sub(1, Ordering::SeqCst);
        }
        if !relayed {
            return;
        }
    }
}

/// Send one request upstream and its whole answer back to `client`; `false` on a failure.
fn relay(upstream: &str, head: &[u8], body: &[u8], client: &TcpStream) -> bool {
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return false;
    };
    let mut answer = Vec::new();
    up.write_all(head)
        .and(up.write_all(body))
        .and(up.read_to_end(&mut answer))
        .and_then(|_| { client }.write_all(&answer))
        .is_ok()
}

#[test]
fn an_upload_cut_in_the_middle_is_aborted_and_transient_failures_are_retried() {
    let Some(s3) = s3("fault") else { return };
    let dir = tempdir();
    let raw = dir.path().join("big.raw");
    std::fs::write(&raw, random_bytes(7, 40 << 20)).unwrap();
    let r = raw.to_str().unwrap();
    // Raw output has a length known up front: it goes as one PUT. Cut in the middle, it is
    // a clear error, and the gateway keeps nothing.
    let (proxy, puts) = fault_proxy(&s3.endpoint, Fault::CutPut);
    let err = s3.vdisk_fails(
        &[("AWS_ENDPOINT_URL", &proxy)],
        &["convert", "-O", "raw", r, &s3.name("cut-put.raw")],
    );
    assert!(err.contains("PUT"), "{err}");
    assert_eq!(puts.puts.load(Ordering::SeqCst), 1);
    assert_eq!(s3.head("cut-put.raw"), "404");
    // A streamOptimized VMDK's length is not known before it is written: a multipart
    // upload. The gateway goes away after two parts: the upload is aborted, nothing is left.
    let stream = ["-O", "vmdk", "-o", "subformat=streamOptimized"];
    let (proxy, puts) = fault_proxy(&s3.endpoint, Fault::StopAfter(2));
    let cut = s3.name("cut.vmdk");
    let mut args = vec!["convert"];
    args.extend(stream);
    args.extend([r, cut.as_str()]);
    let err = s3.vdisk_fails(&[("AWS_ENDPOINT_URL", &proxy)], &args);
    assert!(
        err.contains("UploadPart") && err.contains("gave up after 5 tries"),
        "{err}"
    );
    assert!(
        puts.puts.load(Ordering::SeqCst) >= 2 + 5,
        "{} part uploads",
        puts.puts.load(Ordering::SeqCst)
    );
    assert_eq!(s3.head("cut.vmdk"), "404");
    assert_eq!(s3.uploads(), 0);
    // A dropped connection on a part's first try is retried, and the copy is whole.
    let (proxy, _) = fault_proxy(&s3.endpoint, Fault::FirstTryOfEach);
    let retried = s3.name("retried.vmdk");
    let mut args = vec!["convert"];
    args.extend(stream);
    args.extend([r, retried.as_str()]);
    ok(
        "convert through a flaky proxy",
        s3.vdisk(&[("AWS_ENDPOINT_URL", &proxy)], &args),
    );
    let back = dir.path().join("back.vmdk");
    s3.download("retried.vmdk", &back);
    assert_qemu_compare_identical(&raw, &back);
    assert_eq!(s3.uploads(), 0);
}

#[test]
fn serve_exports_an_image_in_a_bucket_that_qemu_img_reads_over_nbd() {
    let Some(s3) = s3("serve") else { return };
    let dir = tempdir();
    let src = sample_qcow2(dir.path(), 24);
    s3.upload(&src, "s.qcow2");
    let name = s3.name("s.qcow2");
    let server = Server::start_in(
        dir.path(),
        Tool::Vdisk,
        Path::new(&name),
        Via::Unix,
        &["-r"],
    );
    let out = qemu_img(["compare", src.to_str().unwrap(), &server.uri("")]);
    drop(server);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img compare over nbd", &out)
    );
}

#[test]
fn a_sequential_read_from_a_bucket_fetches_ahead_in_parallel_and_fails_clearly() {
    let Some(s3) = s3("ahead") else { return };
    let dir = tempdir();
    // 48 MiB of random data: the read-ahead pieces grow to 8 MiB within the first 8 MiB,
    // then the rest streams with several GETs in flight.
    let raw = dir.path().join("big.raw");
    std::fs::write(&raw, random_bytes(11, 48 << 20)).unwrap();
    let qcow2 = dir.path().join("big.qcow2");
    let (r, q) = (raw.to_str().unwrap(), qcow2.to_str().unwrap());
    qemu_img_ok(&["convert", "-f", "raw", "-O", "qcow2", r, q]);
    for (local, name) in [(&raw, "big.raw"), (&qcow2, "big.qcow2")] {
        s3.upload(local, name);
        let (proxy, seen) = fault_proxy(&s3.endpoint, Fault::Nothing);
        let back = dir.path().join(format!("back-{name}"));
        let out = s3.vdisk(
            &[("AWS_ENDPOINT_URL", &proxy)],
            &[
                "convert",
                "-O",
                "raw",
                &s3.name(name),
                back.to_str().unwrap(),
            ],
        );
        ok(&format!("convert {name} out of the bucket"), out);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&raw).unwrap());
        let most = seen.max_gets.load(Ordering::SeqCst);
        assert!(most >= 2, "{name}: at most {most} GET at a time");
    }
    // The gateway stops answering GETs part way (read-ahead ones included): one clear
    // error naming the GET, and no hang.
    let (proxy, _) = fault_proxy(&s3.endpoint, Fault::CutGetsAfter(6));
    let back = dir.path().join("cut.raw");
    let err = s3.vdisk_fails(
        &[("AWS_ENDPOINT_URL", &proxy)],
        &[
            "convert",
            "-O",
            "raw",
            &s3.name("big.raw"),
            back.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("GET at 0x") && err.contains("gave up"),
        "{err}"
    );
}
