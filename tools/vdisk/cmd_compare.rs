//! `vdisk compare [-f FMT] [-F FMT] [-s] [-p] [-q] A B`
//!
//! Exit codes as qemu-img's: 0 identical, 1 different, 2 error.

use crate::flags::{ForceShareFlag, ImageSpecFlags, ProgressFlag, QuietFlag};
use crate::output::out;
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::compare::compare_files;
use vdisk::Result;

/// Arguments of `compare`.
#[derive(clap::Args)]
pub struct Args {
    // -f/-F are this command's own: the formats of the two images (--a-format and
    // --b-format in qemu-img), not the shared -f/--format.
    /// Format of the first image (probed when absent).
    #[arg(short = 'f', long = "a-format")]
    format_a: Option<String>,
    /// Format of the second image (probed when absent).
    #[arg(short = 'F', long = "b-format")]
    format_b: Option<String>,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Strict: sizes and allocation status must match too.
    #[arg(short = 's', long = "strict")]
    strict: bool,
    #[command(flatten)]
    progress: ProgressFlag,
    // Quiet: print nothing, only set the exit code.
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// First image.
    a: PathBuf,
    /// Second image.
    b: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    // As qemu-img: an unknown format fails the open, with the exit code of every failed
    // open.
    for (file, name) in [(&a.a, &a.format_a), (&a.b, &a.format_b)] {
        if let Some(n) = name.as_deref() {
            if n.parse::<vdisk::image::Format>().is_err() {
                let file = file.display();
                eprintln!("vdisk: Could not open '{file}': Unknown driver '{n}'");
                return Ok(ExitCode::from(2));
            }
        }
    }
    a.spec.resolve_named(&mut a.a, &mut a.format_a)?;
    a.spec.resolve_named(&mut a.b, &mut a.format_b)?;
    // As qemu-img: the bar starts once both images are open (the first progress call),
    // reaches 100% only when they are identical, and a newline follows the last message.
    let enabled = a.progress.on() && !a.quiet.on();
    let mut bar = None;
    let result = (|| {
        let format_a = a.format_a.as_deref().map(str::parse).transpose()?;
        let format_b = a.format_b.as_deref().map(str::parse).transpose()?;
        compare_files(
            (&a.a, format_a),
            (&a.b, format_b),
            a.strict,
            a.force_share.on(),
            &mut |d, t| {
                bar.get_or_insert_with(|| Progress::new(enabled, 0))
                    .update(d, t)
            },
        )
    })();
    match result {
        Ok(c) => {
            let bar = bar.unwrap_or_else(|| Progress::new(false, 0));
            if c.is_identical() {
                bar.complete();
            }
            if !a.quiet.on() {
                out!("{}", c.message())?;
            }
            bar.end();
            Ok(ExitCode::from(if c.is_identical() { 0 } else { 1 }))
        }
        Err(e) => {
            eprintln!("vdisk: {}", crate::output::error_text(&e));
            Ok(ExitCode::from(2))
        }
    }
}
