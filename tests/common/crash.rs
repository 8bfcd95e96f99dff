//! Power-cut testing shared by every crash test: the one cut-at-every-write loop over
//! [`FaultStorage`], `qemu-img check` as the judge of the images it leaves, and
//! [`cut_rounds`], the rounds-of-flushed-writes test of the VDI, VHD and VHDX drivers.

use super::{qemu_img, tempdir};
use std::path::Path;
use std::sync::Arc;
use vdisk::storage::{FaultStorage, MemStorage, PowerSupply, Storage};
use vdisk::Result;

/// The result of `qemu-img check --output=json`.
pub struct Check {
    /// Exit code (0 clean, 2 corruptions, 3 leaks only).
    pub code: i32,
    /// Reported corruptions.
    pub corruptions: u64,
    /// Reported leaks.
    pub leaks: u64,
    /// Raw output, for messages.
    pub output: String,
}

impl Check {
    /// No corruption (leaks allowed): what a power cut may leave behind.
    pub fn is_consistent(&self) -> bool {
        self.corruptions == 0 && (self.code == 0 || self.code == 3)
    }
}

/// Run `qemu-img check` on qcow2 `bytes` written to a temporary file.
pub fn qemu_check(bytes: &[u8]) -> Check {
    let dir = tempdir();
    let p = dir.path().join("check.qcow2");
    std::fs::write(&p, bytes).expect("write temp image");
    qemu_check_path(&p)
}

/// Run `qemu-img check` on a qcow2 file.
pub fn qemu_check_path(path: &Path) -> Check {
    let out = qemu_img([
        "check".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "--output=json".as_ref(),
        path.as_os_str(),
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let get = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Check {
        code: out.status.code().unwrap_or(-1),
        corruptions: get("corruptions"),
        leaks: get("leaks"),
        output: text,
    }
}

/// What one replay of an operation left: the cut point and the storages it ran on (in the
/// order of `initial`).
pub struct Cut<'a> {
    /// Mutating calls allowed before the power failed (the total, for the uncut run).
    pub cut: u64,
    /// Whether this is the uncut run.
    pub uncut: bool,
    /// The storages, whose `durable_image` is what a reboot finds.
    pub storages: &'a [Arc<FaultStorage>],
}

impl Cut<'_> {
    /// The durable bytes of storage `i`.
    pub fn durable(&self, i: usize) -> Vec<u8> {
        self.storages[i].durable_image()
    }
}

