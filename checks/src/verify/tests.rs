use rcgen::{
    BasicConstraints, CertificateRevocationListParams, CustomExtension, DistinguishedName, DnType,
    KeyIdMethod, KeyPair, SerialNumber,
};
use time::OffsetDateTime;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A CA of a test hierarchy: its certificate and what signs under it.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// How a test CA differs from a well-formed one.
#[derive(Clone, Copy)]
struct CaOptions {
    path_len: Option<u8>,
    key_cert_sign: bool,
    valid: (SystemTime, SystemTime),
    unknown_critical_extension: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        let now = SystemTime::now();
        Self {
            path_len: None,
            key_cert_sign: true,
            valid: (now - DAY, now + 30 * DAY),
            unknown_critical_extension: false,
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(common_name: &str, options: CaOptions) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(match options.path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = if options.key_cert_sign {
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
    } else {
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]
    };
    params.not_before = OffsetDateTime::from(options.valid.0);
    params.not_after = OffsetDateTime::from(options.valid.1);
    if options.unknown_critical_extension {
        let mut extension =
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
        extension.set_criticality(true);
        params.custom_extensions = vec![extension];
    }
    params
}

fn root() -> Ca {
    root_named("rcgen self signed cert")
}

fn root_named(common_name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(common_name, CaOptions::default());
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

fn intermediate(parent: &Ca, common_name: &str, options: CaOptions) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(common_name, options);
    let cert = params.signed_by(&key, &parent.issuer).unwrap();
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// Issues a certificate: `ca` = Some(path_len) for a CA, with `uris` as URI SANs.
fn issue(root: &Ca, ca: Option<u8>, uris: &[&str]) -> (CertificateDer<'static>, SigningKey) {
    let key = SigningKey::generate_p256().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = name(if ca.is_some() {
        "material CA"
    } else {
        "material"
    });
    params.is_ca = match ca {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::ExplicitNoCa,
    };
    params.key_usages = match ca {
        Some(_) => vec![KeyUsagePurpose::KeyCertSign],
        None => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    let cert = params.signed_by(&key, &root.issuer).unwrap();
    (cert.der().clone(), key)
}

/// CA material for example.org under `parent`.
fn material_ca(parent: &Ca) -> (CertificateDer<'static>, SigningKey) {
    issue(parent, Some(0), &["spiffe://example.org"])
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn run(
    root: &Ca,
    cert: CertificateDer<'static>,
    key: &SigningKey,
    crl: Option<&[u8]>,
) -> Result<Checked, CheckError> {
    check(
        &[cert],
        key,
        std::slice::from_ref(&root.der),
        crl,
        &td(),
        SystemTime::now(),
    )
}

/// The whole message, causes included, as operators read it.
fn text(result: Result<Checked, CheckError>) -> String {
    let error = result.expect_err("the material was accepted");
    crate::Chain(&error).to_string()
}

fn crl(ca: &Ca, serials: &[Vec<u8>], next_update: OffsetDateTime) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: next_update - time::Duration::days(2),
        next_update,
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: OffsetDateTime::now_utc(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .unwrap()
    .der()
    .to_vec()
}

fn serial_of(cert: &CertificateDer<'_>) -> Vec<u8> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    parsed.raw_serial().to_vec()
}

#[test]
fn ca_and_leaf_material_are_told_apart() {
    let root = root();
    let (cert, key) = issue(&root, Some(0), &["spiffe://example.org"]);
    let checked = run(&root, cert, &key, None).unwrap();
    assert_eq!(checked.role, Role::Ca);
    let (cert, key) = issue(&root, Some(0), &[]);
    assert_eq!(
        run(&root, cert, &key, None).unwrap().role,
        Role::Ca,
        "the URI SAN is optional"
    );

    let (cert, key) = issue(&root, None, &["spiffe://example.org/gateway"]);
    let checked = run(&root, cert, &key, None).unwrap();
    assert_eq!(
        checked.role,
        Role::Leaf(SpiffeId::new("spiffe://example.org/gateway").unwrap())
    );
    let (chain, key_der) = leaf_svid_key(&checked, &key).unwrap();
    assert_eq!(chain, checked.path[0].to_vec());
    assert!(!key_der.is_empty());

    // An end-entity certificate naming only the trust domain certifies a JWT key.
    let (cert, key) = issue(&root, None, &["spiffe://example.org"]);
    assert_eq!(run(&root, cert, &key, None).unwrap().role, Role::JwtSigner);
    let (cert, key) = issue(&root, None, &["spiffe://other.org"]);
    let error = text(run(&root, cert, &key, None));
    assert!(error.contains("has no path"), "{error}");
}

#[test]
fn material_outside_the_svid_profile_is_refused_with_the_reason() {
    let root = root();
    for (ca, uris, expected) in [
        (
            Some(1),
            &["spiffe://example.org"][..],
            "pathLenConstraint 0",
        ),
        (
            Some(0),
            &["spiffe://other.org"][..],
            "may carry one URI SAN, spiffe://example.org",
        ),
        (
            None,
            &["spiffe://example.org/a", "spiffe://example.org/b"][..],
            "exactly one URI SAN",
        ),
        (
            None,
            &["spiffe://other.org/a"][..],
            "outside the trust domain",
        ),
        (None, &[][..], "ACM puts only DNS names"),
    ] {
        let (cert, key) = issue(&root, ca, uris);
        let error = text(run(&root, cert, &key, None));
        assert!(error.contains(expected), "{uris:?}: {error}");
    }
}

#[test]
fn a_key_that_is_not_the_certificates_and_another_root_are_refused() {
    let root = root();
    let (cert, _) = material_ca(&root);
    let other = SigningKey::generate_p256().unwrap();
    let error = text(run(&root, cert.clone(), &other, None));
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );

    let stranger = root_named("another root");
    let (cert, key) = material_ca(&stranger);
    let error = text(run(&root, cert, &key, None));
    assert!(
        error.contains("does not chain to the Private CA root"),
        "{error}"
    );
}

#[test]
fn crls_are_verified_current_and_applied() {
    let root = root();
    let (cert, key) = issue(&root, Some(0), &[]);
    let serial = serial_of(&cert);
    let tomorrow = OffsetDateTime::now_utc() + time::Duration::days(1);

    let clean = crl(&root, &[vec![1, 2, 3]], tomorrow);
    run(&root, cert.clone(), &key, Some(&clean)).unwrap();
    let pem = pem::encode(&pem::Pem::new("X509 CRL", clean.clone()));
    run(&root, cert.clone(), &key, Some(pem.as_bytes())).unwrap();

    let revoked = crl(&root, std::slice::from_ref(&serial), tomorrow);
    let error = run(&root, cert.clone(), &key, Some(&revoked)).unwrap_err();
    assert!(error.to_string().contains("is revoked since"), "{error}");
    let CheckError::Revoked(revoked) = error else {
        panic!("not a revocation: {error}");
    };
    assert_eq!(revoked.leaf_serial, enclaveid_attestor::hex(&serial));

    let stale = crl(
        &root,
        &[],
        OffsetDateTime::now_utc() - time::Duration::hours(1),
    );
    let error = text(run(&root, cert.clone(), &key, Some(&stale)));
    assert!(error.contains("stale"), "{error}");

    let mut tampered = clean;
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let error = text(run(&root, cert, &key, Some(&tampered)));
    assert!(error.contains("CRL from the host"), "{error}");
}

#[test]
fn webpki_a_crl_from_the_wrong_issuer_key_is_refused() {
    let root = root();
    let (cert, key) = material_ca(&root);
    // Same name as the root, another key: found as the issuer's CRL by its name, then
    // refused because its signature does not verify with the issuer's key.
    let impostor = self::root();
    let tomorrow = OffsetDateTime::now_utc() + time::Duration::days(1);
    let forged = crl(&impostor, &[], tomorrow);
    let error = text(run(&root, cert.clone(), &key, Some(&forged)));
    assert!(
        error.contains("CRL from the host") && error.contains("does not verify"),
        "{error}"
    );
    // A CRL of another issuer name is not the material's issuer's: refused as such, so
    // that `require_crl` cannot be met with any CRL at all.
    let stranger = root_named("another root");
    let foreign = crl(&stranger, &[], tomorrow);
    let error = text(run(&root, cert, &key, Some(&foreign)));
    assert!(
        error.contains("not issued by the certificate's issuer"),
        "{error}"
    );
}

#[test]
fn hostile_webpki_an_intermediate_whose_path_len_forbids_the_path_is_refused() {
    let root = root();
    // root -> intermediate (pathLen 0) -> material CA: the material CA is a CA below an
    // intermediate that allows none.
    let strict = intermediate(
        &root,
        "intermediate pathLen 0",
        CaOptions {
            path_len: Some(0),
            ..CaOptions::default()
        },
    );
    let (cert, key) = material_ca(&strict);
    let certs = [cert, strict.der.clone()];
    let error = check(
        &certs,
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        SystemTime::now(),
    );
    let error = text(error);
    assert!(
        error.contains("pathLenConstraint forbids this path"),
        "{error}"
    );

    // The same with pathLen 1 is fine, and the path names the intermediate.
    let lenient = intermediate(
        &root,
        "intermediate pathLen 1",
        CaOptions {
            path_len: Some(1),
            ..CaOptions::default()
        },
    );
    let (cert, key) = material_ca(&lenient);
    let checked = check(
        &[cert.clone(), lenient.der.clone()],
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(checked.path, vec![cert, lenient.der.clone()]);
}

#[test]
fn webpki_an_unknown_critical_extension_is_refused() {
    let root = root();
    let odd = intermediate(
        &root,
        "intermediate with a critical extension",
        CaOptions {
            unknown_critical_extension: true,
            ..CaOptions::default()
        },
    );
    let (cert, key) = issue(&odd, None, &["spiffe://example.org/gateway"]);
    let error = text(check(
        &[cert, odd.der.clone()],
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        SystemTime::now(),
    ));
    assert!(error.contains("unknown critical extension"), "{error}");
}

#[test]
fn webpki_a_ca_without_key_cert_sign_is_refused() {
    let root = root();
    // An intermediate CA whose keyUsage does not include keyCertSign.
    let no_signer = intermediate(
        &root,
        "intermediate without keyCertSign",
        CaOptions {
            key_cert_sign: false,
            ..CaOptions::default()
        },
    );
    let (cert, key) = issue(&no_signer, None, &["spiffe://example.org/gateway"]);
    let error = text(check(
        &[cert, no_signer.der.clone()],
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        SystemTime::now(),
    ));
    assert!(error.contains("keyCertSign"), "{error}");
    assert!(
        error.contains("intermediate without keyCertSign"),
        "{error}"
    );

    // CA material itself without keyCertSign.
    let key = SigningKey::generate_p256().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = name("material CA without keyCertSign");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &root.issuer).unwrap();
    let error = text(run(&root, cert.der().clone(), &key, None));
    assert!(error.contains("keyCertSign"), "{error}");
}

#[test]
fn webpki_an_expired_intermediate_between_valid_ones_is_refused() {
    let root = root();
    let now = SystemTime::now();
    let upper = intermediate(&root, "upper intermediate", CaOptions::default());
    let expired = intermediate(
        &upper,
        "expired intermediate",
        CaOptions {
            valid: (now - 30 * DAY, now - DAY),
            ..CaOptions::default()
        },
    );
    let lower = intermediate(&expired, "lower intermediate", CaOptions::default());
    let (cert, key) = issue(&lower, None, &["spiffe://example.org/gateway"]);
    let chain = [
        cert,
        lower.der.clone(),
        expired.der.clone(),
        upper.der.clone(),
    ];
    let error = text(check(
        &chain,
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        now,
    ));
    assert!(
        error.contains("expired intermediate") && error.contains("expired at"),
        "{error}"
    );

    // With the expired one renewed under the same name and key usage, the path holds.
    let renewed = intermediate(&upper, "expired intermediate", CaOptions::default());
    let lower = intermediate(&renewed, "lower intermediate", CaOptions::default());
    let (cert, key) = issue(&lower, None, &["spiffe://example.org/gateway"]);
    let checked = check(
        &[
            cert,
            lower.der.clone(),
            renewed.der.clone(),
            upper.der.clone(),
        ],
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        now,
    )
    .unwrap();
    assert_eq!(checked.path.len(), 4, "leaf and three intermediates");
}

#[test]
fn webpki_an_expired_root_and_material_not_yet_valid_are_refused() {
    let now = SystemTime::now();
    let key = KeyPair::generate().unwrap();
    let params = ca_params(
        "expired root",
        CaOptions {
            valid: (now - 30 * DAY, now - DAY),
            ..CaOptions::default()
        },
    );
    let cert = params.self_signed(&key).unwrap();
    let old_root = Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    };
    let (cert, key) = material_ca(&old_root);
    let error = text(run(&old_root, cert, &key, None));
    assert!(
        error.contains("expired root") && error.contains("expired at"),
        "{error}"
    );

    let root = root();
    let future = intermediate(
        &root,
        "future intermediate",
        CaOptions {
            valid: (now + DAY, now + 30 * DAY),
            ..CaOptions::default()
        },
    );
    let (cert, key) = issue(&future, None, &["spiffe://example.org/gateway"]);
    let error = text(check(
        &[cert, future.der.clone()],
        &key,
        std::slice::from_ref(&root.der),
        None,
        &td(),
        now,
    ));
    assert!(error.contains("is not valid before"), "{error}");
}

#[test]
fn webpki_sha1_is_refused_by_name() {
    // An RSA root signs with sha256WithRSAEncryption (1.2.840.113549.1.1.11); its OID
    // differs from sha1WithRSAEncryption (…1.1.5) in the last byte only, so relabelling
    // both AlgorithmIdentifiers of the leaf makes a certificate that claims SHA-1.
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let params = ca_params("RSA root", CaOptions::default());
    let cert = params.self_signed(&key).unwrap();
    let rsa_root = Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    };
    let (cert, signing) = issue(&rsa_root, None, &["spiffe://example.org/gateway"]);
    run(&rsa_root, cert.clone(), &signing, None).unwrap();
    let sha256_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let mut der = cert.to_vec();
    let positions: Vec<usize> = der
        .windows(sha256_rsa.len())
        .enumerate()
        .filter(|(_, w)| *w == sha256_rsa)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        positions.len(),
        2,
        "the TBS and the outer signature algorithm"
    );
    for i in positions {
        der[i + 8] = 0x05;
    }
    let error = text(run(&rsa_root, CertificateDer::from(der), &signing, None));
    assert!(error.contains("is signed with SHA-1"), "{error}");
}

