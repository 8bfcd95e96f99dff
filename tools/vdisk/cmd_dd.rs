//! `vdisk dd [-f FMT] [-O OUTPUT_FMT] [-U] [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS]
//! if=INPUT of=OUTPUT`

use crate::flags::{ForceShareFlag, FormatFlag};
use std::process::ExitCode;
use vdisk::ops::dd::{dd, DdFormats, DdOperands};
use vdisk::Result;

/// Arguments of `dd`.
#[derive(clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    // The input's format.
    #[command(flatten)]
    format: FormatFlag,
    /// Format of the output.
    #[arg(
        short = 'O',
        long = "output-format",
        default_value = "raw",
        value_name = "FMT"
    )]
    output_format: String,
    // Read the input without locking out other users of it.
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// if=INPUT of=OUTPUT [bs=BLOCK_SIZE[kKMGTP]] [count=BLOCKS] [skip=BLOCKS].
    #[arg(value_name = "OPERAND")]
    operands: Vec<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let ops = DdOperands::parse(&a.operands)?;
    let how = DdFormats {
        input: a.format.name(),
        output: &a.output_format,
        force_share: a.force_share.on(),
    };
    dd(&ops, &how, &mut |w| eprintln!("vdisk: {w}"))?;
    Ok(ExitCode::SUCCESS)
}
