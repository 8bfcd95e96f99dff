//! Where S3 requests go and who signs them, from the standard AWS environment.
//!
//! * Endpoint: `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else the profile's
//!   `endpoint_url`; with one, buckets are addressed path-style (`ENDPOINT/BUCKET/KEY`,
//!   which radosgw and MinIO need). Without one, AWS itself, virtual-hosted style
//!   (`https://BUCKET.s3.REGION.amazonaws.com/KEY`).
//! * Region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's `region`, else
//!   `us-east-1`.
//! * Credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
//!   else the profile (`AWS_PROFILE`, default `default`) in the shared credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`), else in the config file
//!   (`AWS_CONFIG_FILE`, default `~/.aws/config`, section `[profile NAME]`). Without any,
//!   requests go unsigned (public objects).
//!
//! No secret is ever put in a message: errors name the variable or file, never a value.

use rusty_s3::{Credentials, UrlStyle};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use url::Url;

/// The region when nothing names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The largest shared config or credentials file read, in bytes.
pub const MAX_PROFILE_FILE: u64 = 1 << 20;

/// How to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The service endpoint (scheme, host, port), before the bucket is added.
    pub endpoint: Url,
    /// Path-style or virtual-hosted addressing.
    pub style: UrlStyle,
    /// The signing region.
    pub region: String,
    /// The signing credentials; `None` sends unsigned requests.
    pub credentials: Option<Credentials>,
}

/// The settings of one profile (`key = value` lines of its section).
type Section = BTreeMap<String, String>;

impl S3Config {
    /// The configuration the process environment and the shared files give.
    pub fn from_env() -> io::Result<S3Config> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::resolve(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()), home)
    }

    /// The configuration `env` (variable lookup) and the files under `home` give.
    pub fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<PathBuf>,
    ) -> io::Result<S3Config> {
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let file = |var: &str, rel: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(rel)))
        };
        let creds_file = match file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") {
            Some(p) => read_section(&p, &profile)?,
            None => None,
        };
        let config_section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        let config_file = match file("AWS_CONFIG_FILE", ".aws/config") {
            Some(p) => read_section(&p, &config_section)?,
            None => None,
        };
        let from_config = |k: &str| config_file.as_ref().and_then(|s| s.get(k).cloned());
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| from_config("region"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let endpoint = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| from_config("endpoint_url"));
        let (endpoint, style) = match endpoint {
            Some(e) => (parse_endpoint(&e)?, UrlStyle::Path),
            None => (
                parse_endpoint(&format!("https://s3.{region}.amazonaws.com"))?,
                UrlStyle::VirtualHost,
            ),
        };
        let credentials = credentials_from(&env, creds_file.as_ref())
            .or_else(|| credentials_from(&|_| None, config_file.as_ref()));
        Ok(S3Config {
            endpoint,
            style,
            region,
            credentials,
        })
    }
}

/// Keys from the environment, or else from a profile section.
fn credentials_from(
    env: &dyn Fn(&str) -> Option<String>,
    section: Option<&Section>,
) -> Option<Credentials> {
    let get = |var: &str, key: &str| env(var).or_else(|| section.and_then(|s| s.get(key).cloned()));
    let id = get("AWS_ACCESS_KEY_ID", "aws_access_key_id")?;
    let secret = get("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key")?;
    Some(match get("AWS_SESSION_TOKEN", "aws_session_token") {
        Some(token) => Credentials::new_with_token(id, secret, token),
        None => Credentials::new(id, secret),
    })
}

/// An endpoint URL: http or https with a host, nothing after the authority but `/`.
fn parse_endpoint(text: &str) -> io::Result<Url> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("S3 endpoint URL: {why}"),
        )
    };
    let url = Url::parse(text).map_err(|_| bad("not a URL (expected http[s]://HOST[:PORT])"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("expected http[s]://HOST[:PORT]"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL are refused; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        ));
    }
    Ok(url)
}

