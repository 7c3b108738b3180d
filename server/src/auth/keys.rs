//! JWT keys from files, in the forms etcd (golang-jwt) reads them: RSA private keys in PKCS#1 or
//! PKCS#8, EC private keys in SEC1 or PKCS#8, public keys as a SubjectPublicKeyInfo or inside a
//! certificate, HMAC secrets as the raw bytes of the private key file. As in etcd, a member with
//! a private key verifies tokens with that key's public half; one with only a public key checks
//! tokens but cannot issue them.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use rustls_pki_types::pem::SectionKind;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::tokens::TokenConfigError;

/// DER of the OIDs an EC PKCS#8 wrapper names: id-ecPublicKey, then the curve.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

type KeyFile<'a> = (&'a Path, Vec<u8>);

fn bad(path: &Path, reason: impl std::fmt::Display) -> TokenConfigError {
    TokenConfigError::BadKey {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The signing key (if a private key is given) and the verifying key for `algorithm`.
pub fn load(
    algorithm: Algorithm,
    private: Option<KeyFile<'_>>,
    public: Option<KeyFile<'_>>,
) -> Result<(Option<EncodingKey>, DecodingKey), TokenConfigError> {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let (_, secret) = private.ok_or(TokenConfigError::MissingKey)?;
            Ok((
                Some(EncodingKey::from_secret(&secret)),
                DecodingKey::from_secret(&secret),
            ))
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => rsa(private, public),
        Algorithm::ES256 | Algorithm::ES384 => ec(algorithm, private, public),
        Algorithm::EdDSA => Err(TokenConfigError::InvalidMethod("EdDSA".into())),
    }
}

/// The first PEM section etcd would read, whatever its label says.
fn pem_section(path: &Path, bytes: &[u8]) -> Result<(SectionKind, Vec<u8>), TokenConfigError> {
    let mut reader = bytes;
    rustls_pki_types::pem::from_buf(&mut reader)
        .map_err(|e| bad(path, format!("not PEM: {e}")))?
        .ok_or_else(|| bad(path, "no PEM key or certificate in the file"))
}

/// The subject public key (the key bytes inside a SubjectPublicKeyInfo), from a PEM public key
/// or certificate.
fn subject_public_key(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, TokenConfigError> {
    let (kind, der) = pem_section(path, bytes)?;
    let key = match kind {
        SectionKind::Certificate => {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| bad(path, format!("unreadable certificate: {e}")))?;
            cert.tbs_certificate
                .subject_pki
                .subject_public_key
                .data
                .to_vec()
        }
        _ => {
            let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
                .map_err(|e| bad(path, format!("unreadable public key: {e}")))?;
            spki.subject_public_key.data.to_vec()
        }
    };
    Ok(key)
}

fn rsa(
    private: Option<KeyFile<'_>>,
    public: Option<KeyFile<'_>>,
) -> Result<(Option<EncodingKey>, DecodingKey), TokenConfigError> {
    let configured_public = public
        .as_ref()
        .map(|(path, bytes)| subject_public_key(path, bytes))
        .transpose()?;
    let Some((path, bytes)) = private else {
        let public = configured_public.ok_or(TokenConfigError::MissingKey)?;
        return Ok((None, DecodingKey::from_rsa_der(&public)));
    };
    let (_, der) = pem_section(path, &bytes)?;
    let pair = RsaKeyPair::from_der(&der)
        .or_else(|_| RsaKeyPair::from_pkcs8(&der))
        .map_err(|e| bad(path, format!("not an RSA private key: {e}")))?;
    let signing = EncodingKey::from_rsa_pem(&bytes).map_err(|e| bad(path, e))?;
    let own_public = pair.public().as_ref().to_vec();
    warn_if_other(configured_public.as_deref(), &own_public);
    Ok((Some(signing), DecodingKey::from_rsa_der(&own_public)))
}

fn ec(
    algorithm: Algorithm,
    private: Option<KeyFile<'_>>,
    public: Option<KeyFile<'_>>,
) -> Result<(Option<EncodingKey>, DecodingKey), TokenConfigError> {
    let configured_public = public
        .as_ref()
        .map(|(path, bytes)| subject_public_key(path, bytes))
        .transpose()?;
    let Some((path, bytes)) = private else {
        let public = configured_public.ok_or(TokenConfigError::MissingKey)?;
        return Ok((None, DecodingKey::from_ec_der(&public)));
    };
    let (signing_alg, curve) = if algorithm == Algorithm::ES256 {
        (&ECDSA_P256_SHA256_FIXED_SIGNING, OID_P256)
    } else {
        (&ECDSA_P384_SHA384_FIXED_SIGNING, OID_P384)
    };
    let (kind, der) = pem_section(path, &bytes)?;
    let pkcs8 = match kind {
        SectionKind::EcPrivateKey => sec1_to_pkcs8(&der, curve),
        _ => der,
    };
    let pair =
        EcdsaKeyPair::from_pkcs8(signing_alg, &pkcs8, &SystemRandom::new()).map_err(|e| {
            bad(
                path,
                format!("not an EC private key on the curve of {algorithm:?}: {e}"),
            )
        })?;
    let own_public = pair.public_key().as_ref().to_vec();
    warn_if_other(configured_public.as_deref(), &own_public);
    Ok((
        Some(EncodingKey::from_ec_der(&pkcs8)),
        DecodingKey::from_ec_der(&own_public),
    ))
}

fn warn_if_other(configured: Option<&[u8]>, own: &[u8]) {
    if configured.is_some_and(|c| c != own) {
        tracing::warn!(
            "the JWT pub-key does not match priv-key; tokens are checked with the private key's public half, as etcd does"
        );
    }
}

/// A DER length.
fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_length(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// Wraps an SEC1 `ECPrivateKey` (what `openssl ecparam -genkey` writes) in the PKCS#8
/// envelope ring reads.
fn sec1_to_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    let version = der_tlv(0x02, &[0x00]);
    let algorithm = der_tlv(0x30, &[OID_EC_PUBLIC_KEY, curve_oid].concat());
    let key = der_tlv(0x04, sec1);
    der_tlv(0x30, &[version, algorithm, key].concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::{TokenOptions, TokenProvider};
    use std::process::Command;
    use std::time::Duration;

    /// Keys as operators make them for etcd, with openssl (skipped where it is missing).
    fn openssl(dir: &Path, args: &[&str]) -> bool {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn provider(dir: &Path, spec: &str) -> TokenProvider {
        let spec = spec.replace("{dir}", &dir.display().to_string());
        let options = TokenOptions::parse(&spec).expect("options parse");
        TokenProvider::new(&options, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn round_trip(signer: &TokenProvider, checker: &TokenProvider) {
        let TokenProvider::Jwt(jwt) = signer else {
            panic!("a JWT provider");
        };
        let token = jwt.sign("alice", 5).expect("signs");
        let info = checker.info(&token, 99).expect("the token is valid");
        assert_eq!((info.username.as_str(), info.revision), ("alice", 5));
    }

    #[test]
    fn rsa_and_ec_keys_in_every_form_etcd_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let made = openssl(d, &["genrsa", "-traditional", "-out", "rsa1.key", "2048"])
            && openssl(
                d,
                &[
                    "pkcs8", "-topk8", "-nocrypt", "-in", "rsa1.key", "-out", "rsa8.key",
                ],
            )
            && openssl(d, &["rsa", "-in", "rsa1.key", "-pubout", "-out", "rsa.pub"])
            && openssl(
                d,
                &[
                    "req", "-new", "-x509", "-key", "rsa1.key", "-subj", "/CN=jwt", "-days", "1",
                    "-out", "rsa.crt",
                ],
            )
            && openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "ec1.key",
                ],
            )
            && openssl(
                d,
                &[
                    "pkcs8", "-topk8", "-nocrypt", "-in", "ec1.key", "-out", "ec8.key",
                ],
            )
            && openssl(d, &["ec", "-in", "ec1.key", "-pubout", "-out", "ec.pub"])
            && openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "secp384r1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "ec384.key",
                ],
            );
        if !made {
            eprintln!("openssl is not available; skipping");
            return;
        }
        let rsa1 = provider(d, "jwt,priv-key={dir}/rsa1.key,sign-method=RS256");
        let rsa8 = provider(
            d,
            "jwt,priv-key={dir}/rsa8.key,pub-key={dir}/rsa.pub,sign-method=PS384",
        );
        let by_cert = provider(d, "jwt,pub-key={dir}/rsa.crt,sign-method=RS256");
        let by_pub = provider(d, "jwt,pub-key={dir}/rsa.pub,sign-method=PS384");
        round_trip(&rsa1, &rsa1);
        round_trip(&rsa1, &by_cert);
        round_trip(&rsa8, &by_pub);
        let TokenProvider::Jwt(verify_only) = &by_cert else {
            panic!("a JWT provider");
        };
        assert!(
            verify_only.sign("alice", 1).is_err(),
            "a public key cannot sign"
        );

        let ec1 = provider(d, "jwt,priv-key={dir}/ec1.key,sign-method=ES256");
        let ec8 = provider(d, "jwt,priv-key={dir}/ec8.key,sign-method=ES256");
        let ec_pub = provider(d, "jwt,pub-key={dir}/ec.pub,sign-method=ES256");
        round_trip(&ec1, &ec_pub);
        round_trip(&ec8, &ec1);
        round_trip(
            &provider(d, "jwt,priv-key={dir}/ec384.key,sign-method=ES384"),
            &provider(d, "jwt,priv-key={dir}/ec384.key,sign-method=ES384"),
        );
        // A key of another curve than the method's is refused when the member starts.
        let wrong = TokenOptions::parse(&format!(
            "jwt,priv-key={}/ec384.key,sign-method=ES256",
            d.display()
        ))
        .expect("options parse");
        assert!(TokenProvider::new(&wrong, Duration::from_secs(1)).is_err());
        // A token signed with RS256 is refused by a member that expects PS384.
        let TokenProvider::Jwt(rs) = &rsa1 else {
            panic!("a JWT provider")
        };
        let token = rs.sign("alice", 1).expect("signs");
        assert!(by_pub.info(&token, 1).is_none());
    }

    #[test]
    fn missing_keys_are_refused() {
        for spec in [
            "jwt,sign-method=RS256",
            "jwt,sign-method=ES256",
            "jwt,sign-method=HS256",
        ] {
            let options = TokenOptions::parse(spec).expect("options parse");
            assert!(
                matches!(
                    TokenProvider::new(&options, Duration::from_secs(1)),
                    Err(TokenConfigError::MissingKey)
                ),
                "{spec}"
            );
        }
    }

    #[test]
    fn der_lengths() {
        let mut out = Vec::new();
        der_length(5, &mut out);
        der_length(200, &mut out);
        der_length(300, &mut out);
        assert_eq!(out, vec![5, 0x81, 200, 0x82, 0x01, 0x2c]);
    }
}
