//! A bounds-checked little-endian reader over a byte slice.
//!
//! Every read checks the remaining length first and reports a [`Short`] (where, how much was needed,
//! how much was left) instead of panicking; lengths are taken as `u64` so that a count read from a
//! file can be passed in unchanged and is compared, never converted blindly.

/// A read that ran past the end of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    /// Byte offset where the read started.
    pub at: usize,
    /// Bytes the read needed.
    pub need: u64,
    /// Bytes that were left.
    pub have: usize,
}

/// A position in a byte slice. Invariant: `pos <= buf.len()`.
#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident -> $t:ty),* $(,)?) => {
        $(
            #[inline]
            pub fn $name(&mut self) -> Result<$t, Short> {
                Ok(<$t>::from_le_bytes(self.array()?))
            }
        )*
    };
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// A cursor at `pos`, or `None` if `pos` is past the end.
    pub fn at(buf: &'a [u8], pos: usize) -> Option<Self> {
        (pos <= buf.len()).then_some(Cursor { buf, pos })
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, advancing past them.
    #[inline]
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        let have = self.remaining();
        let short = Short {
            at: self.pos,
            need: n,
            have,
        };
        let n = usize::try_from(n).map_err(|_| short)?;
        if n > have {
            return Err(short);
        }
        // `n <= remaining`, so `pos + n <= len` cannot overflow.
        let s = self.buf.get(self.pos..self.pos + n).ok_or(short)?;
        self.pos += n;
        Ok(s)
    }

    /// Skip `n` bytes.
    #[inline]
    pub fn skip(&mut self, n: u64) -> Result<(), Short> {
        self.take(n).map(|_| ())
    }

    /// The bytes from `start` (an earlier position) up to the current position.
    pub fn since(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or(&[])
    }

    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let at = self.pos;
        let s = self.take(N as u64)?;
        <[u8; N]>::try_from(s).map_err(|_| Short {
            at,
            need: N as u64,
            have: s.len(),
        })
    }

    read_le!(
        u8 -> u8, i8 -> i8, u16 -> u16, i16 -> i16, u32 -> u32, i32 -> i32,
        u64 -> u64, i64 -> i64, f32 -> f32, f64 -> f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_the_end() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut c = Cursor::new(&b);
        assert_eq!(c.u16(), Ok(0x0201));
        assert_eq!(c.u32(), Ok(0x06050403));
        assert_eq!(c.remaining(), 3);
        assert_eq!(
            c.u32(),
            Err(Short {
                at: 6,
                need: 4,
                have: 3
            })
        );
        // A failed read does not move the cursor.
        assert_eq!(c.pos(), 6);
        assert_eq!(c.take(3), Ok(&b[6..]));
        assert_eq!(
            c.u8(),
            Err(Short {
                at: 9,
                need: 1,
                have: 0
            })
        );
    }

    #[test]
    fn huge_lengths_are_refused_not_converted() {
        let b = [0u8; 16];
        let mut c = Cursor::new(&b);
        for n in [17u64, 1 << 32, 1 << 63, u64::MAX] {
            assert_eq!(
                c.take(n),
                Err(Short {
                    at: 0,
                    need: n,
                    have: 16
                })
            );
        }
        assert_eq!(c.skip(16), Ok(()));
        assert!(Cursor::at(&b, 17).is_none());
        assert_eq!(Cursor::at(&b, 16).map(|c| c.remaining()), Some(0));
    }

    #[test]
    fn since_returns_consumed_bytes() {
        let b = [7u8, 8, 9];
        let mut c = Cursor::new(&b);
        let start = c.pos();
        c.skip(2).unwrap();
        assert_eq!(c.since(start), &[7, 8]);
        assert_eq!(c.f32().map_err(|s| s.need), Err(4));
    }
}
