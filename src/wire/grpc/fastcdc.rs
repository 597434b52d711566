//! FastCDC 2020 content-defined chunking, as REAPI's `FastCdc2020Params` defines it.
//!
//! The algorithm of Xia et al. (2020): a Gear rolling hash advanced two bytes per step (the
//! "rolling two bytes" optimisation, with a left-shifted table for the even byte), no cut
//! before the minimum size, a stricter mask (more bits) before the average size and a looser
//! one after it (normalization level 2), and a cut at the maximum size at the latest.
//!
//! REAPI fixes the details so clients and servers cut alike: `GEAR[i]` is the high 64 bits
//! (big-endian) of the MD5 of 64 bytes of value `i` (the C reference's table); the seed is
//! XORed into every Gear entry (and, shifted left one bit, into the shifted table); the masks
//! are the C reference's, chosen by the rounded base-2 logarithm of the average; the minimum and
//! maximum sizes are a quarter and four times the average. The test vectors REAPI publishes are
//! checked in `tests/fastcdc.rs`.

use std::sync::OnceLock;

use md5::{Digest as _, Md5};

/// The average chunk size this server announces and cuts with (REAPI's recommended value).
pub const AVERAGE_CHUNK_SIZE: usize = 512 << 10;
/// The seed this server announces and cuts with (REAPI's recommended value).
pub const SEED: u32 = 0;

/// Normalization level 2: the masks before and after the average differ by two bits each way.
const NORMALIZATION: u32 = 2;

/// Boundary masks by number of bits (indices 0 to 5 are unused), from the C reference; their
/// one bits are spread over the word, which the paper finds dedups slightly better.
const MASKS: [u64; 26] = [
    0,
    0,
    0,
    0,
    0,
    0x0000_0000_0180_4110,
    0x0000_0000_0180_3110,
    0x0000_0000_1803_5100,
    0x0000_0018_0003_5300,
    0x0000_0190_0035_3000,
    0x0000_5900_0353_0000,
    0x0000_d900_0353_0000,
    0x0000_d901_0353_0000,
    0x0000_d903_0353_0000,
    0x0000_d903_1353_0000,
    0x0000_d90f_0353_0000,
    0x0000_d903_0353_7000,
    0x0000_d907_0353_7000,
    0x0000_d907_0753_7000,
    0x0000_d917_0753_7000,
    0x0000_d917_4753_7000,
    0x0000_d917_6753_7000,
    0x0000_d937_6753_7000,
    0x0000_d937_7753_7000,
    0x0000_d937_7757_7000,
    0x0000_db37_7757_7000,
];

/// The unseeded Gear table.
fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        std::array::from_fn(|i| {
            let md5 = Md5::digest([i as u8; 64]);
            u64::from_be_bytes(md5[..8].try_into().expect("8 bytes"))
        })
    })
}

/// A FastCDC 2020 chunker with fixed sizes and seed.
pub struct FastCdc {
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    mask_s: u64,
    mask_l: u64,
    gear: [u64; 256],
    gear_ls: [u64; 256],
}

impl FastCdc {
    /// The chunker REAPI's parameters describe: minimum a quarter, maximum four times
    /// `avg_size`. `avg_size` must be within REAPI's 1 KiB to 1 MiB.
    pub fn from_average(avg_size: usize, seed: u32) -> FastCdc {
        FastCdc::new(avg_size / 4, avg_size, avg_size * 4, seed)
    }

    /// The chunker this server splits with.
    pub fn announced() -> FastCdc {
        FastCdc::from_average(AVERAGE_CHUNK_SIZE, SEED)
    }

    /// A chunker with explicit sizes (the published test vectors use a maximum that is not
    /// four times the average).
    pub fn new(min_size: usize, avg_size: usize, max_size: usize, seed: u32) -> FastCdc {
        assert!(
            (64..=4 << 20).contains(&avg_size) && min_size <= avg_size && avg_size <= max_size,
            "FastCDC sizes {min_size}/{avg_size}/{max_size} are out of range"
        );
        let bits = (avg_size as f64).log2().round() as u32;
        let seed = u64::from(seed);
        FastCdc {
            min_size,
            avg_size,
            max_size,
            mask_s: MASKS[(bits + NORMALIZATION) as usize],
            mask_l: MASKS[(bits - NORMALIZATION) as usize],
            gear: gear().map(|g| g ^ seed),
            gear_ls: gear().map(|g| (g << 1) ^ (seed << 1)),
        }
    }

    /// The largest chunk: `cut` needs at most this many bytes ahead to decide.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The length of the chunk that starts at `data[0]`, given `data` holds at least
    /// `max_size` bytes or everything that is left of the blob.
    pub fn cut(&self, data: &[u8]) -> usize {
        let mut end = data.len();
        if end <= self.min_size {
            return end;
        }
        let mut center = self.avg_size;
        if end > self.max_size {
            end = self.max_size;
        } else if end < center {
            center = end;
        }
        let (mask_s_ls, mask_l_ls) = (self.mask_s << 1, self.mask_l << 1);
        let mut hash = 0u64;
        let mut pair = self.min_size / 2;
        // Two bytes a step: the even byte through the shifted table, the odd one through the
        // plain table; a boundary may fall after either.
        for (limit, mask, mask_ls) in [
            (center / 2, self.mask_s, mask_s_ls),
            (end / 2, self.mask_l, mask_l_ls),
        ] {
            while pair < limit {
                let at = pair * 2;
                hash = (hash << 2).wrapping_add(self.gear_ls[usize::from(data[at])]);
                if hash & mask_ls == 0 {
                    return at;
                }
                hash = hash.wrapping_add(self.gear[usize::from(data[at + 1])]);
                if hash & mask == 0 {
                    return at + 1;
                }
                pair += 1;
            }
        }
        end
    }

    /// The chunk lengths of all of `data`, in order.
    pub fn chunks(&self, data: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let len = self.cut(&data[at..]);
            lengths.push(len);
            at += len;
        }
        lengths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gear_is_the_reference_table() {
        // The C reference's (and REAPI's) first entries.
        assert_eq!(gear()[0], 0x3b5d_3c7d_207e_37dc);
        assert_eq!(gear()[1], 0x784d_68ba_9112_3086);
    }

    #[test]
    fn chunks_cover_the_input_within_the_bounds() {
        let cdc = FastCdc::from_average(4096, 0);
        let mut x = 88172645463325252u64;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let lengths = cdc.chunks(&data);
        assert_eq!(lengths.iter().sum::<usize>(), data.len());
        let (last, rest) = lengths.split_last().unwrap();
        assert!(
            rest.iter().all(|&l| (1024..=16384).contains(&l)),
            "{lengths:?}"
        );
        assert!(*last <= 16384);
        // Content-defined: a prefix inserted shifts the first cuts, and the later ones realign.
        let mut shifted = b"inserted prefix".to_vec();
        shifted.extend_from_slice(&data);
        let again = cdc.chunks(&shifted);
        let tail = |l: &[usize]| l[l.len() - 10..].to_vec();
        assert_eq!(tail(&lengths), tail(&again));
        // All zeroes never match a mask: maximum-size chunks.
        assert_eq!(cdc.chunks(&[0; 40_000]), [16384, 16384, 7232]);
    }
}
