//! Internal snapshots: interop with qemu-img in both directions, a randomized test against
//! a model of every snapshot's contents, power cuts at every write of create/apply/delete,
//! and hostile snapshot tables.

mod common;

use common::crash::{every_cut, qemu_check, qemu_check_path};
use common::rng;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use vdisk::qcow2::header::field;
use vdisk::qcow2::{self, CreateOptions, OpenOptions, Qcow2, SnapshotTime};
use vdisk::storage::{FileStorage, MemStorage, OpenOptions as FileOptions, Storage};
use vdisk::BlockDevice;

fn qemu(args: &[&str]) -> std::process::Output {
    let out = common::run_argv(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn t() -> SnapshotTime {
    SnapshotTime {
        sec: 1_700_000_000,
        nsec: 5,
    }
}

fn open_file(p: &std::path::Path) -> Qcow2<FileStorage> {
    let s = FileStorage::open(
        p,
        FileOptions {
            write: true,
            unsafe_cache: false,
            force_share: false,
        },
    )
    .expect("open file");
    Qcow2::open(s, OpenOptions::default()).expect("open qcow2")
}

#[test]
fn snapshots_vdisk_creates_are_listed_and_applied_by_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.qcow2");
    let ps = p.to_str().unwrap();
    qemu(&[
        "qemu-img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        ps,
        "8M",
    ]);
    qemu(&["qemu-io", "-c", "write -P 0x11 0 3M", ps]);
    {
        let mut img = open_file(&p);
        img.snapshot_create("base", t()).unwrap();
        img.write_at(&vec![0x22; 1 << 20], 1 << 20).unwrap();
        img.snapshot_create("second", t()).unwrap();
        img.write_zeroes(0, 512 << 10).unwrap();
        img.flush().unwrap();
    }
    assert_eq!(qemu_check_path(&p).code, 0);
    let list = String::from_utf8(qemu(&["qemu-img", "snapshot", "-l", ps]).stdout).unwrap();
    assert!(list.contains("base") && list.contains("second"), "{list}");
    qemu(&["qemu-img", "snapshot", "-a", "base", ps]);
    qemu(&["qemu-io", "-c", "read -P 0x11 0 3M", ps]);
    qemu(&["qemu-img", "snapshot", "-a", "second", ps]);
    qemu(&[
        "qemu-io",
        "-c",
        "read -P 0x11 0 1M",
        "-c",
        "read -P 0x22 1M 1M",
        "-c",
        "read -P 0x11 2M 1M",
        ps,
    ]);
    qemu(&["qemu-img", "snapshot", "-d", "base", ps]);
    assert_eq!(qemu_check_path(&p).code, 0);
}

#[test]
fn snapshots_qemu_img_creates_are_applied_and_deleted_by_vdisk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.qcow2");
    let ps = p.to_str().unwrap();
    qemu(&[
        "qemu-img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        ps,
        "4M",
    ]);
    qemu(&["qemu-io", "-c", "write -P 0x33 0 2M", ps]);
    qemu(&["qemu-img", "snapshot", "-c", "q1", ps]);
    qemu(&["qemu-io", "-c", "write -P 0x44 512k 1M", ps]);
    qemu(&["qemu-img", "snapshot", "-c", "q2", ps]);
    qemu(&["qemu-io", "-c", "write -P 0x55 0 64k", ps]);
    let mut img = open_file(&p);
    assert_eq!(img.snapshots().len(), 2);
    img.snapshot_apply("q1").unwrap();
    let mut buf = vec![0u8; 2 << 20];
    img.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x33));
    img.snapshot_delete(&["q1"]).unwrap();
    img.snapshot_apply("2").unwrap(); // by ID
    img.read_at(&mut buf, 0).unwrap();
    assert!(buf[..512 << 10].iter().all(|&b| b == 0x33));
    assert!(buf[512 << 10..(1536 << 10)].iter().all(|&b| b == 0x44));
    img.write_at(&[9u8; 100], 5000).unwrap();
    img.snapshot_delete(&["q2"]).unwrap();
    drop(img);
    assert_eq!(qemu_check_path(&p).code, 0);
    qemu(&[
        "qemu-io",
        "-c",
        "read -P 0x44 512k 4k",
        "-c",
        "read -P 9 5000 100",
        ps,
    ]);
}

enum Step {
    Write(u64, Vec<u8>),
    Create(String),
    Apply(String),
    Delete(Vec<String>),
}

#[derive(Clone, PartialEq)]
struct State {
    active: Vec<u8>,
    snaps: BTreeMap<String, Vec<u8>>,
}

