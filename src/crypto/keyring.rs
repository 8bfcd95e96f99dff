//! The secrets of this process and which image uses which, as QEMU's object registry
//! holds them: `--object secret,id=ID,...` adds a secret ([`add_secret`]), an image
//! specification's `encrypt.key-secret=ID` binds an image file to it ([`bind_image`]), and
//! a driver opening an encrypted image asks for its passphrase by path ([`image_secret`]);
//! `backing.encrypt.key-secret=ID` (and deeper levels) binds the secrets of an image's
//! backing chain ([`bind_backing_chain`]), handed to each backing file as the chain is
//! opened ([`pass_to_backing`]);
//! creating an image with `-o encrypt.key-secret=ID` asks by ID ([`secret`]).
//!
//! Passphrases are held as [`Passphrase`] values, wiped when replaced or when the process
//! clears them ([`clear`]).

use super::Passphrase;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct Keyring {
    secrets: BTreeMap<String, Passphrase>,
    images: BTreeMap<PathBuf, String>,
    /// The secret IDs of an image's backing levels, nearest first.
    backings: BTreeMap<PathBuf, Vec<Option<String>>>,
}

static KEYRING: Mutex<Keyring> = Mutex::new(Keyring {
    secrets: BTreeMap::new(),
    images: BTreeMap::new(),
    backings: BTreeMap::new(),
});

fn with<T>(f: impl FnOnce(&mut Keyring) -> T) -> T {
    let mut guard = KEYRING.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// The name an image file is bound under: its canonical path when it exists.
fn key_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Add (or replace) the secret `id`.
pub fn add_secret(id: &str, pass: Passphrase) {
    with(|k| k.secrets.insert(id.to_string(), pass));
}

/// The secret `id`, or qemu-img's error when there is none.
pub fn secret(id: &str) -> Result<Passphrase> {
    with(|k| k.secrets.get(id).cloned())
        .ok_or_else(|| Error::invalid(format!("No secret with id '{id}'")))
}

/// Open the image file at `path` with the secret `id` (`encrypt.key-secret=ID`).
pub fn bind_image(path: &Path, id: &str) {
    let p = key_path(path);
    with(|k| k.images.insert(p, id.to_string()));
}

/// Bind the backing chain of the image file at `path` to `ids` (nearest backing first;
/// `None` leaves a level unbound).
pub fn bind_backing_chain(path: &Path, ids: &[Option<String>]) {
    let p = key_path(path);
    with(|k| k.backings.insert(p, ids.to_vec()));
}

/// The chain of `overlay` is being opened and its backing file is `backing`: bind
/// `backing` to the overlay's first backing secret, and its own chain to the rest.
pub fn pass_to_backing(overlay: &Path, backing: &Path) {
    let (o, b) = (key_path(overlay), key_path(backing));
    with(|k| {
        let Some(ids) = k.backings.get(&o).cloned() else {
            return;
        };
        let mut rest = ids.into_iter();
        if let Some(Some(id)) = rest.next() {
            k.images.insert(b.clone(), id);
        }
        let rest: Vec<Option<String>> = rest.collect();
        if !rest.is_empty() {
            k.backings.insert(b, rest);
        }
    });
}

/// The passphrase bound to the image file at `path`: `None` when none is bound, an error
/// when the bound secret does not exist.
pub fn image_secret(path: &Path) -> Result<Option<Passphrase>> {
    let p = key_path(path);
    match with(|k| k.images.get(&p).cloned()) {
        None => Ok(None),
        Some(id) => secret(&id).map(Some),
    }
}

/// Forget every secret and binding (wiping the passphrases).
pub fn clear() {
    with(|k| {
        k.secrets.clear();
        k.images.clear();
        k.backings.clear();
    });
}
