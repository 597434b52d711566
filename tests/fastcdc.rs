//! FastCDC 2020 against REAPI's published test vectors (`fastcdc2020_test_vectors.txt` in
//! bazelbuild/remote-apis: MinSize 4096, AvgSize 16384, MaxSize 65535, normalization 2).
#![cfg(not(madsim))]

use hoard::engine::Digest;
use hoard::wire::grpc::fastcdc::FastCdc;

const IMAGE: &[u8] = include_bytes!("fixtures/SekienAkashita.jpg");

/// A chunk as the vector file lists it: offset, length, SHA-256.
type Chunk = (usize, usize, &'static str);

/// The chunks by seed.
const VECTORS: [(u32, [Chunk; 6]); 2] = [
    (
        0,
        [
            (
                0,
                19186,
                "0f9efa589121d5d9e9e2c4ace91337d77cae866537143f6f15a0ffd525a77c2d",
            ),
            (
                19186,
                19279,
                "c7c86a165573c16448cda35c9169742e85645af42be22889f8b96b8ee0ec7cb0",
            ),
            (
                38465,
                17354,
                "bc88521e28a8b4479cdea5f75aa721a24f3a0a7d0be903aa6d505c574e51e89d",
            ),
            (
                55819,
                16387,
                "4b8dac2652e4685c629d2bb1ae9d4448e676b86f2e67ca0b2fff3d9580184b79",
            ),
            (
                72206,
                19940,
                "c0a7062da6f2386c28e086ee0cedd5732252741269838773cff1ddb05b2df6ed",
            ),
            (
                92146,
                17320,
                "7fa5b12134dc75cd2ac8dc60d3a8f3c8d22f0ee9d4cf74a4aa937e2a0d2d79a5",
            ),
        ],
    ),
    (
        666,
        [
            (
                0,
                17635,
                "cb3a9d80a3569772d4ed331ca37ab0c862c759897b890fc1aac90a4f2ea3a407",
            ),
            (
                17635,
                17334,
                "d758c6b7b0b7eef1e996f8ccd17de6c645360b03a26c35541e7581348ac08944",
            ),
            (
                34969,
                19136,
                "24846aefd89e510594bae3e9d7d5ea5012067601512610fed126a3c57ba993f5",
            ),
            (
                54105,
                17467,
                "efa785e1fefb49f190e665f72fd246c1442079874508c312196da1fb3040d00b",
            ),
            (
                71572,
                23593,
                "a2f557bdd8d40d8faada963ad5f91ec54b10ccee7c5ae72754a65137592dc607",
            ),
            (
                95165,
                14301,
                "e131100b4a7147ccad19dc63c4a2fac1f5d8b644e1373eeb6803825024234efc",
            ),
        ],
    ),
];

#[test]
fn the_published_vectors_are_cut_exactly() {
    assert_eq!(
        Digest::of(IMAGE).hex(),
        "d9e749d9367fc908876749d6502eb212fee88c9a94892fb07da5ef3ba8bc39ed"
    );
    for (seed, expected) in VECTORS {
        let cdc = FastCdc::new(4096, 16384, 65535, seed);
        let mut offset = 0;
        let mut got = Vec::new();
        for len in cdc.chunks(IMAGE) {
            got.push((offset, len, Digest::of(&IMAGE[offset..offset + len]).hex()));
            offset += len;
        }
        let expected: Vec<_> = expected
            .iter()
            .map(|&(o, l, h)| (o, l, h.to_owned()))
            .collect();
        assert_eq!(got, expected, "seed {seed}");
    }
}
