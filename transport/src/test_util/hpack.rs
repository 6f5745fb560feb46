//! The least of HPACK (RFC 7541) a raw peer needs to write header blocks:
//! static-table references and literal fields without indexing or Huffman
//! coding. Nothing is decoded; tests look at frames, not header values.
//! (h2 keeps its HPACK codec private, and no other is in the tree.)

/// Appends an integer with an `n`-bit prefix whose high bits are `first`
/// (§5.1).
pub fn int(out: &mut Vec<u8>, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends an indexed field (§6.1): entry `index` of the static table
/// (Appendix A), e.g. 3 `:method POST`, 4 `:path /`, 6 `:scheme http`,
/// 8 `:status 200`.
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    int(out, 0x80, 7, index);
}

/// Appends a literal field without indexing, with a new name and no
/// Huffman coding (§6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    literal_prefix(out, name, value.len());
    out.extend_from_slice(value);
}

/// Appends the start of a literal field whose value claims `value_len`
/// bytes; the value bytes are the caller's to send (or not).
pub fn literal_prefix(out: &mut Vec<u8>, name: &str, value_len: usize) {
    out.push(0x00);
    int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    int(out, 0, 7, value_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_the_rfc_7541_examples() {
        let mut v = Vec::new();
        int(&mut v, 0, 5, 10);
        assert_eq!(v, [10]);
        v.clear();
        int(&mut v, 0, 5, 1337);
        assert_eq!(v, [31, 154, 10]);
        v.clear();
        int(&mut v, 0, 8, 42);
        assert_eq!(v, [42]);
    }

    #[test]
    fn fields_encode_as_the_rfc_7541_examples() {
        // C.2.4: the indexed field `:method GET`.
        let mut v = Vec::new();
        indexed(&mut v, 2);
        assert_eq!(v, [0x82]);
        // C.2.1's field, without indexing (§6.2.2: 0x00 where C.2.1,
        // with indexing, has 0x40).
        let mut v = Vec::new();
        literal(&mut v, "custom-key", b"custom-header");
        let mut want = vec![0x00, 0x0a];
        want.extend_from_slice(b"custom-key");
        want.push(0x0d);
        want.extend_from_slice(b"custom-header");
        assert_eq!(v, want);
    }
}
