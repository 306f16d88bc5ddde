//! The attestation document: COSE_Sign1 envelope and CBOR payload, parsed and encoded.
//!
//! Format, as AWS documents it (aws-nitro-enclaves-nsm-api, `docs/attestation_process.md`)
//! and as every real document seen has it: an (untagged, though tag 18 is accepted) CBOR
//! array `[protected, unprotected, payload, signature]`; `protected` is the bstr of
//! `{1: -35}` (ES384); `signature` is 96 bytes, raw `r || s`, over
//! `["Signature1", protected, h'', payload]`. The payload is a map with `module_id`,
//! `digest` ("SHA384"), `timestamp` (ms since the epoch), `pcrs` (index → 32/48/64-byte
//! value), `certificate` (the signing leaf, DER), `cabundle` (DER, root first), and
//! `public_key`, `user_data`, `nonce` (bytes or null). Maps and arrays may use definite
//! or indefinite lengths.

use std::collections::BTreeMap;

use ciborium::Value;

use crate::Error;

/// The largest document accepted, checked before any parsing. NSM answers in a buffer of
/// 12 KiB (`NSM_RESPONSE_MAX_SIZE` in the NSM driver); real documents are about 4.5 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// The protected header of every Nitro document: `{1: -35}`, alg ES384.
pub(crate) const PROTECTED_ES384: [u8; 4] = [0xa1, 0x01, 0x38, 0x22];

/// NSM's limits on what a document can bind (`attestation_process.md`).
pub const MAX_PUBLIC_KEY_BYTES: usize = 1024;
/// See [`MAX_PUBLIC_KEY_BYTES`].
pub const MAX_USER_DATA_BYTES: usize = 512;
/// See [`MAX_PUBLIC_KEY_BYTES`].
pub const MAX_NONCE_BYTES: usize = 512;

/// A COSE_Sign1 structure, borrowed from the document bytes' parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CoseSign1 {
    pub(crate) protected: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

/// The payload of an attestation document, unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The enclave's ID, e.g. `i-0bee92034f3d60691-enc01943c5eaab3ad6a`.
    pub module_id: String,
    /// The PCR digest algorithm; always `SHA384` for Nitro.
    pub digest: String,
    /// When NSM made the document, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Platform configuration registers by index.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The DER certificate whose key signed the document.
    pub certificate: Vec<u8>,
    /// DER certificates from the root (first) to the issuer of `certificate`.
    pub cabundle: Vec<Vec<u8>>,
    /// A public key the enclave bound to the document.
    pub public_key: Option<Vec<u8>>,
    /// Application data bound to the document.
    pub user_data: Option<Vec<u8>>,
    /// A verifier's challenge bound to the document.
    pub nonce: Option<Vec<u8>>,
}

// === impl CoseSign1 ===

