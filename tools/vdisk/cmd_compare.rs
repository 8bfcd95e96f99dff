//! `vdisk compare` (placeholder)

use std::process::ExitCode;
use vdisk::Result;

/// Arguments of `compare`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> Result<ExitCode> {
    Ok(ExitCode::from(1))
}
