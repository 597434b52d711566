//! Test data shared by the engine, disk and tier tests.

use bytes::Bytes;

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn blob(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}
