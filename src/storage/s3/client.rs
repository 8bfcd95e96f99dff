//! [`Client`]: the S3 requests vdisk makes on one object, signed by `rusty-s3` (SigV4,
//! query-string form) and sent by `ureq` (blocking HTTP/1.1, rustls), each retried with
//! exponential backoff when the failure is transient.
//!
//! Retried: throttling (503 SlowDown, 429), other 5xx answers, a `200` CompleteMultipartUpload
//! whose body is an error, and connection failures or timeouts; at most [`MAX_ATTEMPTS`]
//! tries, waiting [`FIRST_BACKOFF`] doubled each time (capped at [`MAX_BACKOFF`], with
//! jitter). Everything else fails at once with one message naming the object, the request
//! and the server's error code. Messages never quote a URL (a signed URL carries the
//! signature and any session token) nor a credential.

use super::config::S3Config;
use super::name::S3Name;
use rusty_s3::actions::CreateMultipartUpload;
use rusty_s3::{Bucket, Credentials, S3Action};
use std::io::{self, Read};
use std::time::Duration;
use ureq::http::Response;
use url::Url;

/// Most tries of one request.
pub const MAX_ATTEMPTS: u32 = 5;
/// Wait before the second try; doubled for each later one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a signed request stays valid.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(3600);
/// Largest error or XML answer body read.
const MAX_SMALL_BODY: u64 = 1 << 20;

/// One object in one bucket, and how to reach it.
pub struct Client {
    bucket: Bucket,
    credentials: Option<Credentials>,
    agent: ureq::Agent,
    key: String,
    name: String,
}

/// A failed try: whether trying again may help, and the error to report if not.
struct Failure {
    retry: bool,
    error: io::Error,
}

enum Method {
    Get(u64, u64),
    Put,
    Post,
    Delete,
}

