//! Structure read out of raw fuzzer bytes: header bytes choose limits and
//! chunk cuts, the rest is the body; an exhausted input reads as zeros.

/// A reader over one input, front to back.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// The ways a body of `len` bytes is cut into chunks, each as the list of
/// cut offsets (strictly inside `0..len`, increasing): one chunk, and one
/// other way the seed picks (two chunks at a seeded offset, small or large
/// seeded random chunks, byte by byte for short bodies). The same seed
/// always gives the same cuts; a fuzzer that mutates the seed tries them all.
pub(crate) fn chunkings(len: usize, seed: u32) -> Vec<Vec<usize>> {
    if len < 2 {
        return vec![Vec::new()];
    }
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    let random = |rng: &mut fastrand::Rng, max_chunk: usize| {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += rng.usize(1..=max_chunk);
            if at >= len {
                break cuts;
            }
            cuts.push(at);
        }
    };
    // Small chunks cut inside delimiters and UTF-8; large ones inside messages.
    let small = 1 + (seed as usize >> 8) % 16;
    let other = match seed % 4 {
        0 => vec![rng.usize(1..len)],
        1 => random(&mut rng, small),
        2 => random(&mut rng, 1 + (seed as usize >> 16) % 700),
        // Byte by byte is quadratic for parsers that compact their buffer on
        // every push; keep it to bodies where that stays cheap.
        _ if len <= 512 => (1..len).collect(),
        _ => random(&mut rng, small),
    };
    vec![Vec::new(), other]
}

/// `body` cut at `cuts` (offsets as [`chunkings`] makes them).
pub(crate) fn chunks<'b>(body: &'b [u8], cuts: &[usize]) -> impl Iterator<Item = &'b [u8]> + 'b {
    let starts = std::iter::once(0).chain(cuts.iter().copied());
    let ends = cuts.iter().copied().chain(std::iter::once(body.len()));
    let pieces: Vec<(usize, usize)> = starts.zip(ends).collect();
    pieces.into_iter().map(move |(a, b)| &body[a..b])
}

/// `bytes` shown for a panic message: escaped, cut to `limit` bytes.
pub(crate) fn show(bytes: &[u8], limit: usize) -> String {
    let cut = &bytes[..bytes.len().min(limit)];
    let mut s = cut.escape_ascii().to_string();
    if bytes.len() > limit {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunkings_cover_the_body_exactly() {
        for len in [0, 1, 2, 3, 100, 600, 5000] {
            for seed in [0, 1, 2, 3, 0xFFFF_FFFF, 12345] {
                for cuts in chunkings(len, seed) {
                    let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    let joined: Vec<u8> = chunks(&body, &cuts).flatten().copied().collect();
                    assert_eq!(joined, body);
                    assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
                    assert!(cuts.iter().all(|&c| c > 0 && c < len), "{cuts:?}");
                }
            }
        }
    }

    #[test]
    fn an_exhausted_input_reads_zeros() {
        let mut i = Input::new(&[1, 2]);
        assert_eq!((i.byte(), i.byte(), i.byte(), i.u32()), (1, 2, 0, 0));
        assert!(i.rest().is_empty());
    }
}
