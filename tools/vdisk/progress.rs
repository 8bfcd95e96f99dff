//! The `-p` progress display, in qemu-img's format: `    (NN.NN/100%)` rewritten in place
//! on stdout with carriage returns, so scripts that parse qemu-img's progress keep working.

use std::io::Write;

/// A progress reporter that prints when enabled and does nothing otherwise.
pub struct Progress {
    enabled: bool,
    total: u64,
    last: f64,
}

impl Progress {
    /// A reporter for `total` bytes, printing only if `enabled`.
    pub fn new(enabled: bool, total: u64) -> Self {
        let p = Progress {
            enabled,
            total,
            last: 0.0,
        };
        p.print(0.0, false);
        p
    }

    fn print(&self, pct: f64, last: bool) {
        if !self.enabled {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "    ({pct:.2}/100%)\r{}", if last { "\n" } else { "" });
        let _ = out.flush();
    }

    /// Report `done` bytes of `total` (of the total given to [`Progress::new`] when that
    /// was not 0); prints when progress moved by at least one percent.
    pub fn update(&mut self, done: u64, total: u64) {
        let total = if self.total > 0 { self.total } else { total };
        if total == 0 {
            return;
        }
        let pct = (done as f64 * 100.0 / total as f64).min(100.0);
        if pct - self.last >= 1.0 {
            self.last = pct;
            self.print(pct, false);
        }
    }

    /// Print `pct` now, even when it repeats the last value (qemu-img prints each step
    /// of some operations, such as amend's, whatever it moved).
    pub fn step(&mut self, pct: f64) {
        self.last = pct;
        self.print(pct, false);
    }

    /// Print the final 100% line.
    pub fn finish(&self) {
        self.print(100.0, true);
    }

    /// Print 100%, unless the last update did, without ending the line (a message
    /// follows, then [`Progress::end`]).
    pub fn complete(&self) {
        if self.last < 100.0 {
            self.print(100.0, false);
        }
    }

    /// End the progress display with a newline, as qemu-img does after its last message.
    pub fn end(&self) {
        if self.enabled {
            println!();
        }
    }
}
