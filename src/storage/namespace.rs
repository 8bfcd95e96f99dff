//! [`Namespace`]: where the files of an image live, by name. A format whose image is made
//! of several files (a VMDK descriptor and its extents, later a chain of backing files)
//! opens and creates them through a namespace instead of by host path, so the same code
//! runs on host files ([`HostFiles`]) and on in-memory or fault-injecting storages
//! ([`MemFiles`]) in tests.

use super::{FileStorage, MemStorage, OpenOptions, Storage};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Opens and creates the files an image is made of.
pub trait Namespace: Send + Sync {
    /// Open the existing file `path`.
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn Storage>>;

    /// Create `path` empty (an existing file is emptied), open for writing; with
    /// `unsafe_cache`, flushes do not reach stable storage (qemu-img's cache=unsafe).
    fn create(&self, path: &Path, unsafe_cache: bool) -> io::Result<Arc<dyn Storage>>;

    /// Whether two names refer to the same file.
    fn same_file(&self, a: &Path, b: &Path) -> bool;

    /// The files directly in directory `dir` (an empty path: the current directory), in
    /// name order: for formats that find a parent image by its UUID (VDI).
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The host's file system, with image locks ([`FileStorage`]); names starting with `rbd:`
/// are images on Ceph RBD instead (see [`super::rbd`]), names starting with `s3://`
/// objects in S3-compatible storage (see [`super::s3`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFiles;

impl Namespace for HostFiles {
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Arc<dyn Storage>> {
        if super::rbd::is_rbd_name(path) {
            return super::rbd::open(path, opts.write, opts.unsafe_cache);
        }
        if super::s3::is_s3_name(path) {
            return super::s3::open(path, opts.write);
        }
        Ok(Arc::new(FileStorage::open(path, opts)?))
    }

    fn create(&self, path: &Path, unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        if super::rbd::is_rbd_name(path) {
            return super::rbd::create(path, unsafe_cache);
        }
        if super::s3::is_s3_name(path) {
            return super::s3::create(path);
        }
        let mut file = FileStorage::create(path)?;
        file.set_unsafe_cache(unsafe_cache);
        Ok(Arc::new(file))
    }

    fn same_file(&self, a: &Path, b: &Path) -> bool {
        match (super::canonical_name(a), super::canonical_name(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let read = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(read)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(dir.join(entry.file_name()));
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Files held in memory, by exact name: any [`Storage`] can be put under a name (a
/// [`FaultStorage`](super::FaultStorage) for crash tests); files created through the
/// namespace are [`MemStorage`]s.
#[derive(Default)]
pub struct MemFiles {
    files: Mutex<BTreeMap<PathBuf, Arc<dyn Storage>>>,
}

impl MemFiles {
    /// An empty namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `storage` under `path`, replacing what was there.
    pub fn insert(&self, path: impl Into<PathBuf>, storage: Arc<dyn Storage>) {
        self.lock().insert(path.into(), storage);
    }

    /// The storage under `path`.
    pub fn get(&self, path: &Path) -> Option<Arc<dyn Storage>> {
        self.lock().get(path).cloned()
    }

    /// Every name, in order.
    pub fn names(&self) -> Vec<PathBuf> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Arc<dyn Storage>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Namespace for MemFiles {
    fn open(&self, path: &Path, _opts: OpenOptions) -> io::Result<Arc<dyn Storage>> {
        self.get(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file '{}' in the namespace", path.display()),
            )
        })
    }

    fn create(&self, path: &Path, _unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        self.insert(path, storage.clone());
        Ok(storage)
    }

    fn same_file(&self, a: &Path, b: &Path) -> bool {
        a == b
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .names()
            .into_iter()
            .filter(|n| n.parent().unwrap_or(Path::new("")) == dir)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_files_open_what_was_created_or_inserted_and_nothing_else() {
        let ns = MemFiles::new();
        let a = ns.create(Path::new("d/a.vmdk"), false).unwrap();
        a.write_at(b"abc", 0).unwrap();
        let again = ns
            .open(Path::new("d/a.vmdk"), OpenOptions::default())
            .unwrap();
        let mut buf = [0u8; 3];
        again.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc");
        let err = ns
            .open(Path::new("d/b.vmdk"), OpenOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(ns.same_file(Path::new("d/a.vmdk"), Path::new("d/a.vmdk")));
        assert_eq!(ns.names(), vec![PathBuf::from("d/a.vmdk")]);
    }
}
