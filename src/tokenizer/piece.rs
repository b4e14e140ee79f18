//! A token's raw bytes, decoded from its vocab text as they are read: the tokenizer keeps no second
//! copy of the vocabulary for decoding (for a 262k-token SentencePiece vocab that copy would be 2 MiB,
//! since nearly every token holds a `▁`).

use super::bpe::char_to_byte;

/// The raw bytes of one token ([`super::Tokenizer::token_to_piece`]). Read them with
/// [`Piece::for_each_chunk`], [`Piece::write_to`] or [`Piece::to_vec`].
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    text: &'a str,
    form: Form,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// The text's bytes as they are (control and user-defined tokens).
    Verbatim,
    /// A SentencePiece token: `▁` stands for a space.
    Spm,
    /// A byte-level BPE token: each character stands for one byte (GPT-2's byte ↔ character map);
    /// a character outside the map stands for itself.
    ByteLevel,
    /// A byte token (`<0xNN>` in a SentencePiece vocab).
    Byte(u8),
}

/// SentencePiece's word boundary `▁` (U+2581) in UTF-8.
const SPM_SPACE_UTF8: &[u8] = "\u{2581}".as_bytes();

impl<'a> Piece<'a> {
    pub(crate) const EMPTY: Piece<'static> = Piece {
        text: "",
        form: Form::Verbatim,
    };

    pub(crate) fn new(text: &'a str, form: Form) -> Piece<'a> {
        Piece { text, form }
    }

    /// Calls `f` with the piece's bytes, in order, in one or more chunks (none when empty).
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8])) {
        match self.form {
            Form::Verbatim => {
                if !self.text.is_empty() {
                    f(self.text.as_bytes())
                }
            }
            Form::Byte(b) => f(&[b]),
            Form::Spm => {
                let mut rest = self.text.as_bytes();
                while let Some(at) = find(rest, SPM_SPACE_UTF8) {
                    if at > 0 {
                        f(&rest[..at]);
                    }
                    f(b" ");
                    rest = &rest[at + SPM_SPACE_UTF8.len()..];
                }
                if !rest.is_empty() {
                    f(rest);
                }
            }
            Form::ByteLevel => {
                let mut buf = [0u8; 64];
                let mut n = 0;
                for c in self.text.chars() {
                    if n + 4 > buf.len() {
                        f(&buf[..n]);
                        n = 0;
                    }
                    match char_to_byte(c) {
                        Some(b) => {
                            buf[n] = b;
                            n += 1;
                        }
                        None => n += c.encode_utf8(&mut buf[n..]).len(),
                    }
                }
                if n > 0 {
                    f(&buf[..n]);
                }
            }
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.for_each_chunk(|c| n += c.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.for_each_chunk(|c| out.extend_from_slice(c));
    }

    /// The bytes as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.text.len());
        self.write_to(&mut v);
        v
    }
}

impl PartialEq for Piece<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.to_vec() == other.to_vec()
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_spaces_become_spaces_and_nothing_else_changes() {
        let p = Piece::new("▁a▁▁bé▁", Form::Spm);
        assert_eq!(p.to_vec(), " a  bé ".as_bytes());
        assert_eq!(p.len(), " a  bé ".len());
        assert_eq!(Piece::new("abc", Form::Spm).to_vec(), b"abc");
        assert!(Piece::new("", Form::Spm).is_empty());
    }

    #[test]
    fn byte_level_characters_map_to_bytes() {
        // GPT-2's map: 'Ġ' (U+0120) is the space, 'Ċ' (U+010A) the newline; printable ASCII is itself.
        let p = Piece::new("ĠhiĊ", Form::ByteLevel);
        assert_eq!(p.to_vec(), b" hi\n");
        // A character outside the map stands for its own UTF-8 bytes.
        assert_eq!(Piece::new("€", Form::ByteLevel).to_vec(), "€".as_bytes());
        // Longer than the chunk buffer: the chunks join up.
        let long: String = "Ġ€".repeat(40);
        let want: Vec<u8> = " €".repeat(40).into_bytes();
        assert_eq!(Piece::new(&long, Form::ByteLevel).to_vec(), want);
    }

    #[test]
    fn verbatim_and_byte_forms() {
        assert_eq!(
            Piece::new("▁<x>", Form::Verbatim).to_vec(),
            "▁<x>".as_bytes()
        );
        assert_eq!(Piece::new("<0x0A>", Form::Byte(10)).to_vec(), b"\n");
        assert!(Piece::EMPTY.is_empty());
    }
}
