//! The PROXY protocol v2 header (HAProxy's `proxy-protocol.txt`, section 2.2) that `proxy
//! server --proxy-protocol` sends to its target before the first byte of the connection,
//! so the application learns who connected: the client's address and port (when both
//! ends are TCP of one family; `AF_UNSPEC` otherwise, such as over vsock), a
//! `PP2_TYPE_SSL` TLV (TLS used, a client certificate presented and verified, the TLS
//! version), and the client's SPIFFE ID in a TLV of type `0xE0`, the first of the range
//! the specification leaves to applications.

use std::net::SocketAddr;

/// The 12 bytes every v2 header starts with.
pub(crate) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// `PP2_TYPE_SSL`.
const TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`.
const SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS`.
const CLIENT_FLAGS: u8 = 0x01 | 0x02 | 0x04;
/// The TLV that carries the client's SPIFFE ID (`PP2_TYPE_MIN_CUSTOM`).
pub(crate) const TYPE_SPIFFE_ID: u8 = 0xE0;

/// The header for a connection from `source` to `destination` by the peer `spiffe_id`
/// over `tls_version` (such as `TLSv1_3`).
pub(crate) fn header(
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    spiffe_id: &str,
    tls_version: &str,
) -> Vec<u8> {
    let (family, addresses) = match (source, destination) {
        (Some(SocketAddr::V4(s)), Some(SocketAddr::V4(d))) => {
            let mut a = Vec::with_capacity(12);
            a.extend_from_slice(&s.ip().octets());
            a.extend_from_slice(&d.ip().octets());
            a.extend_from_slice(&s.port().to_be_bytes());
            a.extend_from_slice(&d.port().to_be_bytes());
            (0x11, a)
        }
        (Some(SocketAddr::V6(s)), Some(SocketAddr::V6(d))) => {
            let mut a = Vec::with_capacity(36);
            a.extend_from_slice(&s.ip().octets());
            a.extend_from_slice(&d.ip().octets());
            a.extend_from_slice(&s.port().to_be_bytes());
            a.extend_from_slice(&d.port().to_be_bytes());
            (0x21, a)
        }
        // vsock, Unix, or mixed families: no address the receiver could use.
        _ => (0x00, Vec::new()),
    };
    let mut ssl = vec![CLIENT_FLAGS, 0, 0, 0, 0];
    tlv(&mut ssl, SUBTYPE_SSL_VERSION, tls_version.as_bytes());
    let mut body = addresses;
    tlv(&mut body, TYPE_SSL, &ssl);
    tlv(&mut body, TYPE_SPIFFE_ID, spiffe_id.as_bytes());
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    out.push(family);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLVs after the address block of a header, as a receiver reads them.
    fn tlvs(header: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
        let addresses = match header[13] {
            0x11 => 12,
            0x21 => 36,
            _ => 0,
        };
        let mut rest = &header[16 + addresses..16 + len];
        let mut out = Vec::new();
        while let [kind, hi, lo, tail @ ..] = rest {
            let n = usize::from(u16::from_be_bytes([*hi, *lo]));
            out.push((*kind, tail[..n].to_vec()));
            rest = &tail[n..];
        }
        out
    }

    #[test]
    fn proxy_v2_header_carries_the_addresses_tls_and_the_spiffe_id() {
        let source: SocketAddr = "10.0.0.7:51000".parse().unwrap();
        let destination: SocketAddr = "10.0.0.1:8443".parse().unwrap();
        let written = header(
            Some(source),
            Some(destination),
            "spiffe://example.org/gw",
            "TLSv1_3",
        );
        assert_eq!(written[..12], SIGNATURE);
        assert_eq!(written[12], 0x21, "v2, PROXY");
        assert_eq!(written[13], 0x11, "TCP over IPv4");
        assert_eq!(&written[16..20], &[10, 0, 0, 7]);
        assert_eq!(&written[20..24], &[10, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([written[24], written[25]]), 51000);
        assert_eq!(u16::from_be_bytes([written[26], written[27]]), 8443);
        let found = tlvs(&written);
        assert_eq!(
            found[1],
            (TYPE_SPIFFE_ID, b"spiffe://example.org/gw".to_vec())
        );
        let ssl = &found[0];
        assert_eq!(ssl.0, TYPE_SSL);
        assert_eq!(ssl.1[0], 0x07);
        assert_eq!(&ssl.1[1..5], &[0, 0, 0, 0], "verified");
        assert_eq!(
            &ssl.1[5..],
            [&[SUBTYPE_SSL_VERSION, 0, 7][..], b"TLSv1_3"].concat()
        );

        // Over vsock (no IP address): AF_UNSPEC, no address block, the same TLVs.
        let unspec = header(None, None, "spiffe://example.org/gw", "TLSv1_3");
        assert_eq!(unspec[13], 0x00);
        assert_eq!(tlvs(&unspec)[1].1, b"spiffe://example.org/gw");
        // Mixed families cannot be written either.
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(header(Some(source), Some(v6), "x", "TLSv1_3")[13], 0x00);
    }
}