/// A TLS server certificate for `dns` under `root`, as ACM issues from a Private CA.
fn issue_dns(root: &Ca, dns: &[&str]) -> (CertificateDer<'static>, SigningKey) {
    let key = SigningKey::generate_p256().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = name(dns.first().copied().unwrap_or("server"));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = dns
        .iter()
        .map(|d| SanType::DnsName((*d).try_into().unwrap()))
        .collect();
    let cert = params.signed_by(&key, &root.issuer).unwrap();
    (cert.der().clone(), key)
}

fn run_server(
    root: &Ca,
    cert: CertificateDer<'static>,
    key: &SigningKey,
    crl: Option<&[u8]>,
    expected: &[&str],
) -> Result<ServerChecked, String> {
    let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    check_server(
        &[cert],
        key,
        std::slice::from_ref(&root.der),
        crl,
        &expected,
        SystemTime::now(),
    )
    .map_err(|error| crate::Chain(&error).to_string())
}

#[test]
fn acm_route_a_dns_certificate_is_checked_for_every_expected_name() {
    let root = root();
    let (cert, key) = issue_dns(&root, &["inference.ephemeral-ml.internal", "*.ml.internal"]);
    let checked = run_server(
        &root,
        cert.clone(),
        &key,
        None,
        &["inference.ephemeral-ml.internal", "gateway.ml.internal"],
    )
    .unwrap();
    assert_eq!(
        checked.dns_names,
        ["inference.ephemeral-ml.internal", "*.ml.internal"]
    );
    assert_eq!(checked.path, std::slice::from_ref(&cert));
    assert_eq!(
        checked.serial,
        CertName::of(&certs::parse(&cert, "t", 0).unwrap()).serial
    );

    // A name it does not carry, and one a wildcard does not cover (two labels).
    for missing in ["gateway.ephemeral-ml.internal", "a.b.ml.internal"] {
        let error = run_server(&root, cert.clone(), &key, None, &[missing]).unwrap_err();
        assert!(
            error.contains(&format!("not valid for {missing:?}"))
                && error.contains("it names inference.ephemeral-ml.internal, *.ml.internal"),
            "{error}"
        );
    }
    // The same certificate is still refused as an X.509-SVID, with the ACM message.
    let error = text(run(&root, cert, &key, None));
    assert!(error.contains("ACM puts only DNS names"), "{error}");
}

