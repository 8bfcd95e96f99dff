//! Keeping an image open in a real QEMU process while a test runs vdisk and qemu-img
//! against it: [`QemuIo`] holds an image with `qemu-io` (reading commands from a pipe that
//! stays open) until dropped.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `qemu-io` process holding an image open until dropped.
pub struct QemuIo {
    child: Child,
}

impl QemuIo {
    /// Start `qemu-io ARGS... PATH` in interactive mode and wait until it holds its locks.
    pub fn hold(args: &[&str], path: &Path) -> QemuIo {
        let before = lock_count(path);
        let child = Command::new("qemu-io")
            .args(args)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running qemu-io (install qemu-utils)");
        let start = Instant::now();
        while lock_count(path) == before {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "qemu-io {args:?} never locked {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuIo { child }
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"quit\n");
        }
        drop(self.child.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many locks `/proc/locks` lists on the file at `path`.
pub fn lock_count(path: &Path) -> usize {
    let ino = std::fs::metadata(path).unwrap().ino();
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let needle = format!(":{ino} ");
    locks.lines().filter(|l| l.contains(&needle)).count()
}
