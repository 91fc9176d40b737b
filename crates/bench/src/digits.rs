//! ASCII decimal numbers in frames, written and read without allocating (the generator's
//! hot path), shared by every protocol adapter.

/// Appends the decimal digits of `v`.
pub fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// The number at the start of `bytes` (digits up to the first non-digit), if any.
pub fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut any = false;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        any = true;
    }
    any.then_some(value)
}