/// The one cut-at-every-write loop. `initial` are the starting contents of the storages an
/// operation works on (one for a single image; several for a chain or a multi-file VMDK,
/// all on one [`PowerSupply`], so the cut hits them together). `op` runs the operation on
/// fresh storages and returns what `verify` needs to know of how far it got.
///
/// The op runs once uncut to count its mutating calls, then once per cut point (every call
/// after the first `cut` fails); `verify` sees each run. Returns the number of cut points.
pub fn every_cut<T>(
    what: &str,
    initial: &[Vec<u8>],
    op: impl Fn(&[Arc<FaultStorage>]) -> T,
    verify: impl Fn(&Cut<'_>, T),
) -> u64 {
    let fresh = |cut: Option<u64>| -> (Arc<PowerSupply>, Vec<Arc<FaultStorage>>) {
        let power = PowerSupply::new(cut);
        let storages = initial
            .iter()
            .map(|bytes| Arc::new(FaultStorage::on_supply(bytes.clone(), power.clone())))
            .collect();
        (power, storages)
    };
    let (power, dry) = fresh(None);
    let result = op(&dry);
    let total = power.ops();
    let c = Cut {
        cut: total,
        uncut: true,
        storages: &dry,
    };
    verify(&c, result);
    for cut in 0..total {
        let (_, storages) = fresh(Some(cut));
        let result = op(&storages);
        let c = Cut {
            cut,
            uncut: false,
            storages: &storages,
        };
        verify(&c, result);
    }
    eprintln!("{what}: {total} cut points replayed");
    total
}

/// [`every_cut`] for an operation on one storage that reports success with the number of
/// mutating calls it had made by then (calls after that, such as the flush a dropped image
/// makes, may fail without it noticing). The uncut run must succeed, and no run may report
/// success after one of its own calls failed. `verify` gets the cut point, the durable
/// bytes and whether the operation completed.
pub fn every_cut_one(
    what: &str,
    initial: &[u8],
    op: impl Fn(Arc<FaultStorage>) -> Result<u64>,
    verify: impl Fn(u64, &[u8], bool),
) -> u64 {
    every_cut(
        what,
        &[initial.to_vec()],
        |s| op(s[0].clone()),
        |c, result| {
            match &result {
                Err(e) if c.uncut => panic!("{what}: uncut run failed: {e}"),
                Ok(acked) => assert!(
                    c.uncut || c.cut >= *acked,
                    "{what}: cut {}: a call failed but the op reported success",
                    c.cut
                ),
                Err(_) => {}
            }
            verify(c.cut, &c.durable(0), result.is_ok())
        },
    )
}

/// Rounds of guest writes `(offset, length, byte)`, each round followed by a flush.
pub type Rounds = Vec<Vec<(u64, usize, u8)>>;

/// The guest bytes after the first `n` of `rounds`, over a disk that read `base` before.
pub fn model_after(rounds: &Rounds, n: usize, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for round in &rounds[..n] {
        for &(off, len, b) in round {
            m[off as usize..off as usize + len].fill(b);
        }
    }
    m
}

/// Power cuts at every write of `rounds` written to the image `initial` (whose disk reads
/// `base`) through the device `open(storage, writing)` makes; the device is opened with
/// `writing` false to read what a cut left. Every byte must read as after the rounds
/// flushed before the cut or as after the next one; `judge(cut, bytes, read)` then checks
/// what else the test wants of the durable `bytes` (qemu-img's view, say). Returns the
/// number of cut points.
pub fn cut_rounds<D: vdisk::BlockDevice>(
    what: &str,
    initial: &[u8],
    base: &[u8],
    rounds: &Rounds,
    open: impl Fn(Arc<dyn Storage>, bool) -> Result<D>,
    judge: impl Fn(u64, &[u8], &[u8]),
) -> u64 {
    // The op count after each round's flush, from an uncut run: a cut at or past it finds
    // that round durable.
    let flushed_at = std::sync::Mutex::new(Vec::new());
    let run = |st: Arc<FaultStorage>| -> Result<u64> {
        let mut dev = open(st.clone() as Arc<dyn Storage>, true)?;
        let mut marks = Vec::new();
        for round in rounds {
            for &(off, len, b) in round {
                dev.write_at(&vec![b; len], off)?;
            }
            dev.flush()?;
            marks.push(st.ops());
        }
        *flushed_at.lock().unwrap_or_else(|e| e.into_inner()) = marks;
        Ok(st.ops())
    };
    every_cut_one(what, initial, run, |cut, bytes, done| {
        let st: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(bytes.to_vec()));
        let mut dev = open(st, false).unwrap_or_else(|e| panic!("{what}: cut {cut}: open: {e}"));
        let mut got = vec![0u8; base.len()];
        dev.read_at(&mut got, 0).expect("read");
        drop(dev);
        let durable = if done {
            rounds.len()
        } else {
            let marks = flushed_at.lock().unwrap_or_else(|e| e.into_inner());
            marks.iter().filter(|&&o| o <= cut).count()
        };
        let old = model_after(rounds, durable, base);
        let new = model_after(rounds, (durable + 1).min(rounds.len()), base);
        if let Some(i) = (0..got.len()).find(|&i| got[i] != old[i] && got[i] != new[i]) {
            panic!(
                "{what}: cut {cut}: byte {i} is {:#x}; {durable} rounds flushed (old {:#x}, new {:#x})",
                got[i], old[i], new[i]
            );
        }
        judge(cut, bytes, &got);
    })
}
