//! `dump` output against golden files in `tests/golden/`. Images are tiny (1 MiB,
//! 64 KiB clusters), made by the library with fixed snapshot times, so the output is
//! deterministic. Regenerate with `VDISK_BLESS=1 cargo test --test dump_golden`.

use std::path::PathBuf;
use vdisk::dump::{self, DumpOptions};
use vdisk::qcow2::{self, CreateOptions, SnapshotTime};
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("VDISK_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with VDISK_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "{name} differs (VDISK_BLESS=1 regenerates it)"
    );
}

/// 1 MiB, 64 KiB clusters: data, a zero cluster, a snapshot, then an overwrite.
fn image() -> MemStorage {
    let opts = CreateOptions {
        size: 1 << 20,
        ..Default::default()
    };
    let mut q = qcow2::create(MemStorage::new(), &opts).unwrap();
    q.write_at(&[0x11; 65536], 0).unwrap();
    q.write_at(&[0x22; 4096], 3 << 16).unwrap();
    q.write_zeroes(5 << 16, 65536).unwrap();
    q.snapshot_create(
        "first",
        SnapshotTime {
            sec: 1_700_000_000,
            nsec: 42,
        },
    )
    .unwrap();
    q.write_at(&[0x33; 512], 0).unwrap();
    q.flush().unwrap();
    MemStorage::from_vec(q.storage().to_vec())
}

fn render(doc: &serde_json::Value, json: bool) -> String {
    let mut out = Vec::new();
    if json {
        dump::write_json(doc, &mut out).unwrap();
    } else {
        dump::write_human(doc, &mut out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn qcow2_dump_of_every_section_matches_the_golden_files() {
    let s = image();
    let doc = qcow2::dump::document(&s, DumpOptions::all()).unwrap();
    golden("qcow2_all.txt", &render(&doc, false));
    golden("qcow2_all.json", &render(&doc, true));
}

#[test]
fn qcow2_dump_of_one_section_prints_only_that_section() {
    let s = image();
    let opts = DumpOptions {
        clusters: true,
        ..Default::default()
    };
    let doc = qcow2::dump::document(&s, opts).unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 1);
    golden("qcow2_clusters.txt", &render(&doc, false));
}
