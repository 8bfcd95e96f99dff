//! `vdisk`: a qemu-img-style command-line tool over the vdisk library.
//!
//! `main` parses arguments with clap and calls one subcommand module; every subcommand
//! returns `Result<ExitCode>`, and errors are printed as one line on stderr with exit
//! code 1 (as qemu-img does). Subcommands print with `output::out!`/`outln!`, so that a
//! closed stdout pipe ends the process quietly, as in qemu-img, instead of panicking.

mod cmd_amend;
mod cmd_bench;
mod cmd_bitmap;
mod cmd_check;
mod cmd_commit;
mod cmd_compare;
mod cmd_convert;
mod cmd_create;
mod cmd_dd;
mod cmd_delta;
mod cmd_dump;
mod cmd_info;
mod cmd_map;
mod cmd_measure;
mod cmd_rebase;
mod cmd_resize;
mod cmd_serve;
mod cmd_snapshot;
mod flags;
mod output;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Disk image tool for qcow2, VMDK and raw images (qemu-img compatible).
#[derive(Parser)]
#[command(name = "vdisk", version, about, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new disk image.
    Create(cmd_create::Args),
    /// Show information about a disk image.
    Info(cmd_info::Args),
    /// Convert an image to another format (or copy it), keeping it sparse.
    Convert(cmd_convert::Args),
    /// Fold an overlay into its backing image.
    Commit(cmd_commit::Args),
    /// Change the backing file of an overlay (keeping its contents unless -u).
    Rebase(cmd_rebase::Args),
    /// Show where each guest range is stored, through the backing chain.
    Map(cmd_map::Args),
    /// List, create, apply or delete internal snapshots; prune by a retention policy.
    Snapshot(cmd_snapshot::Args),
    /// Check an image for consistency, optionally repairing it.
    Check(cmd_check::Args),
    /// Show every on-disk structure of an image with its offset and decoded values.
    Dump(cmd_dump::Args),
    /// Compare the guest contents of two images.
    Compare(cmd_compare::Args),
    /// Compute the host size an image would need.
    Measure(cmd_measure::Args),
    /// Change the virtual size of an image (grow, or shrink with --shrink).
    Resize(cmd_resize::Args),
    /// Change format options of a qcow2 image in place (compat, refcount_bits, ...).
    Amend(cmd_amend::Args),
    /// Run a simple I/O benchmark on an image (as qemu-img bench).
    Bench(cmd_bench::Args),
    /// Add, remove, clear, enable, disable or merge persistent dirty bitmaps (qcow2).
    Bitmap(cmd_bitmap::Args),
    /// Copy an image into a new one in blocks (as qemu-img dd: if=, of=, bs=, count=, skip=).
    Dd(cmd_dd::Args),
    /// Serve an image over NBD (as qemu-nbd).
    Serve(cmd_serve::Args),
    /// Write (or list) what changed between two states of a qcow2 image, as an overlay.
    Delta(cmd_delta::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if let Some(code) = flags::empty_file_name(&e) {
                eprintln!("vdisk: {}", flags::EMPTY_FILE_NAME);
                return ExitCode::from(code);
            }
            if let Some(reason) = flags::missing_operands(&e) {
                eprintln!("vdisk: {reason}");
                return ExitCode::from(1);
            }
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Create(a) => cmd_create::run(a),
        Command::Info(a) => cmd_info::run(a),
        Command::Convert(a) => cmd_convert::run(a),
        Command::Snapshot(a) => cmd_snapshot::run(a),
        Command::Commit(a) => cmd_commit::run(a),
        Command::Rebase(a) => cmd_rebase::run(a),
        Command::Map(a) => cmd_map::run(a),
        Command::Check(a) => cmd_check::run(a),
        Command::Dump(a) => cmd_dump::run(a),
        Command::Compare(a) => cmd_compare::run(a),
        Command::Measure(a) => cmd_measure::run(a),
        Command::Resize(a) => cmd_resize::run(a),
        Command::Amend(a) => cmd_amend::run(a),
        Command::Bitmap(a) => cmd_bitmap::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Dd(a) => cmd_dd::run(a),
        Command::Serve(a) => cmd_serve::run(a),
        Command::Delta(a) => cmd_delta::run(a),
    };
    match result {
        Ok(code) => code,
        // Whoever read stdout stopped (`vdisk dump ... | head`): the output was all that was
        // left to do; end quietly, as qemu-img does.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdisk: {}", output::error_text(&e));
            ExitCode::from(1)
        }
    }
}
