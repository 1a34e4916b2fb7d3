//! A deterministic 64-bit hash of everything a simulation did.
//!
//! Two runs of the same scenario with the same seed must produce the same
//! trace hash; a difference means something outside the seed (a `HashMap`
//! iteration order, a wall clock, uninitialised state) leaked into the
//! behaviour. `std`'s `RandomState` is seeded per process and so useless
//! here; this hasher is fixed forever.
//!
//! The mixing step is FxHash's (rotate, xor, multiply by a constant) applied
//! to whole 64-bit words, with a SplitMix64 finaliser on output. It is not a
//! cryptographic or even a high-quality hash, only a fast, stable fingerprint:
//! every byte of every datagram goes through it.

const K: u64 = 0x517c_c1b7_2722_0a95;

/// SplitMix64's output finaliser: a bijective 64-bit mixer.
pub fn finalize64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a well-mixed seed from a base seed and a discriminator, such as
/// a node index, so that related seeds give unrelated generators.
pub fn mix64(seed: u64, discriminator: u64) -> u64 {
    finalize64(seed ^ finalize64(discriminator.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// An incremental, deterministic 64-bit fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceHash {
    h: u64,
}

impl Default for TraceHash {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceHash {
    /// An empty fingerprint.
    pub const fn new() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Mixes in one 64-bit word.
    #[inline]
    pub fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(5) ^ w).wrapping_mul(K);
    }

    /// Mixes in a byte string, including its length so that concatenations
    /// of different splits differ.
    pub fn bytes(&mut self, data: &[u8]) {
        self.word(data.len() as u64);
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }

    /// The fingerprint so far.
    pub fn finish(&self) -> u64 {
        finalize64(self.h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: u64 = 0x3c8a_a360_8054_1731;

    #[test]
    fn fixed_values_and_sensitivity() {
        let mut a = TraceHash::new();
        a.word(1);
        a.bytes(b"hello, coral");
        // Pinned: the hash must never change between builds or platforms,
        // or recorded trace hashes of old runs stop meaning anything.
        let pinned = a.finish();
        assert_eq!(pinned, PINNED, "{pinned:#018x}");
        let mut b = TraceHash::new();
        b.word(1);
        b.bytes(b"hello, coral");
        assert_eq!(b.finish(), pinned);

        let mut c = TraceHash::new();
        c.word(1);
        c.bytes(b"hello, coraL");
        assert_ne!(c.finish(), pinned);

        // Splits differ thanks to the length prefix.
        let mut d = TraceHash::new();
        d.bytes(b"ab");
        d.bytes(b"c");
        let mut e = TraceHash::new();
        e.bytes(b"a");
        e.bytes(b"bc");
        assert_ne!(d.finish(), e.finish());
        assert_ne!(TraceHash::new().finish(), d.finish());
    }

    #[test]
    fn mix_spreads_neighbouring_inputs() {
        assert_ne!(mix64(1, 0), mix64(1, 1));
        assert_ne!(mix64(1, 0), mix64(2, 0));
        assert_eq!(mix64(5, 9), mix64(5, 9));
        assert_eq!(finalize64(0), 0);
    }
}
