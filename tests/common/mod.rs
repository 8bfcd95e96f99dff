//! Helpers shared by the integration tests: running `qemu-img`, `qemu-io` and the built
//! `vdisk` binary, deterministic test data, raw reference files and temporary directories.
//!
//! QEMU's own tools are the oracle these tests compare vdisk against. They are required:
//! a missing binary fails the test with an install hint instead of skipping it silently.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod bitmaps;
pub mod crash;
pub mod guest_ops;
pub mod hold;
pub mod hostile;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// The arguments of `create -q -f qcow2 --object OBJECT -o OPTIONS PATH SIZE`: an
/// encrypted qcow2 image whose secret `object` defines, for qemu-img or vdisk.
pub fn encrypted_create<'a>(
    object: &'a str,
    options: &'a str,
    path: &'a str,
    size: &'a str,
) -> [&'a str; 10] {
    [
        "create", "-q", "-f", "qcow2", "--object", object, "-o", options, path, size,
    ]
}

/// `p` as `&str` (every path the tests make is UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub mod twins;

/// A fresh temporary directory, removed when dropped unless `VDISK_TEST_KEEP` is set in the
/// environment (then its path is printed and the images are left for inspection).
pub fn tempdir() -> TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("vdisk-test-")
        .tempdir()
        .expect("creating a temporary directory");
    if std::env::var_os("VDISK_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// Longest any program run by a test may take before it is killed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a single `vdisk` run may take in a test (the same bound as every other program).
pub const VDISK_TIMEOUT: Duration = RUN_TIMEOUT;

/// The one process runner of the tests: run `program` with `args`, stdin closed, and
/// collect its output. A run that takes longer than [`RUN_TIMEOUT`] is killed and fails the
/// test, so a hang is reported, not waited on. A missing program fails with an install hint.
///
/// A QEMU tool that reports an image lock held by another process is run again, up to five
/// times 20 ms apart (vdisk retries its own lock conflicts the same way): between `fork` and
/// `exec`, a child spawned by another test thread still shares the file descriptions, and so
/// the OFD locks, of images this test process has just closed.
pub fn run_program<I, A>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut out = run_once(program, &args);
    for _ in 0..5 {
        let lock_conflict = program.starts_with("qemu-")
            && String::from_utf8_lossy(&out.stderr).contains("Is another process using the image");
        if !lock_conflict {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        out = run_once(program, &args);
    }
    out
}

fn run_once(program: &str, args: &[std::ffi::OsString]) -> Output {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "{program} not found: install qemu-utils (apt-get install qemu-utils), or run .ci/run"
        ),
        Err(e) => panic!("could not run {program}: {e}"),
    };
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            break status;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} {} did not finish within {RUN_TIMEOUT:?} (killed)",
                join(args)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Run a command line given as one slice (`argv[0]` is the program) with [`run_program`].
pub fn run_argv<A: AsRef<OsStr>>(argv: &[A]) -> Output {
    let (program, args) = argv.split_first().expect("an empty command line");
    run_program(&program.as_ref().to_string_lossy(), args)
}

/// Run a command line with [`run_argv`] and require success; return stdout as text.
#[track_caller]
pub fn sh<A: AsRef<OsStr>>(argv: &[A]) -> String {
    let what = join(argv);
    ok(&what, run_argv(argv))
}

/// Run `qemu-img` with `args`. Panics with an install hint if it is not installed.
pub fn qemu_img<I, A>(args: I) -> Output
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    run_program("qemu-img", args)
}

/// Run `qemu-io` with `args`. Panics with an install hint if it is not installed.
pub fn qemu_io<I, A>(args: I) -> Output
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    run_program("qemu-io", args)
}

/// Run the `vdisk` binary built for these tests, with [`run_program`]'s timeout.
pub fn vdisk<I, A>(args: I) -> Output
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    run_program(vdisk_bin(), args)
}

/// Path of the `vdisk` binary built for these tests.
pub fn vdisk_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vdisk")
}

/// Describe a finished process for an assertion message.
pub fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panic unless the process exited with status 0; return its stdout as text.
#[track_caller]
pub fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{}", describe(what, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `qemu-img` and require success; return stdout.
#[track_caller]
pub fn qemu_img_ok<A: AsRef<OsStr>>(args: &[A]) -> String {
    let what = format!("qemu-img {}", join(args));
    ok(&what, qemu_img(args))
}

