//! The `-p` progress bar (indicatif), shared by long-running subcommands.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress reporter that draws a bar on stderr when enabled, and does nothing otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` bytes, shown only if `enabled`.
    pub fn new(enabled: bool, total: u64) -> Self {
        let bar = enabled.then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "    ({percent:>3}.00/100%) [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Progress { bar }
    }

    /// Report `done` of `total` bytes.
    pub fn update(&mut self, done: u64, _total: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    /// Finish the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
