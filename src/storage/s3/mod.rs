//! Objects in S3-compatible storage (AWS S3, Ceph's RADOS gateway, MinIO), named
//! `s3://BUCKET/KEY` (see [`name`]). [`super::HostFiles`] sends such names here, so every
//! format reads from an object the way it reads from a file: `info`, `map`, `compare`,
//! `convert` and `serve -r` work on an image in a bucket without downloading it.
//!
//! * [`S3Object`] reads an existing object with ranged GETs through a bounded cache;
//! * [`S3Upload`] writes a new object as a multipart upload, in order only
//!   ([`Storage::sequential`]), completing it at [`Storage::finish`] and aborting it on
//!   any failure, so a failed conversion leaves no partial object;
//! * [`client`] signs and sends the requests, with retries; [`config`] reads the endpoint
//!   and credentials from the standard AWS environment variables and files.

pub mod client;
pub mod config;
pub mod name;
mod object;
mod single;
mod upload;

pub use name::{is_s3_name, S3Name};
pub use object::{S3Object, MIN_FETCH, READ_AHEAD_BYTES, READ_CACHE_BYTES};
pub use upload::{part_size, S3Upload, MAX_PARTS, PARTS_IN_FLIGHT, PART_SIZE};

use super::Storage;
use std::io;
use std::path::Path;
use std::sync::Arc;

fn client(path: &Path) -> io::Result<client::Client> {
    let text = path.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "S3 object name is not UTF-8")
    })?;
    let name = S3Name::parse(text)?;
    client::Client::new(&name, config::S3Config::from_env()?)
}

/// Open the object `path` names, read-only (`write` is refused: an object is replaced as
/// a whole, by writing a new one).
pub fn open(path: &Path, write: bool) -> io::Result<Arc<dyn Storage>> {
    if write {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: an S3 object opens read-only; write a new object with convert",
                path.display()
            ),
        ));
    }
    Ok(Arc::new(S3Object::open(client(path)?)?))
}

/// Start writing a new object `path` (it replaces any object of that name once complete).
pub fn create(path: &Path) -> io::Result<Arc<dyn Storage>> {
    Ok(Arc::new(S3Upload::create(client(path)?)?))
}

/// Delete the object `path` names.
pub fn remove(path: &Path) -> io::Result<()> {
    client(path)?.delete()
}

/// `s3://BUCKET/KEY` when `path` is an S3 name, for telling whether two names are one object.
pub fn identity(path: &Path) -> Option<String> {
    let text = path.to_str().filter(|_| is_s3_name(path))?;
    S3Name::parse(text).ok().map(|n| n.display())
}
