//! [`S3Name`]: an object in S3-compatible storage named `s3://BUCKET/KEY`.
//!
//! The bucket is what S3 allows in a bucket name (ASCII letters, digits, `.`, `-`, `_`;
//! radosgw accepts upper case and `_` from older S3 rules); the key is everything after
//! the first `/`, taken as it is (it may hold more `/`), and is sent percent-encoded.
//! Nothing secret belongs in the name: credentials come from the environment (see
//! [`super::config`]).

use std::io;
use std::path::Path;

/// The prefix that marks an S3 object name.
pub const PREFIX: &str = "s3://";

/// The longest bucket name S3 accepts.
pub const MAX_BUCKET_LEN: usize = 63;
/// The longest object key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// An object in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Name {
    /// The bucket.
    pub bucket: String,
    /// The object key inside the bucket.
    pub key: String,
}

/// Whether `path` names an S3 object (starts with `s3://`). A host directory named `s3:`
/// is reached as `./s3://...`.
pub fn is_s3_name(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .starts_with(PREFIX.as_bytes())
}

impl S3Name {
    /// Parse `s3://BUCKET/KEY`.
    pub fn parse(name: &str) -> io::Result<S3Name> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        let rest = name
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("an S3 object name starts with '{PREFIX}'")))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad(format!("S3 object name '{name}' needs s3://BUCKET/KEY")))?;
        if bucket.len() < 3 || bucket.len() > MAX_BUCKET_LEN {
            return Err(bad(format!(
                "S3 bucket name '{bucket}' must be 3 to {MAX_BUCKET_LEN} characters long"
            )));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !bucket.chars().all(allowed) {
            return Err(bad(format!(
                "S3 bucket name '{bucket}' may hold only letters, digits, '.', '-' and '_'"
            )));
        }
        if key.is_empty() {
            return Err(bad(format!("S3 object name '{name}' has an empty key")));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(bad(format!(
                "S3 object key is longer than {MAX_KEY_LEN} bytes"
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(bad(format!(
                "S3 object key in '{}' holds a control character",
                name.escape_debug()
            )));
        }
        Ok(S3Name {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The name back as `s3://BUCKET/KEY`.
    pub fn display(&self) -> String {
        format!("{PREFIX}{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_splits_at_the_first_slash_and_keeps_the_rest_of_the_key() {
        let n = S3Name::parse("s3://vdisk-test/images/2024/disk.qcow2").unwrap();
        assert_eq!(n.bucket, "vdisk-test");
        assert_eq!(n.key, "images/2024/disk.qcow2");
        assert_eq!(n.display(), "s3://vdisk-test/images/2024/disk.qcow2");
        let odd = S3Name::parse("s3://Old_Bucket.1/a b+c=d?e").unwrap();
        assert_eq!(odd.key, "a b+c=d?e");
    }

    #[test]
    fn names_without_bucket_key_or_with_bad_characters_are_refused() {
        for bad in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3://ab/key",
            "s3://bu cket/key",
            "s3://bucket/ke\ny",
            "rbd:pool/image",
        ] {
            let e = S3Name::parse(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        let long = format!("s3://{}/k", "b".repeat(MAX_BUCKET_LEN + 1));
        assert!(S3Name::parse(&long).is_err());
        let long = format!("s3://bucket/{}", "k".repeat(MAX_KEY_LEN + 1));
        assert!(S3Name::parse(&long).is_err());
    }

    #[test]
    fn only_the_s3_scheme_is_an_s3_name() {
        assert!(is_s3_name(Path::new("s3://b/k")));
        assert!(!is_s3_name(Path::new("./s3://b/k")));
        assert!(!is_s3_name(Path::new("s3:/b/k")));
        assert!(!is_s3_name(Path::new("S3://b/k")));
    }
}