fn apply_step(st: &mut State, step: &Step) {
    match step {
        Step::Write(off, d) => st.active[*off as usize..*off as usize + d.len()].copy_from_slice(d),
        Step::Create(n) => {
            st.snaps.insert(n.clone(), st.active.clone());
        }
        Step::Apply(n) => st.active = st.snaps[n].clone(),
        Step::Delete(ns) => {
            for n in ns {
                st.snaps.remove(n);
            }
        }
    }
}

fn random_steps(seed: u64, size: u64, count: usize) -> Vec<Step> {
    let mut rng = rng(seed);
    let mut names: Vec<String> = Vec::new();
    let mut next = 0;
    let mut steps = Vec::new();
    for _ in 0..count {
        let r = rng.below(10);
        if r < 5 || (names.is_empty() && r < 8) {
            let off = rng.below(size - 1);
            let len = (1 + rng.below(20000)).min(size - off);
            let mut d = vec![0u8; len as usize];
            rng.fill(&mut d);
            steps.push(Step::Write(off, d));
        } else if r < 7 || names.is_empty() {
            let n = format!("s{next}");
            next += 1;
            names.push(n.clone());
            steps.push(Step::Create(n));
        } else if r < 9 {
            let n = names[rng.below(names.len() as u64) as usize].clone();
            steps.push(Step::Apply(n));
        } else {
            let mut doomed = vec![names.remove(rng.below(names.len() as u64) as usize)];
            if !names.is_empty() && rng.below(3) == 0 {
                doomed.push(names.remove(0));
            }
            steps.push(Step::Delete(doomed));
        }
    }
    steps
}

fn run_step<S: Storage>(img: &mut Qcow2<S>, step: &Step) -> vdisk::Result<()> {
    match step {
        Step::Write(off, d) => {
            img.write_at(d, *off)?;
            img.flush()
        }
        Step::Create(n) => img.snapshot_create(n, t()),
        Step::Apply(n) => img.snapshot_apply(n),
        Step::Delete(ns) => {
            let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
            img.snapshot_delete(&refs)
        }
    }
}

/// Read the active disk and every snapshot's contents out of an image.
fn read_state(bytes: &[u8]) -> State {
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let mut img = Qcow2::open(MemStorage::from_vec(bytes.to_vec()), ro).expect("open");
    let mut active = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut active, 0).expect("read active");
    let names: Vec<String> = img.snapshots().iter().map(|s| s.name.clone()).collect();
    drop(img);
    let mut snaps = BTreeMap::new();
    for n in names {
        let mut img = Qcow2::open(MemStorage::from_vec(bytes.to_vec()), OpenOptions::default())
            .expect("open rw");
        img.snapshot_apply(&n).expect("apply for reading");
        let mut c = vec![0u8; img.virtual_size() as usize];
        img.read_at(&mut c, 0).expect("read snapshot");
        snaps.insert(n, c);
    }
    State { active, snaps }
}

fn new_image(cluster_size: u64, size: u64, version: u32) -> Vec<u8> {
    let s = Arc::new(MemStorage::new());
    let o = CreateOptions {
        size,
        cluster_size,
        version,
        ..Default::default()
    };
    drop(qcow2::create(s.clone(), &o).unwrap());
    s.to_vec()
}

#[test]
fn random_snapshot_sequences_match_the_model() {
    for (seed, cs, version) in [(21u64, 4096u64, 3u32), (22, 512, 3), (23, 65536, 2)] {
        let size = 2 << 20;
        let s = Arc::new(MemStorage::from_vec(new_image(cs, size, version)));
        let mut img = Qcow2::open(s.clone(), OpenOptions::default()).unwrap();
        let mut st = State {
            active: vec![0; size as usize],
            snaps: BTreeMap::new(),
        };
        for (i, step) in random_steps(seed, size, 150).iter().enumerate() {
            run_step(&mut img, step).unwrap_or_else(|e| panic!("seed {seed} step {i}: {e}"));
            apply_step(&mut st, step);
        }
        img.flush().unwrap();
        drop(img);
        let bytes = s.to_vec();
        let got = read_state(&bytes);
        assert!(got.active == st.active, "seed {seed}: active disk differs");
        assert_eq!(
            got.snaps.keys().collect::<Vec<_>>(),
            st.snaps.keys().collect::<Vec<_>>()
        );
        for (n, c) in &st.snaps {
            assert!(&got.snaps[n] == c, "seed {seed}: snapshot {n} differs");
        }
        let check = qemu_check(&bytes);
        assert_eq!(check.code, 0, "seed {seed}: {}", check.output);
    }
}

