//! UUIDs for image headers (VDI, VHD, VHDX): random version-4 values and their text form.

use std::io::Read;

/// A random version-4 UUID (RFC 4122 variant), from the system's random source; without
/// one, from the standard library's randomly keyed hasher over the time.
pub fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut u));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for half in u.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// A UUID as text: 8-4-4-4-12 hex digits, bytes in stored order.
pub fn to_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_version_4_and_differ() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 0b10);
    }

    #[test]
    fn text_form_groups_the_bytes_in_stored_order() {
        let u = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(to_string(&u), "01234567-89ab-cdef-0001-020304050607");
    }
}