/// Run `qemu-io` and require success and no error lines; return stdout.
///
/// qemu-io exits 0 even when a command fails, so its output is searched as well.
#[track_caller]
pub fn qemu_io_ok<A: AsRef<OsStr>>(args: &[A]) -> String {
    let what = format!("qemu-io {}", join(args));
    let out = qemu_io(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let failed = !out.status.success()
        || !out.stderr.is_empty()
        || text.contains("fail")
        || text.contains("error")
        || text.contains("Pattern verification failed");
    assert!(!failed, "{}", describe(&what, &out));
    text
}

/// Run `vdisk` and require success; return stdout.
#[track_caller]
pub fn vdisk_ok<A: AsRef<OsStr>>(args: &[A]) -> String {
    let what = format!("vdisk {}", join(args));
    ok(&what, vdisk(args))
}

fn join<A: AsRef<OsStr>>(args: &[A]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stdout, stderr and exit code of a run with the tool prefixes (`qemu-img: `, `vdisk: `)
/// taken out, for comparing the two tools' answers.
pub fn answer(out: Output) -> (String, String, i32) {
    let clean = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .replace("qemu-img: ", "")
            .replace("vdisk: ", "")
    };
    (
        clean(&out.stdout),
        clean(&out.stderr),
        out.status.code().unwrap_or(-1),
    )
}

/// `qemu-img check` must report a clean image: exit 0, no leaks, no corruptions.
#[track_caller]
pub fn assert_qemu_check_clean(path: &Path) {
    let out = qemu_img([OsStr::new("check"), path.as_os_str()]);
    let what = format!("qemu-img check {}", path.display());
    assert!(out.status.success(), "{}", describe(&what, &out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("No errors were found on the image."),
        "{}",
        describe(&what, &out)
    );
    assert!(!text.contains("leaked"), "{}", describe(&what, &out));
}

/// `qemu-img compare` (strict, `-s`) must find the two images identical.
#[track_caller]
pub fn assert_qemu_compare_identical(a: &Path, b: &Path) {
    let out = qemu_img([OsStr::new("compare"), a.as_os_str(), b.as_os_str()]);
    let what = format!("qemu-img compare {} {}", a.display(), b.display());
    assert!(out.status.success(), "{}", describe(&what, &out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Images are identical."),
        "{}",
        describe(&what, &out)
    );
}

/// The first offset at which two byte slices differ, for assertion messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Panic, naming the first differing offset, unless `a == b`.
#[track_caller]
pub fn assert_bytes_eq(what: &str, a: &[u8], b: &[u8]) {
    if let Some(at) = first_difference(a, b) {
        panic!(
            "{what}: contents differ at byte {at:#x} (lengths {} and {}): {:02x?} vs {:02x?}",
            a.len(),
            b.len(),
            &a[at..(at + 16).min(a.len())],
            &b[at..(at + 16).min(b.len())]
        );
    }
}

/// The one random source of the tests: the same stream on every run for the same seed.
/// It implements [`RngCore`], so `rand::Rng`'s methods (`gen_range`, ...) work on it too.
pub struct TestRng(StdRng);

impl TestRng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.gen_range(0..n)
        }
    }

    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf)
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.0.try_fill_bytes(dest)
    }
}

/// A [`TestRng`] seeded with `seed`.
pub fn rng(seed: u64) -> TestRng {
    TestRng(StdRng::seed_from_u64(seed))
}

/// `len` pseudo-random bytes, the same for the same `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng(seed).fill_bytes(&mut v);
    v
}

/// `len` bytes of a recognisable pattern: each 8-byte word holds `tag` and its offset, so
/// a misplaced cluster shows up as a wrong offset in a hex dump.
pub fn pattern(tag: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut word = offset / 8;
    while v.len() < len + (offset % 8) as usize {
        let w = (u64::from(tag) << 40) ^ (word * 8);
        v.extend_from_slice(&w.to_be_bytes());
        word += 1;
    }
    let skip = (offset % 8) as usize;
    v[skip..skip + len].to_vec()
}

/// A run of a raw test file: data, an explicit run of zero bytes, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Random bytes.
    Data,
    /// Written zero bytes (allocated on the host).
    Zeros,
    /// Never written (a sparse hole).
    Hole,
}

/// Write a sparse raw file of `size` bytes at `path`, made of runs of random length
/// (multiples of 512, up to `max_run`) of data, zeros and holes, chosen from `seed`.
/// Returns the file's contents.
pub fn write_mixed_raw(path: &Path, size: u64, max_run: u64, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("creating a raw test file");
    file.set_len(size).expect("sizing the raw test file");
    let mut contents = vec![0u8; size as usize];
    let mut pos = 0u64;
    while pos < size {
        let len = (r.gen_range(1..=max_run / 512) * 512).min(size - pos);
        let kind = match r.gen_range(0..3) {
            0 => Run::Data,
            1 => Run::Zeros,
            _ => Run::Hole,
        };
        let range = pos as usize..(pos + len) as usize;
        match kind {
            Run::Data => {
                r.fill_bytes(&mut contents[range.clone()]);
                file.write_all_at(&contents[range], pos).expect("writing");
            }
            Run::Zeros => file.write_all_at(&contents[range], pos).expect("writing"),
            Run::Hole => {}
        }
        pos += len;
    }
    contents
}