#[test]
fn a_power_cut_in_snapshot_create_apply_or_delete_leaves_the_old_or_the_new_state() {
    let size = 1 << 20;
    let steps = vec![
        Step::Write(0, vec![1; 300_000]),
        Step::Create("a".into()),
        Step::Write(100_000, vec![2; 200_000]),
        Step::Create("b".into()),
        Step::Write(250_000, vec![3; 100_000]),
        Step::Apply("a".into()),
        Step::Write(10_000, vec![4; 5000]),
        Step::Delete(vec!["a".into()]),
        Step::Apply("b".into()),
        Step::Delete(vec!["b".into()]),
    ];
    let initial = new_image(4096, size, 3);
    let mut states = vec![State {
        active: vec![0; size as usize],
        snaps: BTreeMap::new(),
    }];
    for s in &steps {
        let mut n = states.last().unwrap().clone();
        apply_step(&mut n, s);
        states.push(n);
    }
    every_cut(
        "snapshot steps",
        &[initial],
        |st| {
            let mut done = 0;
            if let Ok(mut img) = Qcow2::open(st[0].clone(), OpenOptions::default()) {
                for s in &steps {
                    if run_step(&mut img, s).is_err() {
                        break;
                    }
                    done += 1;
                }
            }
            done
        },
        |c, done| {
            if c.uncut {
                assert_eq!(done, steps.len(), "the uncut run did not finish");
            }
            let durable = c.durable(0);
            let cut = c.cut;
            let check = qemu_check(&durable);
            assert!(
                check.corruptions == 0 && (check.code == 0 || check.code == 3),
                "cut {cut}: {}",
                check.output
            );
            let got = read_state(&durable);
            let old = &states[done];
            let new = &states[(done + 1).min(steps.len())];
            let snaps_ok = got.snaps == old.snaps || got.snaps == new.snaps;
            assert!(
                snaps_ok,
                "cut {cut} (after step {done}): snapshot set is a mix"
            );
            if matches!(steps.get(done), Some(Step::Write(..))) {
                for (i, &b) in got.active.iter().enumerate() {
                    assert!(
                        b == old.active[i] || b == new.active[i],
                        "cut {cut}: byte {i}"
                    );
                }
            } else {
                assert!(
                    got.active == old.active || got.active == new.active,
                    "cut {cut}: active disk is a mix"
                );
            }
        },
    );
}

#[test]
fn hostile_snapshot_tables_give_errors_not_panics() {
    let base = {
        let s = Arc::new(MemStorage::from_vec(new_image(4096, 1 << 20, 3)));
        let mut img = Qcow2::open(s.clone(), OpenOptions::default()).unwrap();
        img.write_at(&[7; 4096], 0).unwrap();
        img.snapshot_create("x", t()).unwrap();
        drop(img);
        s.to_vec()
    };
    let table = field::SNAPSHOTS_OFFSET.get(&base) as usize;
    let poke = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        Qcow2::open(
            MemStorage::from_vec(b),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .err()
    };
    type Poke = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Poke)> = vec![
        (
            "count over the limit",
            Box::new(|b| field::NB_SNAPSHOTS.put(b, 70000)),
        ),
        (
            "count past the file",
            Box::new(|b| field::NB_SNAPSHOTS.put(b, 60000)),
        ),
        (
            "unaligned table",
            Box::new(|b| field::SNAPSHOTS_OFFSET.put(b, 0x10010)),
        ),
        (
            "table past end of file",
            Box::new(|b| field::SNAPSHOTS_OFFSET.put(b, 0x7fff_0000)),
        ),
        (
            "huge extra data",
            Box::new(move |b| {
                b[table + 36..table + 40].copy_from_slice(&0xffff_fff0u32.to_be_bytes())
            }),
        ),
    ];
    for (name, f) in cases {
        let err = poke(&*f).unwrap_or_else(|| panic!("{name}: opened without error"));
        let msg = err.to_string();
        assert!(
            msg.contains("snapshot"),
            "{name}: error does not name the snapshot table: {msg}"
        );
    }
    // One bad entry leaves the image usable (as in QEMU); only that snapshot is refused.
    let entry_cases: Vec<(&str, Poke)> = vec![
        (
            "unaligned snapshot L1",
            Box::new(move |b| b[table..table + 8].copy_from_slice(&0x1234u64.to_be_bytes())),
        ),
        (
            "huge snapshot L1",
            Box::new(move |b| {
                b[table + 8..table + 12].copy_from_slice(&0x0fff_ffffu32.to_be_bytes())
            }),
        ),
        (
            "snapshot L1 past the file",
            Box::new(move |b| b[table..table + 8].copy_from_slice(&0x1_0000_0000u64.to_be_bytes())),
        ),
    ];
    for (name, f) in entry_cases {
        let mut b = base.clone();
        f(&mut b);
        let mut img = Qcow2::open(MemStorage::from_vec(b), OpenOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut buf = vec![0u8; 4096];
        img.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, vec![7u8; 4096], "{name}");
        for err in [
            img.snapshot_apply("x").unwrap_err(),
            img.snapshot_delete(&["x"]).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(msg.contains("snapshot 1 (x)"), "{name}: {msg}");
        }
    }
}

