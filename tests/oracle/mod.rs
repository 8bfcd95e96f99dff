//! Shared by the model and crash tests: running `qemu-img check` on image bytes, and a
//! small deterministic random source.

#![allow(dead_code)]

use std::io::Write;
use std::process::Command;

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

/// Run `qemu-img check` on `bytes` written to a temporary file.
pub fn qemu_check(bytes: &[u8]) -> Check {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(bytes).expect("write temp image");
    f.flush().expect("flush");
    qemu_check_path(f.path())
}

/// Run `qemu-img check` on a file.
pub fn qemu_check_path(path: &std::path::Path) -> Check {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", "--output=json"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("qemu-img not found ({e}): install qemu-utils (apt-get install qemu-utils)")
        });
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

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