/// Read a whole file.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `dir/name` as a `PathBuf`.
pub fn path_in(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// The guest contents of any image, as qemu-img sees them (`qemu-img convert -O raw`).
pub fn qemu_raw_contents(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.qemu.raw",
        image.file_name().unwrap_or_default().to_string_lossy()
    ));
    qemu_img_ok(&[
        OsStr::new("convert"),
        OsStr::new("-O"),
        OsStr::new("raw"),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    let data = read(&out);
    let _ = std::fs::remove_file(&out);
    data
}

/// The guest contents of any image, as vdisk sees them (`vdisk convert -O raw`).
pub fn vdisk_raw_contents(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.vdisk.raw",
        image.file_name().unwrap_or_default().to_string_lossy()
    ));
    vdisk_ok(&[
        OsStr::new("convert"),
        OsStr::new("-O"),
        OsStr::new("raw"),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    let data = read(&out);
    let _ = std::fs::remove_file(&out);
    data
}

/// The value of a `--output=json` document, parsed.
#[track_caller]
pub fn parse_json(what: &str, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: invalid JSON ({e}):\n{text}"))
}

/// Run `check` on every case, carrying on past failures, then fail once listing every case
/// that failed with its message. A matrix test then reports all its broken combinations in
/// one run instead of stopping at the first.
///
/// While a case runs, the panic hook stays quiet on this thread (the message is collected
/// and printed once at the end instead of with a backtrace per case).
#[track_caller]
pub fn run_cases<T: std::fmt::Debug>(what: &str, cases: &[T], check: impl Fn(&T)) {
    install_quiet_hook();
    let mut failures = Vec::new();
    for case in cases {
        QUIET_PANICS.with(|q| q.set(true));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(case)));
        QUIET_PANICS.with(|q| q.set(false));
        if let Err(payload) = result {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".into());
            failures.push(format!("{case:?}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every qcow2 cluster size, 512 bytes to 2 MiB.
pub const CLUSTER_SIZES: [u64; 13] = [
    512,
    1 << 10,
    2 << 10,
    4 << 10,
    8 << 10,
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
];

/// The refcount widths each compat level allows.
pub fn refcount_widths(compat: &str) -> &'static [u32] {
    match compat {
        "0.10" => &[16],
        _ => &[1, 2, 4, 8, 16, 32, 64],
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wrap the panic hook so that panics on a thread inside `run_cases` print nothing.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}

/// Panic, showing the first differing line, unless `ours == theirs`.
#[track_caller]
pub fn assert_text_eq(what: &str, ours: &str, theirs: &str) {
    if ours == theirs {
        return;
    }
    let (a, b): (Vec<_>, Vec<_>) = (ours.lines().collect(), theirs.lines().collect());
    let at = (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .unwrap_or(a.len());
    panic!(
        "{what}: output differs at line {}:\n  vdisk:    {:?}\n  qemu-img: {:?}",
        at + 1,
        a.get(at).copied().unwrap_or("<end>"),
        b.get(at).copied().unwrap_or("<end>")
    );
}

/// Write (through vdisk's library, so that a differencing image's parent is used) a run of
/// data, a whole-block zero write and a partial zero write into the image at `child`, do
/// the same to the raw file `model` with qemu-io, and check that the child then converts
/// to what the model holds.
pub fn write_child_like_model(child: &Path, model: &Path, dir: &Path) {
    let mut im =
        vdisk::image::open(child, &vdisk::image::ImageOptions::default()).expect("open child");
    let mib = 1u64 << 20;
    im.device
        .write_at(&[0xc2; 5000], mib - 1000)
        .expect("write");
    im.device
        .write_zeroes(2 * mib, mib)
        .expect("zero a whole block");
    im.device
        .write_zeroes(3 * mib + 10, 100)
        .expect("zero part of a block");
    im.device.close().expect("close");
    drop(im);
    let model_arg = model.to_str().expect("utf-8 path");
    for w in [
        "write -P 0xc2 1047576 5000",
        "write -z 2M 1M",
        "write -z 3145738 100",
    ] {
        qemu_io_ok(&["-f", "raw", "-c", w, model_arg]);
    }
    let mine = dir.join("merged.raw");
    vdisk_ok(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        child.as_os_str(),
        mine.as_os_str(),
    ]);
    assert_qemu_compare_identical(model, &mine);
}
