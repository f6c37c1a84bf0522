//! A minimal byte sink so that every encoder runs twice over the same code: once into a
//! [`Count`] to learn the exact length, once into the real buffer. This is what lets a
//! frame be written with a single allocation of exact capacity, and guarantees that the
//! length in the WebSocket header always matches the payload that follows it.

use bytes::{BufMut, BytesMut};

pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn put_byte(&mut self, byte: u8) {
        self.put(&[byte]);
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn put_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

impl Sink for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn put_byte(&mut self, byte: u8) {
        self.put_u8(byte);
    }
}

/// Counts bytes instead of storing them.
#[derive(Default)]
pub(crate) struct Count(pub(crate) usize);

impl Sink for Count {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    #[inline]
    fn put_byte(&mut self, _byte: u8) {
        self.0 += 1;
    }
}

/// Something that can write itself as a frame payload (run once to count, once to write).
pub(crate) trait Payload {
    fn write_to<S: Sink>(&self, out: &mut S);

    fn encoded_len(&self) -> usize {
        let mut count = Count::default();
        self.write_to(&mut count);
        count.0
    }
}

impl Payload for &[u8] {
    fn write_to<S: Sink>(&self, out: &mut S) {
        out.put(self);
    }

    fn encoded_len(&self) -> usize {
        self.len()
    }
}

/// Writes `n` in decimal without allocating.
pub(crate) fn put_u64<S: Sink>(out: &mut S, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put(&digits[at..]);
}
