//! Power cuts while the key slots of a LUKS image change (amend adds a slot, then erases
//! the first) and encrypted guest data is written in place at unaligned offsets: at every
//! cut point the image passes `qemu-img check` (opened with whichever passphrase still
//! unlocks it) and at least one of the two passphrases unlocks it. An `amend --force`
//! overwrite of one active slot never disturbs another.

mod common;

use common::crash::every_cut_one;
use common::*;
use std::sync::Arc;
use vdisk::crypto::{keyring, Passphrase};
use vdisk::qcow2::{create, AmendOptions, CreateOptions, OpenOptions, Qcow2};
use vdisk::storage::{FaultStorage, MemStorage};
use vdisk::BlockDevice;

const OLD: &str = "old passphrase";
const NEW: &str = "new passphrase";

fn pass(p: &str) -> Passphrase {
    Passphrase::new(p.as_bytes().to_vec())
}

fn initial() -> Vec<u8> {
    keyring::add_secret("crash-old", pass(OLD));
    let mut o = CreateOptions {
        size: 4 << 20,
        ..Default::default()
    };
    for (k, v) in [
        ("encrypt.format", "luks"),
        ("encrypt.key-secret", "crash-old"),
        ("encrypt.iter-time", "1"),
    ] {
        o.set(k, v).unwrap();
    }
    let mut q = create(MemStorage::new(), &o).unwrap();
    q.write_at(&[0x5a; 65536], 0).unwrap();
    q.flush().unwrap();
    q.storage().to_vec()
}

/// Which passphrase unlocks `bytes`, if any; `qemu-img check` through it must be clean of
/// corruptions (leaks allowed).
fn unlocking_passphrase(bytes: &[u8], cut: u64) -> Option<&'static str> {
    let dir = tempdir();
    let p = dir.path().join("c.qcow2");
    std::fs::write(&p, bytes).unwrap();
    let spec = format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=s",
        p.display()
    );
    for phrase in [OLD, NEW] {
        let object = format!("secret,id=s,data={phrase}");
        let out = qemu_img([
            "check",
            "--output=json",
            "--object",
            &object,
            "--image-opts",
            &spec,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Invalid password") {
            continue;
        }
        let code = out.status.code().unwrap_or(-1);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            code == 0 || code == 3,
            "cut {cut}: qemu-img check: {text} {err}"
        );
        assert!(text.contains("\"check-errors\": 0"), "cut {cut}: {text}");
        return Some(phrase);
    }
    None
}

#[test]
fn a_power_cut_during_key_slot_changes_and_encrypted_writes_leaves_an_openable_image() {
    let start = initial();
    keyring::add_secret("crash-new", pass(NEW));
    let writes: [(u64, usize); 3] = [(100, 1000), (65536 + 4000, 70_000), ((3 << 20) + 7, 513)];
    let apply = |s: Arc<FaultStorage>| -> vdisk::Result<u64> {
        let mut q =
            Qcow2::open_with_key(s.clone(), OpenOptions::default(), Some(&pass(OLD)), true)?;
        let mut add = AmendOptions::default();
        for (k, v) in [
            ("encrypt.state", "active"),
            ("encrypt.new-secret", "crash-new"),
            ("encrypt.iter-time", "1"),
        ] {
            add.set(k, v)?;
        }
        q.amend(&add)?;
        let mut erase = AmendOptions::default();
        erase.set("encrypt.state", "inactive")?;
        erase.set("encrypt.keyslot", "0")?;
        q.amend(&erase)?;
        for &(o, l) in &writes {
            q.write_at(&vec![0xc3; l], o)?;
        }
        q.close()?;
        Ok(s.ops())
    };
    let mut model = vec![0u8; 4 << 20];
    model[..65536].fill(0x5a);
    for &(o, l) in &writes {
        model[o as usize..o as usize + l].fill(0xc3);
    }
    let cuts = every_cut_one(
        "key slots and encrypted writes",
        &start,
        apply,
        |cut, bytes, completed| {
            let phrase = unlocking_passphrase(bytes, cut);
            assert!(
                phrase.is_some(),
                "cut {cut}: no passphrase unlocks the image"
            );
            if completed {
                assert_eq!(phrase, Some(NEW), "cut {cut}");
                let mut q = Qcow2::open_with_key(
                    MemStorage::from_vec(bytes.to_vec()),
                    OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                    Some(&pass(NEW)),
                    true,
                )
                .unwrap();
                let mut got = vec![0u8; 4 << 20];
                q.read_at(&mut got, 0).unwrap();
                assert!(got == model, "cut {cut}: the completed run's data differs");
            }
        },
    );
    assert!(cuts > 5, "{cuts} cut points");
}

/// `amend --force` overwriting an active slot (1) while slot 0 stays: at every cut the
/// image opens with slot 0's passphrase and reads its data; once done, the third
/// passphrase opens it too.
#[test]
fn a_power_cut_while_force_overwriting_an_active_slot_never_touches_the_other_slot() {
    let third = "third passphrase";
    keyring::add_secret("crash-new", pass(NEW));
    keyring::add_secret("crash-third", pass(third));
    let mut q = Qcow2::open_with_key(
        MemStorage::from_vec(initial()),
        OpenOptions::default(),
        Some(&pass(OLD)),
        true,
    )
    .unwrap();
    let mut add = AmendOptions::default();
    for (k, v) in [
        ("encrypt.state", "active"),
        ("encrypt.new-secret", "crash-new"),
        ("encrypt.keyslot", "1"),
        ("encrypt.iter-time", "1"),
    ] {
        add.set(k, v).unwrap();
    }
    q.amend(&add).unwrap();
    q.flush().unwrap();
    let start = q.storage().to_vec();
    let apply = |s: Arc<FaultStorage>| -> vdisk::Result<u64> {
        let mut q =
            Qcow2::open_with_key(s.clone(), OpenOptions::default(), Some(&pass(OLD)), true)?;
        let mut over = AmendOptions::default();
        for (k, v) in [
            ("encrypt.state", "active"),
            ("encrypt.new-secret", "crash-third"),
            ("encrypt.keyslot", "1"),
            ("encrypt.iter-time", "1"),
        ] {
            over.set(k, v)?;
        }
        over.keyslots.force = true;
        q.amend(&over)?;
        q.close()?;
        Ok(s.ops())
    };
    let open = |bytes: &[u8], phrase: &str| {
        Qcow2::open_with_key(
            MemStorage::from_vec(bytes.to_vec()),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
            Some(&pass(phrase)),
            true,
        )
    };
    let cuts = every_cut_one(
        "forced key slot overwrite",
        &start,
        apply,
        |cut, bytes, completed| {
            let mut q = open(bytes, OLD).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let mut got = vec![0u8; 65536];
            q.read_at(&mut got, 0).unwrap();
            assert!(got.iter().all(|&b| b == 0x5a), "cut {cut}: data changed");
            if completed {
                assert!(open(bytes, third).is_ok(), "cut {cut}");
                assert!(open(bytes, NEW).is_err(), "cut {cut}");
            }
        },
    );
    assert!(cuts > 2, "{cuts} cut points");
}
