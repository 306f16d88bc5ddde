//! PEM for private keys, without copies left in freed memory.
//!
//! The `pem` crate strips a block's whitespace into a `String` and encodes through
//! intermediate `String`s, none of them zeroized: a private key's base64 would stay in
//! freed heap. Here every buffer that holds a key, in DER or base64, is sized once (never
//! reallocated, which would leave the old allocation behind) and zeroized on drop.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// One PEM block of secret contents.
pub struct SecretBlock {
    /// The label, as in `-----BEGIN <label>-----`.
    pub label: String,
    /// The decoded contents, zeroized on drop.
    pub der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SecretBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBlock")
            .field("label", &self.label)
            .field("der", &"[secret elided]")
            .finish()
    }
}

/// The first PEM block of `text`, or `None` when there is none that decodes. Encrypted
/// PEM (RFC 1421 headers such as `Proc-Type:`) is not accepted.
pub fn decode(text: &[u8]) -> Option<SecretBlock> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let start = find(text, BEGIN)? + BEGIN.len();
    let label_len = find(&text[start..], DASHES)?;
    let label = std::str::from_utf8(&text[start..start + label_len]).ok()?;
    if label.contains(['\r', '\n']) {
        return None;
    }
    let body_start = start + label_len + DASHES.len();
    let end_marker = [b"-----END ", label.as_bytes(), DASHES].concat();
    let body_len = find(&text[body_start..], &end_marker)?;
    let body = &text[body_start..body_start + body_len];
    if body.contains(&b':') {
        return None;
    }
    let mut base64 = Zeroizing::new(Vec::with_capacity(body.len()));
    base64.extend(body.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    let mut der = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(base64.len())]);
    let len = STANDARD.decode_slice(&*base64, &mut der[..]).ok()?;
    der.truncate(len);
    Some(SecretBlock {
        label: label.to_owned(),
        der,
    })
}

/// `der` as one PEM block labelled `label`, LF line endings, 64 characters a line.
pub fn encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let encoded_len = base64::encoded_len(der.len(), true).unwrap_or(0);
    let mut base64 = Zeroizing::new(vec![0u8; encoded_len]);
    let written = STANDARD.encode_slice(der, &mut base64[..]).unwrap_or(0);
    let base64 = &base64[..written];
    let lines = written.div_ceil(64);
    let mut out = Zeroizing::new(String::with_capacity(
        2 * (label.len() + 16) + written + lines,
    ));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in base64.chunks(64) {
        // Base64 is ASCII.
        out.extend(line.iter().map(|b| char::from(*b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes_the_same_and_matches_the_pem_crate() {
        for len in [0, 1, 2, 3, 47, 48, 49, 121, 138, 1218] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let text = encode("PRIVATE KEY", &der);
            let theirs = pem::encode_config(
                &pem::Pem::new("PRIVATE KEY", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(*text, theirs, "{len} bytes");
            let block = decode(text.as_bytes()).unwrap();
            assert_eq!(block.label, "PRIVATE KEY");
            assert_eq!(*block.der, der);
        }
    }

    #[test]
    fn blocks_are_found_among_other_text_with_crlf_and_without_headers() {
        let text = b"junk before\r\n-----BEGIN EC PRIVATE KEY-----\r\nAAEC\r\nAw==\r\n-----END EC PRIVATE KEY-----\r\ntrailer";
        let block = decode(text).unwrap();
        assert_eq!(block.label, "EC PRIVATE KEY");
        assert_eq!(*block.der, [0, 1, 2, 3]);
        assert!(format!("{block:?}").contains("[secret elided]"));

        for bad in [
            &b"no pem"[..],
            b"-----BEGIN PRIVATE KEY-----\nAAEC\n",
            b"-----BEGIN PRIVATE KEY-----\nAAEC\n-----END EC PRIVATE KEY-----\n",
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAEC\n-----END RSA PRIVATE KEY-----\n",
            b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(decode(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