impl Client {
    /// A client for the object `name`, as `config` says to reach it.
    pub fn new(name: &S3Name, config: S3Config) -> io::Result<Client> {
        let bucket = Bucket::new(
            config.endpoint,
            config.style,
            name.bucket.clone(),
            config.region,
        )
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: the S3 endpoint and bucket make no valid URL",
                    name.display()
                ),
            )
        })?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            // Bodies go to the socket in 1 MiB writes (parts and whole-object PUTs).
            .output_buffer_size(1 << 20)
            .user_agent(concat!("vdisk/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            bucket,
            credentials: config.credentials,
            agent,
            key: name.key.clone(),
            name: name.display(),
        })
    }

    /// `s3://BUCKET/KEY`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's length, from a GET of its first byte (a HEAD answer has no body, so it
    /// could not say which error it is).
    pub fn length(&self) -> io::Result<u64> {
        let creds = self.credentials.as_ref();
        self.with_retries("GET", || {
            let url = self
                .bucket
                .get_object(creds, &self.key)
                .sign(SIGNATURE_LIFETIME);
            let resp = self.send(&url, Method::Get(0, 1), &[])?;
            let mut resp = self.expect(resp, "GET", &[200, 206, 416])?;
            let header = |h: &str| {
                resp.headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let len = match resp.status().as_u16() {
                // `bytes 0-0/TOTAL`; an empty object answers 416 with `bytes */0`.
                206 | 416 => {
                    header("content-range").and_then(|r| r.rsplit('/').next()?.parse().ok())
                }
                _ => header("content-length").and_then(|l| l.parse().ok()),
            };
            let _ = resp
                .body_mut()
                .with_config()
                .limit(MAX_SMALL_BODY)
                .read_to_vec();
            len.ok_or_else(|| self.permanent("GET: the answer does not give the object's length"))
        })
    }

    /// `len` bytes from `offset` (a ranged GET); the range must lie inside the object.
    /// `len` is bounded by the caller (a read-ahead piece at most).
    pub fn get_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut data = vec![0; len as usize];
        self.get_range_into(offset, &mut data)?;
        Ok(data)
    }

    /// Fill `buf` from `offset` (a ranged GET) straight from the answer's body; the range
    /// must lie inside the object.
    pub fn get_range_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let creds = self.credentials.as_ref();
        let what = format!("GET at {offset:#x}");
        let len = buf.len() as u64;
        self.with_retries(&what, || {
            let url = self
                .bucket
                .get_object(creds, &self.key)
                .sign(SIGNATURE_LIFETIME);
            let resp = self.send(&url, Method::Get(offset, len), &[])?;
            let mut resp = self.expect(resp, &what, &[200, 206])?;
            let mut body = resp.body_mut().with_config().limit(len + 1).reader();
            let short = |got: usize| {
                self.permanent(&format!(
                    "{what}: {got} bytes came back instead of {len} (did the object change?)"
                ))
            };
            let mut got = 0;
            while got < buf.len() {
                match body.read(&mut buf[got..]) {
                    Ok(0) => return Err(short(got)),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Failure {
                            retry: true,
                            error: body_error(&what, e),
                        })
                    }
                }
            }
            // A longer answer than asked for is as wrong as a shorter one.
            match body.read(&mut [0u8; 1]) {
                Ok(0) => Ok(()),
                _ => Err(short(got + 1)),
            }
        })
    }

    /// Start a multipart upload; returns its id.
    pub fn create_upload(&self) -> io::Result<String> {
        let creds = self.credentials.as_ref();
        self.with_retries("CreateMultipartUpload", || {
            let url =
                CreateMultipartUpload::new(&self.bucket, creds, &self.key).sign(SIGNATURE_LIFETIME);
            let resp = self.send(&url, Method::Post, &[])?;
            let body = self.small_body(
                self.expect(resp, "CreateMultipartUpload", &[200])?,
                "CreateMultipartUpload",
            )?;
            let parsed = CreateMultipartUpload::parse_response(&body).map_err(|_| {
                self.permanent("CreateMultipartUpload: the answer is not the XML S3 sends")
            })?;
            Ok(parsed.upload_id().to_string())
        })
    }

    /// Put the whole object in one request of `len` bytes whose body `body` yields as
    /// they are produced. Not retried: the bytes are not kept. A body that fails or ends
    /// early fails the request, and S3 keeps nothing of an incomplete PUT.
    pub fn put_stream(&self, len: u64, body: &mut dyn std::io::Read) -> io::Result<()> {
        let creds = self.credentials.as_ref();
        let url = self
            .bucket
            .put_object(creds, &self.key)
            .sign(SIGNATURE_LIFETIME);
        let sent = self
            .agent
            .put(url.as_str())
            .header("Content-Length", len.to_string())
            .send(ureq::SendBody::from_reader(body));
        let resp = sent.map_err(|e| transport("PUT", e))?;
        self.expect(resp, "PUT", &[200])
            .map(drop)
            .map_err(|f| f.error)
    }

    /// Upload part `number` (from 1) of upload `id`; returns its ETag.
    pub fn upload_part(&self, id: &str, number: u16, data: &[u8]) -> io::Result<String> {
        let creds = self.credentials.as_ref();
        let what = format!("UploadPart {number}");
        self.with_retries(&what, || {
            let url = self
                .bucket
                .upload_part(creds, &self.key, number, id)
                .sign(SIGNATURE_LIFETIME);
            let resp = self.send(&url, Method::Put, data)?;
            let resp = self.expect(resp, &what, &[200])?;
            resp.headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| self.permanent(&format!("{what}: the answer has no ETag")))
        })
    }

    /// Complete upload `id` from its parts' ETags, in part order.
    pub fn complete_upload(&self, id: &str, etags: &[String]) -> io::Result<()> {
        let creds = self.credentials.as_ref();
        let what = "CompleteMultipartUpload";
        self.with_retries(what, || {
            let action = self.bucket.complete_multipart_upload(
                creds,
                &self.key,
                id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNATURE_LIFETIME);
            let body = action.body();
            let resp = self.send(&url, Method::Post, body.as_bytes())?;
            let answer = self.small_body(self.expect(resp, what, &[200])?, what)?;
            // S3 may answer 200 and report a failure in the body, after a long wait.
            if answer.contains("<Error>") {
                let code = error_code(&answer).unwrap_or("InternalError");
                return Err(Failure {
                    retry: true,
                    error: self.error(io::ErrorKind::Other, &format!("{what}: {code}")),
                });
            }
            Ok(())
        })
    }

    /// Abort upload `id`, dropping its parts (an upload already gone is not an error).
    pub fn abort_upload(&self, id: &str) -> io::Result<()> {
        let creds = self.credentials.as_ref();
        self.with_retries("AbortMultipartUpload", || {
            let url = self
                .bucket
                .abort_multipart_upload(creds, &self.key, id)
                .sign(SIGNATURE_LIFETIME);
            let resp = self.send(&url, Method::Delete, &[])?;
            self.expect(resp, "AbortMultipartUpload", &[200, 204, 404])
                .map(drop)
        })
    }

    /// Delete the object (an object already gone is not an error).
    pub fn delete(&self) -> io::Result<()> {
        let creds = self.credentials.as_ref();
        self.with_retries("DELETE", || {
            let url = self
                .bucket
                .delete_object(creds, &self.key)
                .sign(SIGNATURE_LIFETIME);
            let resp = self.send(&url, Method::Delete, &[])?;
            self.expect(resp, "DELETE", &[200, 204, 404]).map(drop)
        })
    }

    /// Run `attempt` until it succeeds, fails for good, or [`MAX_ATTEMPTS`] tries failed.
    fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> io::Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.retry && tries < MAX_ATTEMPTS => std::thread::sleep(backoff(tries)),
                Err(f) if f.retry => {
                    return Err(io::Error::new(
                        f.error.kind(),
                        format!("{} (gave up after {tries} tries of {what})", f.error),
                    ))
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// Send one request; a transport failure (no answer) is classified here.
    fn send(
        &self,
        url: &Url,
        method: Method,
        body: &[u8],
    ) -> Result<Response<ureq::Body>, Failure> {
        let u = url.as_str();
        let sent = match method {
            Method::Get(offset, len) => {
                let last = offset + len.max(1) - 1;
                self.agent
                    .get(u)
                    .header("Range", format!("bytes={offset}-{last}"))
                    .call()
            }
            Method::Put => self.agent.put(u).send(body),
            Method::Post => self.agent.post(u).send(body),
            Method::Delete => self.agent.delete(u).call(),
        };
        sent.map_err(|e| {
            let retry = matches!(
                e,
                ureq::Error::Io(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Timeout(_)
                    | ureq::Error::Protocol(_)
            );
            Failure {
                retry,
                error: transport(method.name(), e),
            }
        })
    }

    /// The answer if its status is one of `ok`; otherwise the failure it reports.
    fn expect(
        &self,
        mut resp: Response<ureq::Body>,
        what: &str,
        ok: &[u16],
    ) -> Result<Response<ureq::Body>, Failure> {
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_SMALL_BODY)
            .read_to_string()
            .unwrap_or_default();
        let code = error_code(&body);
        let retry = status == 429 || status >= 500;
        let kind = match status {
            404 => io::ErrorKind::NotFound,
            401 | 403 => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        let error = self.error(kind, &format!("{what}: {}", explain(status, code)));
        Err(Failure { retry, error })
    }

    /// The body of a successful answer, as text.
    fn small_body(&self, mut resp: Response<ureq::Body>, what: &str) -> Result<String, Failure> {
        resp.body_mut()
            .with_config()
            .limit(MAX_SMALL_BODY)
            .read_to_string()
            .map_err(|e| Failure {
                retry: true,
                error: transport(what, e),
            })
    }

    fn error(&self, kind: io::ErrorKind, text: &str) -> io::Error {
        io::Error::new(kind, format!("S3 {text}"))
    }

    fn permanent(&self, text: &str) -> Failure {
        Failure {
            retry: false,
            error: self.error(io::ErrorKind::InvalidData, text),
        }
    }
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Get(..) => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// The wait before try `tries + 1`: doubling from [`FIRST_BACKOFF`], capped, with up to a
/// quarter of jitter so that parallel uploads do not retry in step.
pub fn backoff(tries: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base / 4 * (nanos % 1000) / 1000
}

/// A transport failure, described without the URL (which carries the signature).
/// An error while reading an answer's body: ureq's own errors come wrapped in
/// `io::Error`, and get the same words as [`transport`] gives them.
fn body_error(what: &str, e: io::Error) -> io::Error {
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<ureq::Error>()) {
        Some(Ok(u)) => transport(what, *u),
        Some(Err(other)) => io::Error::new(kind, format!("S3 {what}: connection error: {other}")),
        None => io::Error::new(kind, format!("S3 {what}: connection error ({kind})")),
    }
}

fn transport(what: &str, e: ureq::Error) -> io::Error {
    let (kind, text) = match e {
        ureq::Error::Io(e) => (e.kind(), format!("connection error: {e}")),
        ureq::Error::ConnectionFailed => (
            io::ErrorKind::ConnectionRefused,
            "could not connect to the S3 endpoint".to_string(),
        ),
        ureq::Error::HostNotFound => (
            io::ErrorKind::NotFound,
            "the S3 endpoint's host name does not resolve".to_string(),
        ),
        ureq::Error::Timeout(t) => (io::ErrorKind::TimedOut, format!("timed out ({t})")),
        ureq::Error::Tls(t) => (io::ErrorKind::Other, format!("TLS: {t}")),
        ureq::Error::Rustls(t) => (io::ErrorKind::Other, format!("TLS: {t}")),
        ureq::Error::BodyExceedsLimit(n) => (
            io::ErrorKind::InvalidData,
            format!("the answer is longer than {n} bytes"),
        ),
        ureq::Error::Protocol(_) => (
            io::ErrorKind::InvalidData,
            "the server broke the HTTP protocol".to_string(),
        ),
        _ => (io::ErrorKind::Other, "the HTTP request failed".to_string()),
    };
    io::Error::new(kind, format!("S3 {what}: {text}"))
}

/// The `<Code>` of an S3 error body, if it is a plain identifier.
pub fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    let code = &body[start..start + len];
    (!code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
    .then_some(code)
}

/// What an HTTP status and S3 error code mean to the user.
pub fn explain(status: u16, code: Option<&str>) -> String {
    let hint = match (status, code) {
        (_, Some("NoSuchKey")) | (404, None) => "no such object",
        (_, Some("NoSuchBucket")) => "no such bucket",
        (_, Some("InvalidAccessKeyId")) => {
            "the access key is not known to the server (check AWS_ACCESS_KEY_ID or the profile)"
        }
        (_, Some("SignatureDoesNotMatch")) => {
            "the request signature does not match (check AWS_SECRET_ACCESS_KEY or the profile)"
        }
        (403, _) => "access denied (check the credentials and the bucket's permissions)",
        (301 | 307, _) => "the bucket is elsewhere (check AWS_REGION or the endpoint)",
        (503, Some("SlowDown")) | (429, _) => "the server is throttling requests",
        (416, _) => "the range lies past the end of the object",
        (s, _) if s >= 500 => "server error",
        _ => "refused",
    };
    match code {
        Some(c) => format!("HTTP {status} {c}: {hint}"),
        None => format!("HTTP {status}: {hint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_code_is_read_from_an_s3_error_body_and_nothing_else() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message></Message><RequestId>tx1</RequestId></Error>";
        assert_eq!(error_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code("<Error><Code>a b<c></Code></Error>"), None);
        assert_eq!(error_code("not xml"), None);
        assert_eq!(explain(403, Some("SignatureDoesNotMatch")), "HTTP 403 SignatureDoesNotMatch: the request signature does not match (check AWS_SECRET_ACCESS_KEY or the profile)");
        assert_eq!(explain(404, None), "HTTP 404: no such object");
        assert_eq!(
            explain(503, Some("SlowDown")),
            "HTTP 503 SlowDown: the server is throttling requests"
        );
    }

    #[test]
    fn requests_are_signed_path_style_with_the_key_id_and_never_carry_the_secret() {
        let config = S3Config {
            endpoint: Url::parse("http://127.0.0.1:7480").unwrap(),
            style: rusty_s3::UrlStyle::Path,
            region: "us-east-1".into(),
            credentials: Some(Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG")),
        };
        let name = S3Name::parse("s3://vdisk-test/dir/a b+c.qcow2").unwrap();
        let c = Client::new(&name, config).unwrap();
        let url = c
            .bucket
            .get_object(c.credentials.as_ref(), &c.key)
            .sign(SIGNATURE_LIFETIME);
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert_eq!(url.path(), "/vdisk-test/dir/a%20b%2Bc.qcow2");
        let query = url.query().unwrap_or_default();
        assert!(
            query.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"),
            "{query}"
        );
        assert!(query.contains("X-Amz-Credential=AKIDEXAMPLE%2F"), "{query}");
        assert!(
            query.contains("%2Fus-east-1%2Fs3%2Faws4_request"),
            "{query}"
        );
        assert!(query.contains("X-Amz-Signature="), "{query}");
        assert!(!url.as_str().contains("wJalr"), "{url}");
        assert_eq!(c.name(), "s3://vdisk-test/dir/a b+c.qcow2");
    }

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap() {
        for (tries, base) in [
            (1u32, 100u64),
            (2, 200),
            (3, 400),
            (4, 800),
            (10, 5000),
            (60, 5000),
        ] {
            let d = backoff(tries).as_millis() as u64;
            assert!(d >= base && d <= base + base / 4, "try {tries}: {d} ms");
        }
    }
}
