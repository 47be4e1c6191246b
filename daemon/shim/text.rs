//! Bytes the shim writes and reads: a fixed-size text buffer (the shim has no allocator), numbers in
//! decimal, and the C strings of its argv and environment.

use crate::sys::CStr;

/// Up to `N` bytes of text. What does not fit is dropped and remembered (`overflowed`), never a panic.
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text { bytes: [0; N], len: 0, overflowed: false }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Whether something pushed did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn push(&mut self, more: &[u8]) -> &mut Self {
        for &b in more {
            if self.len == N {
                self.overflowed = true;
                break;
            }
            self.bytes[self.len] = b;
            self.len += 1;
        }
        self
    }

    pub fn push_c(&mut self, s: CStr) -> &mut Self {
        self.push(c_bytes(s))
    }

    pub fn num(&mut self, n: u64) -> &mut Self {
        self.padded(n, 1)
    }

    /// `n` in decimal, with leading zeros to at least `width` digits.
    pub fn padded(&mut self, mut n: u64, width: usize) -> &mut Self {
        let mut digits = [b'0'; 20];
        let mut at = digits.len();
        while n > 0 {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let start = at.min(digits.len().saturating_sub(width.max(1)));
        self.push(&digits[start..])
    }

    /// A system call's `-errno` as the C library words it, with the number (`... (os error N)`).
    pub fn errno(&mut self, rc: isize) -> &mut Self {
        let errno = rc.unsigned_abs() as u64;
        let words: &[u8] = match errno {
            1 => b"Operation not permitted",
            2 => b"No such file or directory",
            6 => b"No such device or address",
            7 => b"Argument list too long",
            8 => b"Exec format error",
            11 => b"Resource temporarily unavailable",
            12 => b"Cannot allocate memory",
            13 => b"Permission denied",
            20 => b"Not a directory",
            21 => b"Is a directory",
            26 => b"Text file busy",
            28 => b"No space left on device",
            36 => b"File name too long",
            40 => b"Too many levels of symbolic links",
            _ => b"error",
        };
        self.push(words).push(b" (os error ").num(errno).push(b")")
    }
}

/// The bytes of a NUL-terminated string from argv or the environment (without the NUL).
pub fn c_bytes(s: CStr) -> &'static [u8] {
    // SAFETY: argv and environment strings are NUL-terminated and live as long as the process.
    unsafe { core::ffi::CStr::from_ptr(s as *const core::ffi::c_char).to_bytes() }
}

/// A decimal number with nothing else in it.
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}
