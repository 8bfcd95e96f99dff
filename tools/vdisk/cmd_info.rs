//! `vdisk info [-f FMT] [--output human|json] [-b|--backing-chain] FILE`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::info::{chain_info, image_info_shared, to_qemu_json};
use vdisk::Result;

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    #[command(flatten)]
    output: OutputFlag,
    /// Show every image of the backing chain.
    #[arg(short = 'b', long = "backing-chain")]
    backing_chain: bool,
    /// Never open backing files (for untrusted images). Plain `info` only names them; this
    /// makes that explicit and refuses --backing-chain.
    #[arg(long = "no-backing", conflicts_with = "backing_chain")]
    no_backing: bool,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let json = a.output.wants_json("info")?;
    let format = a.format.get_for(&a.file)?;
    let force_share = a.force_share.on();
    if !a.backing_chain || a.no_backing {
        let info = image_info_shared(&a.file, format, force_share)?;
        if json {
            outln!("{}", info.to_json())?;
        } else {
            out!("{}", info.to_human())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let infos = chain_info(&a.file, format, force_share)?;
    if json {
        outln!("{}", to_qemu_json(&infos))?;
    } else {
        let texts: Vec<String> = infos.iter().map(|i| i.to_human()).collect();
        out!("{}", texts.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}
