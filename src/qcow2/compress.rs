//! Compressed clusters: inflating what QEMU (or vdisk) deflated.

use super::header::CompressionType;
use crate::error::{Error, Result};

/// Inflate one compressed cluster from `data` into `out` (exactly one cluster).
///
/// As in QEMU, the data is complete once it fills the cluster; bytes after that (the
/// rest of the last 512-byte sector) are ignored. Anything that does not produce exactly
/// a cluster is an error naming `host`.
pub fn decompress_cluster(
    kind: CompressionType,
    data: &[u8],
    out: &mut [u8],
    host: u64,
) -> Result<()> {
    match kind {
        CompressionType::Zlib => {
            let mut d = flate2::Decompress::new(false);
            let r = d.decompress(data, out, flate2::FlushDecompress::Finish);
            match r {
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                Ok(_) => Err(Error::corrupt(
                    "compressed cluster",
                    host,
                    format!(
                        "inflates to {} bytes instead of {}",
                        d.total_out(),
                        out.len()
                    ),
                )),
                Err(e) => Err(Error::corrupt(
                    "compressed cluster",
                    host,
                    format!("bad deflate data: {e}"),
                )),
            }
        }
        CompressionType::Zstd => Err(Error::unsupported("zstd-compressed clusters")),
    }
}
