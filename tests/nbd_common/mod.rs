//! The NBD test support of `tests/nbd_serve.rs`: starting and stopping a server
//! (`vdisk serve` or `qemu-nbd`) on a TCP port or Unix socket, a bare protocol client for
//! requests no real client sends, and TLS credentials made with openssl.

#![allow(dead_code)]

use crate::common::twins::Tool;
use crate::common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Unix,
}

/// A running NBD server (vdisk serve or qemu-nbd), killed when dropped.
pub struct Server {
    pub child: Option<Child>,
    pub via: Via,
    pub port: u16,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("a local address").port()
}

impl Server {
    /// Start `tool`'s server on `image` with `flags`, listening via `via`; return once it
    /// has written its pid file (it listens then).
    pub fn start(tool: Tool, image: &Path, via: Via, flags: &[&str]) -> Server {
        Server::start_in(
            image.parent().expect("an image directory"),
            tool,
            image,
            via,
            flags,
        )
    }

    /// [`Server::start`] with the socket, pid file and log in `dir` (for images that are
    /// not host files: `rbd:` and `s3://` names).
    pub fn start_in(dir: &Path, tool: Tool, image: &Path, via: Via, flags: &[&str]) -> Server {
        let program = match tool {
            Tool::Qemu => "qemu-nbd",
            Tool::Vdisk => vdisk_bin(),
        };
        let socket = dir.join("nbd.sock");
        let pid_file = dir.join("nbd.pid");
        let log = dir.join("nbd.log");
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&pid_file);
        let port = free_port();
        let mut cmd = Command::new(program);
        if tool == Tool::Vdisk {
            cmd.arg("serve");
        }
        cmd.args(flags)
            .arg(format!("--pid-file={}", pid_file.display()));
        match via {
            Via::Unix => cmd.arg(format!("--socket={}", socket.display())),
            Via::Tcp => cmd.args(["--bind=127.0.0.1", &format!("--port={port}")]),
        };
        let log_file = std::fs::File::create(&log).expect("creating the server log");
        let child = cmd
            .arg(image)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("a log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e} (install qemu-utils)"));
        let mut server = Server {
            child: Some(child),
            via,
            port,
            socket,
            pid_file,
            log,
        };
        server.wait_listening();
        server
    }

    pub fn wait_listening(&mut self) {
        let start = Instant::now();
        while !self.pid_file.exists() {
            if let Some(status) = self.child_mut().try_wait().expect("polling the server") {
                panic!("the server exited early ({status}): {}", self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the server did not start listening: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The pid file can be created before its contents are written.
        std::thread::sleep(Duration::from_millis(20));
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("a running server")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The NBD URI of export `name`.
    pub fn uri(&self, name: &str) -> String {
        match self.via {
            Via::Tcp => format!("nbd://127.0.0.1:{}/{name}", self.port),
            Via::Unix => format!("nbd+unix:///{name}?socket={}", self.socket.display()),
        }
    }

    /// `text` with this server's address replaced by `ADDRESS`, for comparing two servers.
    pub fn mask(&self, text: &str) -> String {
        text.replace(&format!("127.0.0.1:{}", self.port), "ADDRESS")
            .replace(self.socket.to_str().expect("a UTF-8 path"), "ADDRESS")
    }

    /// Send `signal`, wait for the server to exit (at most 20 s), return its exit status.
    pub fn stop_with(mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running server");
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the server") {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the server did not stop on signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop with SIGTERM and require a clean exit.
    pub fn stop(self) {
        let log = self.log.clone();
        let status = self.stop_with(libc::SIGTERM);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            status.success() || status.code().is_none(),
            "server exit {status}: {text}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A bare NBD client speaking the protocol byte by byte, for requests no real client sends.
pub struct RawClient {
    pub stream: UnixStream,
}

impl RawClient {
    /// Connect, negotiate with NBD_OPT_EXPORT_NAME (so replies stay simple), and return
    /// the client with the export's size and transmission flags.
    pub fn connect(socket: &Path) -> (RawClient, u64, u16) {
        let mut stream = UnixStream::connect(socket).expect("connecting to the server");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a read timeout");
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).expect("the greeting");
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        let mut hello = 3u32.to_be_bytes().to_vec(); // fixed newstyle, no zeroes
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        hello.extend_from_slice(&0u32.to_be_bytes()); // the empty name
        stream.write_all(&hello).expect("sending the options");
        let mut answer = [0u8; 10];
        stream
            .read_exact(&mut answer)
            .expect("the export's size and flags");
        let size = u64::from_be_bytes(answer[..8].try_into().expect("8 bytes"));
        let flags = u16::from_be_bytes([answer[8], answer[9]]);
        (RawClient { stream }, size, flags)
    }

    pub fn send(&mut self, flags: u16, kind: u16, offset: u64, length: u32, payload: &[u8]) {
        let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&0x1234u64.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&length.to_be_bytes());
        req.extend_from_slice(payload);
        // The server may have hung up already; the reply says so.
        let _ = self.stream.write_all(&req);
    }

    /// The error of the next simple reply (reading `data` bytes after a successful READ),
    /// or `None` if the server hung up.
    pub fn reply(&mut self, data: usize) -> Option<u32> {
        let mut r = [0u8; 16];
        self.stream.read_exact(&mut r).ok()?;
        assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes(), "simple reply magic");
        let errno = u32::from_be_bytes(r[4..8].try_into().expect("4 bytes"));
        if errno == 0 && data > 0 {
            let mut buf = vec![0u8; data];
            self.stream.read_exact(&mut buf).ok()?;
        }
        Some(errno)
    }
}

/// A CA and a server certificate for 127.0.0.1 made with openssl: `server/` holds
/// ca-cert.pem, server-cert.pem and server-key.pem, `client/` holds ca-cert.pem. `None`
/// (with the reason printed) when openssl is not installed.
pub fn tls_credentials(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipping the TLS test: openssl is not installed");
        return None;
    }
    let server = dir.join("server");
    let client = dir.join("client");
    for d in [&server, &client] {
        std::fs::create_dir_all(d).expect("a credentials directory");
    }
    let p = |name: &str| dir.join(name).to_str().expect("UTF-8").to_string();
    let sp = |name: &str| server.join(name).to_str().expect("UTF-8").to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing ext.cnf");
    sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        &p("ca-key.pem"),
        "-out",
        &sp("ca-cert.pem"),
        "-subj",
        "/CN=vdisk test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    sh(&[
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &sp("server-key.pem"),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=localhost",
    ]);
    sh(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &sp("ca-cert.pem"),
        "-CAkey",
        &p("ca-key.pem"),
        "-CAcreateserial",
        "-out",
        &sp("server-cert.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    std::fs::copy(server.join("ca-cert.pem"), client.join("ca-cert.pem")).expect("copying");
    Some((server, client))
}