impl CoseSign1 {
    /// Parses the envelope: size first, then CBOR, tag 18 optional, no trailing bytes.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(Error::TooLarge {
                len: bytes.len(),
                max: MAX_DOCUMENT_BYTES,
            });
        }
        let value = decode_exact(bytes, "COSE_Sign1")?;
        let value = match value {
            Value::Tag(18, inner) => *inner,
            Value::Tag(tag, _) => {
                return Err(malformed(format!(
                    "COSE_Sign1 has tag {tag}, expected none or 18"
                )));
            }
            other => other,
        };
        let Value::Array(items) = value else {
            return Err(malformed("COSE_Sign1 is not an array"));
        };
        let [protected, unprotected, payload, signature]: [Value; 4] =
            items.try_into().map_err(|items: Vec<Value>| {
                malformed(format!(
                    "COSE_Sign1 has {} elements, expected 4",
                    items.len()
                ))
            })?;
        let Value::Bytes(protected) = protected else {
            return Err(malformed(
                "COSE_Sign1 protected header is not a byte string",
            ));
        };
        if !matches!(unprotected, Value::Map(_)) {
            return Err(malformed("COSE_Sign1 unprotected header is not a map"));
        }
        let Value::Bytes(payload) = payload else {
            return Err(malformed("COSE_Sign1 payload is not a byte string"));
        };
        let Value::Bytes(signature) = signature else {
            return Err(malformed("COSE_Sign1 signature is not a byte string"));
        };
        Ok(Self {
            protected,
            payload,
            signature,
        })
    }

    /// The algorithm in the protected header, checked to be ES384 (`1: -35`).
    pub(crate) fn check_es384(&self) -> Result<(), Error> {
        if self.protected == PROTECTED_ES384 {
            return Ok(());
        }
        // Not the canonical bytes: decode to say what it is.
        let alg = match decode_exact(&self.protected, "protected header")? {
            Value::Map(entries) => entries
                .into_iter()
                .find(|(k, _)| *k == Value::Integer(1.into()))
                .map(|(_, v)| v),
            _ => return Err(malformed("protected header is not a map")),
        };
        match alg {
            Some(alg) if alg == Value::Integer((-35).into()) => Ok(()),
            Some(alg) => Err(Error::UnsupportedAlgorithm(format!("{alg:?}"))),
            None => Err(Error::UnsupportedAlgorithm("none".into())),
        }
    }

    /// The COSE `Sig_structure` the signature covers:
    /// `["Signature1", protected, h'', payload]`, definite-length CBOR.
    pub(crate) fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + self.protected.len() + 32);
        out.push(0x84); // array(4)
        push_head(&mut out, 3, b"Signature1".len() as u64);
        out.extend_from_slice(b"Signature1");
        push_head(&mut out, 2, self.protected.len() as u64);
        out.extend_from_slice(&self.protected);
        out.push(0x40); // h''
        push_head(&mut out, 2, self.payload.len() as u64);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Encodes an untagged COSE_Sign1 with an empty unprotected header, as NSM does.
    #[cfg(feature = "fake")]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let value = Value::Array(vec![
            Value::Bytes(self.protected.clone()),
            Value::Map(Vec::new()),
            Value::Bytes(self.payload.clone()),
            Value::Bytes(self.signature.clone()),
        ]);
        encode(&value)
    }
}

