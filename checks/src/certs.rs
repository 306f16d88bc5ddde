//! Certificates as they travel: PEM files and fields (`CERTIFICATE` blocks), and the
//! concatenated DER the Workload API carries. Every certificate is parsed once here, so
//! that what is handed on is at least well-formed X.509.

use rustls_pki_types::CertificateDer;
use x509_parser::error::X509Error;

/// Why certificates could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The input is not PEM.
    #[error("{what}: not PEM")]
    NotPem {
        /// Where the bytes came from (a configuration key, a field).
        what: String,
        /// The PEM parser's complaint.
        #[source]
        source: pem::PemError,
    },
    /// PEM without a single `CERTIFICATE` block.
    #[error("{what}: no PEM `CERTIFICATE` block found")]
    NoCertificate {
        /// Where the bytes came from.
        what: String,
    },
    /// A certificate does not parse as X.509.
    #[error("{what}: certificate {index} does not parse")]
    Parse {
        /// Where the bytes came from.
        what: String,
        /// Its position, from 0.
        index: usize,
        /// The X.509 parser's complaint.
        #[source]
        source: X509Error,
    },
}

/// A certificate as operators recognise it: its subject and serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertName {
    /// The subject's distinguished name.
    pub subject: String,
    /// The serial number, hex.
    pub serial: String,
}

impl CertName {
    /// The name of a parsed certificate.
    pub fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Self {
        Self {
            subject: cert.subject().to_string(),
            serial: enclaveid_attestor::hex(&cert.serial.to_bytes_be()),
        }
    }
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (serial {})", self.subject, self.serial)
    }
}

/// All `CERTIFICATE` blocks of PEM text, in order; at least one, each valid X.509. `what`
/// names the input in errors.
pub fn parse_pem(
    pem_bytes: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let blocks = pem::parse_many(pem_bytes).map_err(|source| CertificateError::NotPem {
        what: what.to_owned(),
        source,
    })?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate {
            what: what.to_owned(),
        });
    }
    for (index, cert) in certs.iter().enumerate() {
        parse(cert, what, index)?;
    }
    Ok(certs)
}

/// The certificates of concatenated DER (a Workload API chain or bundle), each with its
/// own bytes; trailing bytes that are not a certificate are refused.
pub fn split_der(
    mut der: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, _) =
            x509_parser::parse_x509_certificate(der).map_err(|e| CertificateError::Parse {
                what: what.to_owned(),
                index: certs.len(),
                source: x509_error(e),
            })?;
        certs.push(CertificateDer::from(der[..der.len() - rest.len()].to_vec()));
        der = rest;
    }
    Ok(certs)
}

/// Parses one certificate, naming it `what` / `index` in the error.
pub fn parse<'a>(
    der: &'a [u8],
    what: &str,
    index: usize,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CertificateError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertificateError::Parse {
            what: what.to_owned(),
            index,
            source: x509_error(e),
        })
}

/// The parser's error without nom's wrapper.
pub(crate) fn x509_error(error: x509_parser::nom::Err<X509Error>) -> X509Error {
    match error {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
    }

    #[test]
    fn pem_and_concatenated_der_round_trip() {
        let (a, b) = (cert(), cert());
        let pem = format!("{}{}", a.pem(), b.pem());
        let parsed = parse_pem(pem.as_bytes(), "chain.pem").unwrap();
        assert_eq!(parsed, vec![a.der().clone(), b.der().clone()]);
        let der: Vec<u8> = parsed.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(split_der(&der, "chain").unwrap(), parsed);
    }

    #[test]
    fn bad_certificates_name_the_input() {
        let error = parse_pem(b"hello", "upstream.cert_path").unwrap_err();
        assert_eq!(
            error.to_string(),
            "upstream.cert_path: no PEM `CERTIFICATE` block found"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = parse_pem(garbage.as_bytes(), "bundle").unwrap_err();
        assert!(
            error.to_string().starts_with("bundle: certificate 0"),
            "{error}"
        );
        let mut der = cert().der().to_vec();
        der.push(0);
        assert!(split_der(&der, "chain").is_err(), "trailing byte accepted");
    }
}
