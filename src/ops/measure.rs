//! How much host space an image would need in a target format, as `qemu-img measure`
//! computes it: the *required* size for the data of an input image (or for an empty image
//! of a given size), and the *fully allocated* size with every cluster allocated. Each
//! format's driver does the arithmetic (`Driver::measure`).

use crate::error::{Error, Result};
use crate::image::Format;

pub use crate::driver::{allocated_bytes, Measurement, Source};

/// Measure `source` for a `target` image created with qemu-img style `options`.
pub fn measure(
    source: Source<'_>,
    target: Format,
    options: &[(String, String)],
) -> Result<Measurement> {
    match target.driver().measure {
        Some(measure) => measure(source, options),
        None => Err(Error::unsupported(format!("measure for {target} targets"))),
    }
}