/// A CBOR head (major type and argument), definite length.
fn push_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let major = major << 5;
    match n {
        0..=23 => out.push(major | n as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, n as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

// === impl Payload ===

impl Payload {
    /// Parses and checks the payload map: every field present with the right type and
    /// within the bounds AWS documents.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let Value::Map(entries) = decode_exact(bytes, "payload")? else {
            return Err(malformed("payload is not a map"));
        };
        let mut fields: BTreeMap<String, Value> = BTreeMap::new();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(malformed("payload has a key that is not text"));
            };
            if fields.insert(key.clone(), value).is_some() {
                return Err(malformed(format!("payload has `{key}` twice")));
            }
        }
        let mut take = |name: &'static str| fields.remove(name);

        let module_id = match take("module_id") {
            Some(Value::Text(s)) if !s.is_empty() => s,
            other => {
                return Err(field(
                    "module_id",
                    "a non-empty text string",
                    other.as_ref(),
                ));
            }
        };
        let digest = match take("digest") {
            Some(Value::Text(s)) if s == "SHA384" => s,
            other => return Err(field("digest", "the text \"SHA384\"", other.as_ref())),
        };
        let timestamp_ms = match take("timestamp") {
            Some(Value::Integer(i)) => u64::try_from(i).ok().filter(|t| *t > 0),
            _ => None,
        }
        .ok_or_else(|| Error::Payload {
            field: "timestamp",
            problem: "expected a positive integer (milliseconds since the epoch)".into(),
        })?;
        let pcrs = match take("pcrs") {
            Some(Value::Map(entries)) if (1..=32).contains(&entries.len()) => {
                let mut pcrs = BTreeMap::new();
                for (index, value) in entries {
                    let index = match index {
                        Value::Integer(i) => u8::try_from(i).ok().filter(|i| *i < 32),
                        _ => None,
                    }
                    .ok_or_else(|| field("pcrs", "indices 0..=31", Some(&Value::Null)))?;
                    match value {
                        Value::Bytes(b) if matches!(b.len(), 32 | 48 | 64) => {
                            if pcrs.insert(index, b).is_some() {
                                return Err(malformed(format!("PCR{index} appears twice")));
                            }
                        }
                        other => {
                            return Err(field(
                                "pcrs",
                                "values of 32, 48 or 64 bytes",
                                Some(&other),
                            ));
                        }
                    }
                }
                pcrs
            }
            other => return Err(field("pcrs", "a map of 1 to 32 PCRs", other.as_ref())),
        };
        let certificate = match take("certificate") {
            Some(Value::Bytes(b)) if (1..=1024).contains(&b.len()) => b,
            other => {
                return Err(field(
                    "certificate",
                    "a DER certificate of 1 to 1024 bytes",
                    other.as_ref(),
                ));
            }
        };
        let cabundle = match take("cabundle") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .into_iter()
                .map(|item| match item {
                    Value::Bytes(b) if (1..=1024).contains(&b.len()) => Ok(b),
                    other => Err(field(
                        "cabundle",
                        "DER certificates of 1 to 1024 bytes",
                        Some(&other),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => {
                return Err(field(
                    "cabundle",
                    "a non-empty array of certificates",
                    other.as_ref(),
                ));
            }
        };
        let public_key = optional_bytes(take("public_key"), "public_key", MAX_PUBLIC_KEY_BYTES)?;
        let user_data = optional_bytes(take("user_data"), "user_data", MAX_USER_DATA_BYTES)?;
        let nonce = optional_bytes(take("nonce"), "nonce", MAX_NONCE_BYTES)?;
        Ok(Self {
            module_id,
            digest,
            timestamp_ms,
            pcrs,
            certificate,
            cabundle,
            public_key,
            user_data,
            nonce,
        })
    }

    /// Encodes the payload as NSM does: definite lengths, keys in NSM's order, absent
    /// optional fields as null.
    pub fn encode(&self) -> Vec<u8> {
        let bytes_or_null = |b: &Option<Vec<u8>>| b.clone().map_or(Value::Null, Value::Bytes);
        let value = Value::Map(vec![
            (
                Value::Text("module_id".into()),
                Value::Text(self.module_id.clone()),
            ),
            (
                Value::Text("digest".into()),
                Value::Text(self.digest.clone()),
            ),
            (
                Value::Text("timestamp".into()),
                Value::Integer(self.timestamp_ms.into()),
            ),
            (
                Value::Text("pcrs".into()),
                Value::Map(
                    self.pcrs
                        .iter()
                        .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
                        .collect(),
                ),
            ),
            (
                Value::Text("certificate".into()),
                Value::Bytes(self.certificate.clone()),
            ),
            (
                Value::Text("cabundle".into()),
                Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            ),
            (
                Value::Text("public_key".into()),
                bytes_or_null(&self.public_key),
            ),
            (
                Value::Text("user_data".into()),
                bytes_or_null(&self.user_data),
            ),
            (Value::Text("nonce".into()), bytes_or_null(&self.nonce)),
        ]);
        encode(&value)
    }
}

fn optional_bytes(
    value: Option<Value>,
    name: &'static str,
    max: usize,
) -> Result<Option<Vec<u8>>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) if b.len() <= max => Ok(Some(b)),
        Some(Value::Bytes(b)) => Err(Error::Payload {
            field: name,
            problem: format!("{} bytes, more than the {max} NSM allows", b.len()),
        }),
        Some(other) => Err(field(name, "a byte string or null", Some(&other))),
    }
}

/// Decodes exactly one CBOR item spanning all of `bytes`.
pub(crate) fn decode_exact(bytes: &[u8], what: &str) -> Result<Value, Error> {
    let mut rest = bytes;
    let value: Value = ciborium::from_reader(&mut rest)
        .map_err(|e| malformed(format!("{what} is not valid CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{what} has {} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail: the writer never errors.
    if ciborium::into_writer(value, &mut out).is_err() {
        out.clear();
    }
    out
}

fn malformed(message: impl Into<String>) -> Error {
    Error::Malformed(message.into())
}

fn field(name: &'static str, expected: &str, got: Option<&Value>) -> Error {
    let got = match got {
        None => "it is missing".to_owned(),
        Some(Value::Text(_)) => "got text".to_owned(),
        Some(Value::Bytes(b)) => format!("got {} bytes", b.len()),
        Some(Value::Integer(_)) => "got an integer".to_owned(),
        Some(Value::Null) => "got null or an invalid entry".to_owned(),
        Some(Value::Array(a)) => format!("got an array of {}", a.len()),
        Some(Value::Map(m)) => format!("got a map of {}", m.len()),
        Some(_) => "got another CBOR type".to_owned(),
    };
    Error::Payload {
        field: name,
        problem: format!("expected {expected}, {got}"),
    }
}
