//! `vdisk delta [-f FMT] [-U] (--from SNAPSHOT [--to SNAPSHOT] | --bitmap NAME) [-b BACKING
//! -F FMT] [-o OPTS] IMAGE OUTPUT`, and `vdisk delta --list [--output human|json] ... IMAGE`: a changed-block
//! delta between two states of a qcow2 image, as an overlay or as a list of ranges.

use crate::flags::{ForceShareFlag, FormatFlag, OptionsFlag, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::delta::{self, Changes, Source};
use vdisk::{Error, Result};

/// Arguments of `delta`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// The old state: a snapshot ID or name.
    #[arg(long = "from", value_name = "SNAPSHOT")]
    from: Option<String>,
    /// The new state: a snapshot ID or name (default: the active disk).
    #[arg(long = "to", value_name = "SNAPSHOT")]
    to: Option<String>,
    /// The changes a persistent dirty bitmap records (to the active disk), instead of
    /// --from/--to.
    #[arg(long = "bitmap", value_name = "NAME", conflicts_with_all = ["from", "to"])]
    bitmap: Option<String>,
    /// Backing file the delta records (not opened): a copy of the old state.
    #[arg(short = 'b', long = "backing")]
    backing: Option<String>,
    /// Format of the -b backing file.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    #[command(flatten)]
    options: OptionsFlag,
    /// Print the changed ranges instead of writing a delta.
    #[arg(long = "list")]
    list: bool,
    #[command(flatten)]
    output: OutputFlag,
    /// The qcow2 image.
    image: PathBuf,
    /// The delta to write (not with --list).
    delta: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let json = a.output.wants_json("delta")?;
    let changes = match (&a.bitmap, a.from.clone()) {
        (Some(name), _) => Changes::Bitmap { name: name.clone() },
        (None, Some(from)) => Changes::Snapshots {
            from,
            to: a.to.clone(),
        },
        (None, None) => {
            return Err(Error::invalid(
                "delta needs --from SNAPSHOT (the old state) or --bitmap NAME",
            ))
        }
    };
    let source = Source {
        path: &a.image,
        format: a.format.get()?,
        force_share: a.force_share.on(),
    };
    if a.list {
        if a.delta.is_some() {
            return Err(Error::invalid(
                "--list writes no delta file: give only IMAGE",
            ));
        }
        let extents = delta::list(&source, &changes)?;
        match json {
            true => outln!("{}", delta::to_json(&extents))?,
            false => out!("{}", delta::to_human(&extents))?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(output) = &a.delta else {
        return Err(Error::invalid("Expecting two image file names"));
    };
    let mut options = a.options.pairs()?;
    // -b and -F are qemu-img's spellings of the backing_file and backing_fmt options.
    if let Some(b) = &a.backing {
        options.push(("backing_file".into(), b.clone()));
    }
    if let Some(f) = &a.backing_format {
        options.push(("backing_fmt".into(), f.clone()));
    }
    delta::write(&source, &changes, output, &options)?;
    Ok(ExitCode::SUCCESS)
}
