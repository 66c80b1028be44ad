//! Composite byte keys for the embedded store: each string component is a
//! big-endian u16 length and its bytes, each number 8 big-endian bytes. Keys
//! of one prefix sort together, numbers sort numerically, and no component
//! can run into the next.

#[derive(Default)]
pub(crate) struct Key(Vec<u8>);

impl Key {
    pub(crate) fn new() -> Self {
        Key(Vec::with_capacity(96))
    }

    pub(crate) fn s(mut self, part: &str) -> Self {
        // Ids are validated to at most 128 bytes long before they get here;
        // clamp anyway so a longer one can never be mis-framed.
        let bytes = &part.as_bytes()[..part.len().min(u16::MAX as usize)];
        self.0.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn n(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Reads components back in the order they were written.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub(crate) fn s(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.0.get(..2)?.try_into().ok()?) as usize;
        let part = self.0.get(2..2 + len)?;
        self.0 = &self.0[2 + len..];
        std::str::from_utf8(part).ok()
    }

    pub(crate) fn n(&mut self) -> Option<u64> {
        let v = u64::from_be_bytes(self.0.get(..8)?.try_into().ok()?);
        self.0 = &self.0[8..];
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ordering() {
        let k = Key::new().s("t").s("conv").n(7).into_vec();
        let mut r = Reader::new(&k);
        assert_eq!((r.s(), r.s(), r.n()), (Some("t"), Some("conv"), Some(7)));
        assert_eq!(r.n(), None);
        let a = Key::new().s("c").n(9).into_vec();
        let b = Key::new().s("c").n(10).into_vec();
        assert!(a < b);
        assert_ne!(Key::new().s("ab").s("c").into_vec(), Key::new().s("a").s("bc").into_vec());
    }
}
