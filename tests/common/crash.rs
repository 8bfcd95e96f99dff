//! Power-cut testing shared by every crash test: the one cut-at-every-write loop over
//! [`FaultStorage`], and `qemu-img check` as the judge of the images it leaves.

use super::{qemu_img, tempdir};
use std::path::Path;
use std::sync::Arc;
use vdisk::storage::{FaultStorage, PowerSupply};
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