#[test]
fn acm_route_a_dns_certificate_gets_the_path_key_and_crl_checks() {
    let root = root();
    let other = root_named("another root");
    let (cert, key) = issue_dns(&root, &["inference.ephemeral-ml.internal"]);
    let names = ["inference.ephemeral-ml.internal"];

    let error = run_server(&other, cert.clone(), &key, None, &names).unwrap_err();
    assert!(
        error.contains("does not chain to the Private CA root"),
        "{error}"
    );
    let (_, wrong_key) = issue_dns(&root, &names);
    let error = run_server(&root, cert.clone(), &wrong_key, None, &names).unwrap_err();
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );

    let tomorrow = OffsetDateTime::now_utc() + time::Duration::days(1);
    let revoked = crl(&root, &[serial_of(&cert)], tomorrow);
    let error = run_server(&root, cert.clone(), &key, Some(&revoked), &names).unwrap_err();
    assert!(error.contains("is revoked since"), "{error}");
    let clean = crl(&root, &[vec![1, 2, 3]], tomorrow);
    run_server(&root, cert, &key, Some(&clean), &names).unwrap();

    // A CA is not a server certificate, whatever its names.
    let (ca, ca_key) = issue(&root, Some(0), &[]);
    let error = run_server(&root, ca, &ca_key, None, &names).unwrap_err();
    assert!(error.contains("is a CA certificate"), "{error}");
}
