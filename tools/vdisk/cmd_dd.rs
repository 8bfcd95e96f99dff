//! `vdisk dd [-f FMT|--image-opts] [--object OBJ] [-O OUTPUT_FMT] [-U] [bs=BLOCK_SIZE]
//! [count=BLOCKS] [skip=BLOCKS]
//! if=INPUT of=OUTPUT`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags};
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
    // `--object` and `--image-opts` (the `if=` operand is then an option string).
    #[command(flatten)]
    spec: ImageSpecFlags,
    // Read the input without locking out other users of it.
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// if=INPUT of=OUTPUT [bs=BLOCK_SIZE[kKMGTP]] [count=BLOCKS] [skip=BLOCKS].
    #[arg(value_name = "OPERAND")]
    operands: Vec<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut ops = DdOperands::parse(&a.operands)?;
    if ops.input.as_deref() == Some("") {
        return Err(vdisk::Error::invalid(crate::flags::EMPTY_FILE_NAME));
    }
    let mut input_format = a.format.name().map(str::to_string);
    a.spec.object.registry()?;
    if let (Some(input), true) = (ops.input.clone(), a.spec.image_opts.on()) {
        let r = a
            .spec
            .resolve(std::path::Path::new(&input), a.format.get()?)?;
        ops.input = Some(r.path.to_string_lossy().into_owned());
        input_format = r.format.map(|f| f.name().to_string());
    }
    let how = DdFormats {
        input: input_format.as_deref(),
        output: &a.output_format,
        force_share: a.force_share.on(),
    };
    dd(&ops, &how, &mut |w| eprintln!("vdisk: {w}"))?;
    Ok(ExitCode::SUCCESS)
}
