//! A 64-bit non-cryptographic hash of byte streams: the checksum of a state file and the identity of a
//! model's header and of an adapter's factors.
//!
//! Four lanes each take one little-endian 64-bit word of every 32-byte stripe (multiply, rotate,
//! multiply), so the lanes run in parallel and the hash costs a fraction of a memory copy; the tail and
//! the total length are folded in at the end and the result is mixed so every input bit reaches every
//! output bit. The value depends only on the bytes, never on how they were split into `update` calls.

const M1: u64 = 0x9E37_79B9_7F4A_7C15;
const M2: u64 = 0xD6E8_FEB8_6659_FD93;
const M3: u64 = 0xA076_1D64_78BD_642F;
const STRIPE: usize = 32;

/// A streaming 64-bit hash ([`Hash64::update`] any number of times, then [`Hash64::finish`]).
#[derive(Clone)]
pub struct Hash64 {
    lanes: [u64; 4],
    /// Bytes not yet making up a whole stripe.
    pending: [u8; STRIPE],
    n_pending: usize,
    total: u64,
}

impl Default for Hash64 {
    fn default() -> Self {
        Hash64::new()
    }
}

impl Hash64 {
    pub fn new() -> Hash64 {
        Hash64 {
            lanes: [M1, M2, M3, M1 ^ M2],
            pending: [0; STRIPE],
            n_pending: 0,
            total: 0,
        }
    }

    /// Adds `bytes` to the stream.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total = self.total.wrapping_add(bytes.len() as u64);
        if self.n_pending > 0 {
            let take = (STRIPE - self.n_pending).min(bytes.len());
            self.pending[self.n_pending..self.n_pending + take].copy_from_slice(&bytes[..take]);
            self.n_pending += take;
            bytes = &bytes[take..];
            if self.n_pending < STRIPE {
                return;
            }
            let stripe = self.pending;
            self.stripe(&stripe);
            self.n_pending = 0;
        }
        let mut stripes = bytes.chunks_exact(STRIPE);
        for s in &mut stripes {
            self.stripe(s);
        }
        let rest = stripes.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.n_pending = rest.len();
    }

    /// Adds a `u64` (little-endian) to the stream.
    pub fn u64(&mut self, v: u64) {
        self.update(&v.to_le_bytes());
    }

    #[inline]
    fn stripe(&mut self, s: &[u8]) {
        for (lane, w) in self.lanes.iter_mut().zip(s.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let w = u64::from_le_bytes(b);
            *lane = (*lane ^ w.wrapping_mul(M2))
                .rotate_left(29)
                .wrapping_mul(M1);
        }
    }

    /// The hash of everything added so far.
    pub fn finish(&self) -> u64 {
        let mut h = self.total.wrapping_mul(M3);
        for (i, &l) in self.lanes.iter().enumerate() {
            h = mix(h ^ l.rotate_left(16 * i as u32));
        }
        for w in self.pending[..self.n_pending].chunks(8) {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            h = mix(h ^ u64::from_le_bytes(b).wrapping_mul(M3));
        }
        mix(h)
    }
}

/// A bijective finalizer: every input bit flips about half of the output bits.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 31;
    h = h.wrapping_mul(M2);
    h ^= h >> 29;
    h = h.wrapping_mul(M3);
    h ^ (h >> 32)
}

/// The hash of `bytes` in one call.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h = Hash64::new();
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_of_how_the_stream_is_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = hash64(&data);
        for cut in [0, 1, 7, 31, 32, 33, 64, 999, 1000] {
            let mut h = Hash64::new();
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            assert_eq!(h.finish(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn every_bit_and_the_length_matter() {
        let data = vec![0u8; 100];
        let base = hash64(&data);
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert_ne!(hash64(&d), base, "byte {i} bit {bit}");
            }
        }
        assert_ne!(hash64(&data[..99]), base);
        assert_ne!(hash64(&[]), hash64(&[0]));
    }
}
