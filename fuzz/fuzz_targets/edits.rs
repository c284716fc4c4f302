//! The edit the `*_traffic` targets apply to a copy of live traffic. Not a target itself.

/// Writes 8 bytes of `forged` at `e[0..2] % (len - 7)`: `e[2..10]` overwritten (mode `e[10]`
/// bit 0 clear) or XORed (set), or one of the four largest u64 (bit 2: where `+ 1`
/// overflows), in the byte order of the wire (`big_endian`).
pub fn edit(forged: &mut [u8], e: &[u8], big_endian: bool) {
    if forged.len() < 8 || e.len() < 11 {
        return;
    }
    let pos = u16::from_le_bytes([e[0], e[1]]) as usize;
    let at = pos % (forged.len() - 7);
    let mut value: [u8; 8] = e[2..10].try_into().expect("8 bytes");
    if e[10] & 4 != 0 {
        let top = u64::MAX - u64::from(e[2] & 3);
        value = if big_endian {
            top.to_be_bytes()
        } else {
            top.to_le_bytes()
        };
    }
    for (j, b) in value.iter().enumerate() {
        if e[10] & 1 == 0 {
            forged[at + j] = *b;
        } else {
            forged[at + j] ^= *b;
        }
    }
}
