//! The little DER that the attested SVID extension needs: definite lengths and one-octet
//! tags. [`write()`] and [`encode`] encode one element; reading stays inside the crate.
//! Public for the project's test fakes, which encode CMS with it.

/// BOOLEAN.
pub const BOOLEAN: u8 = 0x01;
/// INTEGER.
pub const INTEGER: u8 = 0x02;
/// BIT STRING.
pub const BIT_STRING: u8 = 0x03;
/// OCTET STRING.
pub const OCTET_STRING: u8 = 0x04;
/// OBJECT IDENTIFIER.
pub const OID: u8 = 0x06;
/// SEQUENCE, constructed.
pub const SEQUENCE: u8 = 0x30;
/// `[3] EXPLICIT`, constructed: the TBSCertificate's extensions.
pub const EXTENSIONS: u8 = 0xa3;

/// Appends the element `tag` with `content`.
pub fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// The element `tag` with `content`.
pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    write(&mut out, tag, content);
    out
}

/// The content of the element `tag` at the start of `input`, and what follows it.
pub(crate) fn read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = match len {
        0..=0x7f => (usize::from(len), rest),
        0x81..=0x84 => {
            let n = usize::from(len & 0x7f);
            if rest.len() < n {
                return None;
            }
            let (bytes, rest) = rest.split_at(n);
            let value = bytes.iter().fold(0usize, |v, b| (v << 8) | usize::from(*b));
            // DER: the shortest form.
            if value < 0x80 || bytes[0] == 0 {
                return None;
            }
            (value, rest)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The whole element `tag` (header and content) at the start of `input`.
pub(crate) fn element(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (_, rest) = read(input, tag)?;
    Some(&input[..input.len() - rest.len()])
}
