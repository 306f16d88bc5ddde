//! The enclave itself: its attestor (the Nitro Secure Module, or the fake for
//! development), and the verifier its own documents are checked with before anything
//! relies on them.

use enclaveid_attestor::{AttestationRequest, Policy, VerifiedDocument, Verifier, VerifyAt};

use crate::config::{AttestorConfig, AttestorKind, ConfigError};
use crate::selector::Selector;

/// The enclave's attestor, and the verifier its own documents are checked with (the AWS
/// root for NSM, the fake's own root for the fake) before anything relies on them.
pub struct Enclave {
    attestor: Box<dyn enclaveid_attestor::Attestor>,
    verifier: Verifier,
    allow_debug: bool,
}

/// Why the enclave's attestor could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnclaveError {
    /// The attestor this build does not have.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The attestor could not start (no `/dev/nsm`, a bad fake root).
    #[error("opening the enclave's attestor")]
    Attestor(#[source] enclaveid_attestor::Error),
}

// === impl Enclave ===

impl Enclave {
    /// The attestor, for protocols that bind their own fields into a document (the
    /// `spire` upstream's node attestation).
    pub(crate) fn attestor(&self) -> &dyn enclaveid_attestor::Attestor {
        self.attestor.as_ref()
    }

    /// Opens the configured attestor.
    #[cfg_attr(
        not(any(feature = "fake", feature = "nsm")),
        allow(
            unreachable_code,
            reason = "a build with neither attestor refuses both kinds: nothing after the match runs"
        )
    )]
    pub fn open(config: &AttestorConfig) -> Result<Self, EnclaveError> {
        let (attestor, verifier): (Box<dyn enclaveid_attestor::Attestor>, _) = match &config.kind {
            #[cfg(feature = "fake")]
            AttestorKind::Fake(fake) => {
                tracing::warn!(
                    "attestor kind = \"fake\": documents are signed by a fake root and prove nothing"
                );
                let attestor = enclaveid_attestor::FakeAttestor::new(fake.clone())
                    .map_err(EnclaveError::Attestor)?;
                let verifier = Verifier::with_root_der(attestor.root_der());
                (Box::new(attestor), verifier)
            }
            #[cfg(not(feature = "fake"))]
            AttestorKind::Fake(_) => return Err(unsupported("fake", "the fake attestor").into()),
            #[cfg(feature = "nsm")]
            AttestorKind::Nsm => (
                Box::new(enclaveid_attestor::NsmAttestor::open().map_err(EnclaveError::Attestor)?),
                Verifier::aws(),
            ),
            #[cfg(not(feature = "nsm"))]
            AttestorKind::Nsm => return Err(unsupported("nsm", "NSM support").into()),
        };
        Ok(Self {
            attestor,
            verifier,
            allow_debug: config.allow_debug,
        })
    }

    /// A fresh document binding `user_data` (unverified: the caller checks what it made
    /// with it, as an attested SVID is checked with [`Enclave::verifier`]).
    pub(crate) fn attest_user_data(
        &self,
        user_data: Vec<u8>,
    ) -> Result<Vec<u8>, enclaveid_attestor::Error> {
        self.attestor.attest(&AttestationRequest {
            user_data: Some(user_data),
            ..AttestationRequest::default()
        })
    }

    /// The verifier of this enclave's documents, and whether a debug-mode enclave is
    /// accepted (`attestor.allow_debug`).
    pub(crate) fn verifier(&self) -> (&Verifier, bool) {
        (&self.verifier, self.allow_debug)
    }

    /// A fresh document binding `public_key` and a random nonce, verified as a relying
    /// party would verify it.
    pub fn attest(
        &self,
        public_key: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, VerifiedDocument), enclaveid_attestor::Error> {
        let nonce: [u8; 32] = rand::random();
        let request = AttestationRequest {
            nonce: Some(nonce.to_vec()),
            public_key,
            ..AttestationRequest::default()
        };
        let document = self.attestor.attest(&request)?;
        let policy = Policy {
            allow_debug: self.allow_debug,
            nonce: request.nonce.clone(),
            ..Policy::default()
        };
        let verified = self.verifier.verify(
            &document,
            &policy,
            VerifyAt::Time(std::time::SystemTime::now()),
        )?;
        Ok((document, verified))
    }
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave")
            .field("allow_debug", &self.allow_debug)
            .finish_non_exhaustive()
    }
}

#[cfg(any(not(feature = "fake"), not(feature = "nsm")))]
fn unsupported(kind: &str, what: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: "attestor".into(),
        key: "attestor.kind".into(),
        value: format!("{kind:?}"),
        reason: format!("this enclaveid was built without {what}"),
    }
}

/// The node selectors (`nitro:pcr0..8`, `nitro:module_id`) of the enclave's document.
pub(crate) fn node_selectors(verified: &VerifiedDocument) -> Vec<Selector> {
    let mut selectors: Vec<Selector> = verified
        .pcrs
        .iter()
        .filter(|(i, _)| **i <= 8)
        .map(|(i, v)| Selector::Pcr(*i, enclaveid_attestor::hex(v)))
        .collect();
    selectors.push(Selector::ModuleId(verified.module_id.clone()));
    tracing::info!(
        module_id = %verified.module_id,
        pcr0 = %verified.pcrs.get(&0).map(|v| enclaveid_attestor::hex(v)).unwrap_or_default(),
        debug_mode = verified.debug_mode,
        "enclave attested"
    );
    selectors
}