/// Run QEMU's monitor commands against an image (paused guest, no devices but the disk) and
/// return what the monitor printed.
fn qemu_monitor(image: &std::path::Path, commands: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-display", "none", "-m", "32", "-S", "-monitor", "stdio", "-drive"])
        .arg(format!("file={},format=qcow2,if=ide", image.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "qemu-system-x86_64 not found ({e}): add bookworm-backports to the Debian sources and run \
                 apt-get install -t bookworm-backports qemu-system-x86 (see .ci/run)"
            )
        });
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for c in commands {
            writeln!(stdin, "{c}").unwrap();
        }
        writeln!(stdin, "quit").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn vm_state_saved_by_qemu_survives_vdisk_snapshot_operations() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vm.qcow2");
    let ps = p.to_str().unwrap();
    qemu(&["qemu-img", "create", "-q", "-f", "qcow2", ps, "64M"]);
    qemu(&["qemu-io", "-c", "write -P 0x61 0 1M", ps]);
    qemu_monitor(&p, &["savevm withstate"]);
    let before = String::from_utf8(qemu(&["qemu-img", "snapshot", "-l", ps]).stdout).unwrap();
    assert!(
        before.contains("withstate") && !before.contains("   0 B"),
        "QEMU saved no VM state: {before}"
    );
    {
        let mut img = open_file(&p);
        assert!(img.snapshots()[0].vm_state_size() > 0);
        img.write_at(&[0x62; 4096], 0).unwrap();
        img.snapshot_create("second", t()).unwrap();
        img.snapshot_apply("withstate").unwrap();
        img.snapshot_delete(&["second"]).unwrap();
    }
    assert_eq!(qemu_check_path(&p).code, 0);
    // vdisk lists the snapshot exactly as qemu-img does, VM state size included.
    let ours = common::vdisk(["snapshot", "-l", ps]);
    let theirs = qemu(&["qemu-img", "snapshot", "-l", ps]);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout)
    );
    // QEMU can still load the VM state and the disk contents are the snapshot's.
    let log = qemu_monitor(&p, &["loadvm withstate", "info status"]);
    assert!(
        !log.to_lowercase().contains("error"),
        "loadvm failed: {log}"
    );
    qemu(&["qemu-io", "-c", "read -P 0x61 0 1M", ps]);
}

#[test]
fn prune_keeps_the_newest_snapshots_and_deletes_the_rest_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.qcow2");
    let ps = p.to_str().unwrap();
    qemu(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        ps,
        "8M",
    ]);
    {
        let mut img = open_file(&p);
        // Five snapshots a day apart, each with its own data; the newest is "now".
        let now = SnapshotTime::now().sec;
        for k in 0..5u32 {
            img.write_at(&vec![k as u8 + 1; 256 << 10], u64::from(k) << 20)
                .unwrap();
            let time = SnapshotTime {
                sec: now - (4 - k) * 86_400,
                nsec: 0,
            };
            img.snapshot_create(&format!("day{k}"), time).unwrap();
        }
    }
    let vd = |args: &[&str]| common::vdisk(args);
    // A dry run changes nothing.
    let dry = vd(&["snapshot", "--prune", "--keep-last", "2", "--dry-run", ps]);
    assert!(dry.status.success());
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("would delete snapshot 1 (day0)")
            && text.contains("would delete 3 snapshot(s)"),
        "{text}"
    );
    assert_eq!(open_file(&p).snapshots().len(), 5);
    // Keep the last two, and anything younger than 36 hours (day3, day4 anyway).
    let out = vd(&[
        "snapshot",
        "--prune",
        "--keep-last",
        "1",
        "--keep-within",
        "36h",
        ps,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deleted snapshot 1 (day0)"), "{text}");
    let first = text.find("day0").unwrap();
    let last = text.find("day2").unwrap();
    assert!(first < last, "oldest first: {text}");
    assert!(text.contains("space given back"), "{text}");
    let names: Vec<String> = open_file(&p)
        .snapshots()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["day3", "day4"]);
    assert_eq!(qemu_check_path(&p).code, 0);
    // The kept snapshots still hold their data.
    qemu(&["qemu-img", "snapshot", "-a", "day3", ps]);
    qemu(&[
        "qemu-io",
        "-c",
        "read -P 4 3M 256k",
        "-c",
        "read -P 0 5M 4k",
        ps,
    ]);
}