/// The `[name]` section of the INI-style file at `path`; `None` when the file or the
/// section is missing.
fn read_section(path: &std::path::Path, name: &str) -> io::Result<Option<Section>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let mut text = String::new();
    file.take(MAX_PROFILE_FILE)
        .read_to_string(&mut text)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: not a readable text file", path.display()),
            )
        })?;
    Ok(parse_section(&text, name))
}

/// The `key = value` lines of section `[name]` in `text`. Comment lines (`#`, `;`) and
/// indented lines (the nested settings of `s3 =`) are skipped.
pub fn parse_section(text: &str, name: &str) -> Option<Section> {
    let mut found: Option<Section> = None;
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(head) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = head.trim() == name;
            if inside {
                found.get_or_insert_with(Section::new);
            }
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            if let Some(s) = found.as_mut() {
                s.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn an_endpoint_in_the_environment_means_path_style_and_its_keys() {
        let env = env_of(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:7480"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
        ]);
        let c = S3Config::resolve(&env, None).unwrap();
        assert_eq!(c.endpoint.as_str(), "http://127.0.0.1:7480/");
        assert!(matches!(c.style, UrlStyle::Path));
        assert_eq!(c.region, "eu-west-1");
        let creds = c.credentials.clone().unwrap();
        assert_eq!(
            (creds.key(), creds.secret(), creds.token()),
            ("AKID", "SECRET", None)
        );
        assert!(!format!("{c:?}").contains("SECRET"));
        let s3_first = env_of(&[
            ("AWS_ENDPOINT_URL", "http://a:1"),
            ("AWS_ENDPOINT_URL_S3", "https://b:2"),
        ]);
        let c = S3Config::resolve(&s3_first, None).unwrap();
        assert_eq!(c.endpoint.as_str(), "https://b:2/");
        assert!(c.credentials.is_none());
    }

    #[test]
    fn without_an_endpoint_aws_is_addressed_virtual_hosted_in_the_region() {
        let c = S3Config::resolve(&env_of(&[("AWS_REGION", "ap-south-1")]), None).unwrap();
        assert_eq!(c.endpoint.as_str(), "https://s3.ap-south-1.amazonaws.com/");
        assert!(matches!(c.style, UrlStyle::VirtualHost));
    }

    #[test]
    fn profiles_come_from_the_credentials_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            b"# keys\n[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[work]\nAWS_ACCESS_KEY_ID=W\naws_secret_access_key= WS \naws_session_token = T\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            b"[default]\nregion = us-west-2\n[profile work]\nregion = eu-north-1\nendpoint_url = http://rgw.example:8080\ns3 =\n  addressing_style = path\n",
        )
        .unwrap();
        let home = Some(dir.path().to_path_buf());
        let c = S3Config::resolve(&env_of(&[]), home.clone()).unwrap();
        let k = c.credentials.unwrap();
        assert_eq!(
            (k.key(), k.secret(), c.region.as_str()),
            ("D", "DS", "us-west-2")
        );
        let c = S3Config::resolve(&env_of(&[("AWS_PROFILE", "work")]), home.clone()).unwrap();
        let k = c.credentials.unwrap();
        assert_eq!((k.key(), k.secret(), k.token()), ("W", "WS", Some("T")));
        assert_eq!(c.region, "eu-north-1");
        assert_eq!(c.endpoint.as_str(), "http://rgw.example:8080/");
        let c = S3Config::resolve(&env_of(&[("AWS_PROFILE", "absent")]), home).unwrap();
        assert!(c.credentials.is_none());
    }

    #[test]
    fn endpoints_that_are_not_http_urls_or_carry_credentials_are_refused() {
        for bad in ["127.0.0.1:7480", "ftp://host/", "http://user:pw@host/"] {
            let e = S3Config::resolve(&env_of(&[("AWS_ENDPOINT_URL", bad)]), None).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn a_section_is_read_up_to_the_next_header() {
        let s = parse_section("[a]\nx=1\n[b]\nx=2\n; c\ny = 3\n", "b").unwrap();
        assert_eq!(s.get("x").map(String::as_str), Some("2"));
        assert_eq!(s.get("y").map(String::as_str), Some("3"));
        assert!(parse_section("[a]\nx=1\n", "b").is_none());
    }
}
