//! Auth tokens, as etcd's `--auth-token` makes them.
//!
//! - `simple` (the default): an opaque `<16 random letters>.<log index>`. The member that takes
//!   an Authenticate request draws the letters and proposes them; every member registers the
//!   token when it applies the entry, so a token is good on any member (one that is behind waits
//!   until it applied that index). Tokens live in memory with a TTL that each use renews; a
//!   member that restarts has forgotten them (clients then log in again, as with etcd).
//! - `jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`: a signed JWT with etcd's claims
//!   (`username`, `revision`, `exp`), valid on every member that has the key.
//! - empty: no tokens at all (client certificates only).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::AuthInfo;

/// etcd's simple token length and alphabet.
const SIMPLE_TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const SIMPLE_TOKEN_LENGTH: usize = 16;
/// How often expired simple tokens are dropped (etcd's TTL resolution).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// etcd's default JWT lifetime.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    /// etcd's `ErrInvalidAuthOpts`.
    #[error("auth: invalid auth options ({0})")]
    InvalidOptions(String),
    /// etcd's `ErrInvalidAuthMethod`.
    #[error("auth: invalid auth signature method ({0})")]
    InvalidMethod(String),
    /// etcd's `ErrMissingKey`.
    #[error("auth: missing key data")]
    MissingKey,
    #[error("auth: cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("auth: {path}: {reason}")]
    BadKey { path: String, reason: String },
    /// etcd's `ErrKeyMismatch`.
    #[error("auth: public and private keys don't match")]
    KeyMismatch,
}

/// `--auth-token`, parsed (keys are read when the member starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOptions {
    Simple,
    Jwt {
        sign_method: String,
        public_key: Option<PathBuf>,
        private_key: Option<PathBuf>,
        ttl: Duration,
    },
    /// `--auth-token ""`: no token is ever issued.
    None,
}

impl TokenOptions {
    /// etcd's `decomposeOpts` and JWT option parsing: `type[,name=value...]`.
    pub fn parse(spec: &str) -> Result<Self, TokenConfigError> {
        let mut parts = spec.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut options: HashMap<&str, &str> = HashMap::new();
        for part in parts {
            let pair: Vec<&str> = part.split('=').collect();
            let [name, value] = pair[..] else {
                return Err(TokenConfigError::InvalidOptions(format!(
                    "{part:?} is not name=value"
                )));
            };
            if options.insert(name, value).is_some() {
                return Err(TokenConfigError::InvalidOptions(format!(
                    "{name} is given twice"
                )));
            }
        }
        match kind {
            "simple" => Ok(TokenOptions::Simple),
            "" => Ok(TokenOptions::None),
            "jwt" => {
                let ttl = match options.get("ttl").filter(|t| !t.is_empty()) {
                    None => DEFAULT_JWT_TTL,
                    Some(raw) => crate::config::parse_go_duration(raw).ok_or_else(|| {
                        TokenConfigError::InvalidOptions(format!("ttl {raw:?} is not a duration"))
                    })?,
                };
                let path = |name: &str| {
                    options
                        .get(name)
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                };
                let sign_method = options.get("sign-method").copied().unwrap_or_default();
                algorithm(sign_method)?;
                Ok(TokenOptions::Jwt {
                    sign_method: sign_method.to_string(),
                    public_key: path("pub-key"),
                    private_key: path("priv-key"),
                    ttl,
                })
            }
            other => Err(TokenConfigError::InvalidOptions(format!(
                "unknown token type {other:?}"
            ))),
        }
    }
}

/// The options of a JWT spec that etcd does not know (it only warns about them).
pub fn unknown_jwt_options(spec: &str) -> Vec<String> {
    if !spec.starts_with("jwt") {
        return Vec::new();
    }
    spec.split(',')
        .skip(1)
        .filter_map(|part| part.split_once('=').map(|(name, _)| name))
        .filter(|name| !["sign-method", "pub-key", "priv-key", "ttl"].contains(name))
        .map(str::to_string)
        .collect()
}

/// The signing methods etcd accepts (golang-jwt's names) that keelson can sign with: ring has
/// no P-521, so ES512 is refused when the member starts.
fn algorithm(name: &str) -> Result<Algorithm, TokenConfigError> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "ES512" => {
            return Err(TokenConfigError::InvalidMethod(
                "ES512 (P-521) is not supported by keelson; use ES256 or ES384".into(),
            ))
        }
        other => return Err(TokenConfigError::InvalidMethod(format!("{other:?}"))),
    })
}

/// Issues and recognises tokens.
pub enum TokenProvider {
    Simple(SimpleTokens),
    Jwt(Box<JwtTokens>),
    None,
}

impl TokenProvider {
    /// `simple_ttl` is `--auth-token-ttl`.
    pub fn new(options: &TokenOptions, simple_ttl: Duration) -> Result<Self, TokenConfigError> {
        Ok(match options {
            TokenOptions::Simple => {
                tracing::warn!("simple token is not cryptographically signed");
                TokenProvider::Simple(SimpleTokens::new(simple_ttl))
            }
            TokenOptions::Jwt {
                sign_method,
                public_key,
                private_key,
                ttl,
            } => TokenProvider::Jwt(Box::new(JwtTokens::load(
                sign_method,
                public_key.as_deref(),
                private_key.as_deref(),
                *ttl,
            )?)),
            TokenOptions::None => TokenProvider::None,
        })
    }

    /// The log index a simple token names: a member must have applied it to know the token.
    pub fn simple_token_index(&self, token: &str) -> Option<u64> {
        match self {
            TokenProvider::Simple(_) => simple_token_index(token),
            _ => None,
        }
    }

    /// The user and auth revision a token stands for; `current_revision` is the member's.
    pub fn info(&self, token: &str, current_revision: u64) -> Option<AuthInfo> {
        match self {
            TokenProvider::Simple(simple) => simple.info(token, current_revision),
            TokenProvider::Jwt(jwt) => jwt.info(token),
            TokenProvider::None => None,
        }
    }

    pub fn enable(&self) {
        if let TokenProvider::Simple(simple) = self {
            simple.set_enabled(true);
        }
    }

    /// Forgets every simple token (auth was turned off).
    pub fn disable(&self) {
        if let TokenProvider::Simple(simple) = self {
            simple.set_enabled(false);
        }
    }

    /// Forgets the simple tokens of a user whose password changed or who was deleted.
    pub fn invalidate_user(&self, username: &str) {
        if let TokenProvider::Simple(simple) = self {
            simple.invalidate_user(username);
        }
    }

    pub fn is_simple(&self) -> bool {
        matches!(self, TokenProvider::Simple(_))
    }
}

/// `<prefix>.<index>` with a decimal index, as etcd's `isValidSimpleToken` reads it.
fn simple_token_index(token: &str) -> Option<u64> {
    let (_, index) = token.split_once('.')?;
    if index.contains('.') {
        return None;
    }
    index.parse::<u64>().ok()
}

/// The random part of a new simple token.
pub fn simple_token_prefix() -> Result<String, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(SIMPLE_TOKEN_LENGTH);
    // Rejection sampling keeps every letter equally likely: 208 is the largest multiple of 52
    // that fits in a byte.
    let limit = (256 / SIMPLE_TOKEN_LETTERS.len() * SIMPLE_TOKEN_LETTERS.len()) as u8;
    let mut bytes = [0u8; 32];
    while out.len() < SIMPLE_TOKEN_LENGTH {
        rng.fill(&mut bytes)?;
        for b in bytes.iter().filter(|b| **b < limit) {
            if out.len() == SIMPLE_TOKEN_LENGTH {
                break;
            }
            out.push(SIMPLE_TOKEN_LETTERS[*b as usize % SIMPLE_TOKEN_LETTERS.len()] as char);
        }
    }
    Ok(out)
}

struct SimpleToken {
    username: String,
    expires: Instant,
}

struct SimpleState {
    enabled: bool,
    tokens: HashMap<String, SimpleToken>,
    last_sweep: Instant,
}

/// etcd's simple tokens: token -> user, each with a TTL renewed on every use.
pub struct SimpleTokens {
    ttl: Duration,
    state: Mutex<SimpleState>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens {
            // etcd falls back to its default for a zero TTL.
            ttl: if ttl.is_zero() {
                Duration::from_secs(300)
            } else {
                ttl
            },
            state: Mutex::new(SimpleState {
                enabled: false,
                tokens: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn set_enabled(&self, enabled: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.enabled = enabled;
            if !enabled {
                state.tokens.clear();
            }
        }
    }

    /// Registers a token (applying an Authenticate entry). Expired tokens are swept here, so
    /// the map never holds more than the logins of one TTL.
    pub fn assign(&self, token: String, username: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if !state.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(state.last_sweep) >= SWEEP_EVERY {
            state.tokens.retain(|_, t| t.expires > now);
            state.last_sweep = now;
        }
        state.tokens.insert(
            token,
            SimpleToken {
                username: username.to_string(),
                expires: now + self.ttl,
            },
        );
    }

    fn info(&self, token: &str, current_revision: u64) -> Option<AuthInfo> {
        simple_token_index(token)?;
        let mut state = self.state.lock().ok()?;
        let now = Instant::now();
        let entry = state.tokens.get_mut(token)?;
        if entry.expires <= now {
            state.tokens.remove(token);
            return None;
        }
        entry.expires = now + self.ttl;
        Some(AuthInfo {
            username: entry.username.clone(),
            revision: current_revision,
        })
    }

    fn invalidate_user(&self, username: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.tokens.retain(|_, t| t.username != username);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().map(|s| s.tokens.len()).unwrap_or(0)
    }
}

/// etcd's JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// JWT tokens signed and checked with the configured key.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// `None` with only a public key: this member checks tokens but cannot issue them.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// etcd's `ErrVerifyOnly`.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("auth: signing a token failed: {0}")]
    Failed(String),
}

impl JwtTokens {
    fn load(
        sign_method: &str,
        public_key: Option<&Path>,
        private_key: Option<&Path>,
        ttl: Duration,
    ) -> Result<Self, TokenConfigError> {
        let algorithm = algorithm(sign_method)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TokenConfigError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let private = private_key
            .map(|p| read(p).map(|bytes| (p, bytes)))
            .transpose()?;
        let public = public_key
            .map(|p| read(p).map(|bytes| (p, bytes)))
            .transpose()?;
        let (signing, verifying) = super::keys::load(algorithm, private, public)?;
        Ok(JwtTokens {
            algorithm,
            signing,
            verifying,
            ttl,
        })
    }

    /// A token for `username` at auth `revision`.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, SignError> {
        let key = self.signing.as_ref().ok_or(SignError::VerifyOnly)?;
        let exp = SystemTime::now()
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| SignError::Failed(e.to_string()))
    }

    fn info(&self, token: &str) -> Option<AuthInfo> {
        let mut validation = Validation::new(self.algorithm);
        // golang-jwt checks the expiry (and a not-before, if any) to the second, without leeway.
        validation.leeway = 0;
        validation.validate_nbf = true;
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation) {
            Ok(data) => Some(AuthInfo {
                username: data.claims.username,
                revision: data.claims.revision,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "failed to parse a JWT token");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed_as_etcd_does() {
        assert_eq!(TokenOptions::parse("simple"), Ok(TokenOptions::Simple));
        assert_eq!(TokenOptions::parse(""), Ok(TokenOptions::None));
        assert!(matches!(
            TokenOptions::parse("opaque"),
            Err(TokenConfigError::InvalidOptions(_))
        ));
        assert!(matches!(
            TokenOptions::parse("jwt,sign-method"),
            Err(TokenConfigError::InvalidOptions(_))
        ));
        assert!(matches!(
            TokenOptions::parse("jwt,ttl=1s,ttl=2s,sign-method=HS256"),
            Err(TokenConfigError::InvalidOptions(_))
        ));
        assert!(matches!(
            TokenOptions::parse("jwt,priv-key=k"),
            Err(TokenConfigError::InvalidMethod(_))
        ));
        assert!(matches!(
            TokenOptions::parse("jwt,sign-method=ES512,priv-key=k"),
            Err(TokenConfigError::InvalidMethod(_))
        ));
        assert_eq!(
            TokenOptions::parse("jwt,pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m"),
            Ok(TokenOptions::Jwt {
                sign_method: "RS256".into(),
                public_key: Some("a.pub".into()),
                private_key: Some("a.key".into()),
                ttl: Duration::from_secs(600),
            })
        );
        let Ok(TokenOptions::Jwt { ttl, .. }) = TokenOptions::parse("jwt,sign-method=HS256") else {
            panic!("a JWT spec without ttl parses");
        };
        assert_eq!(ttl, DEFAULT_JWT_TTL);
    }

    #[test]
    fn simple_tokens_name_their_index() {
        assert_eq!(simple_token_index("abcdefghijklmnop.42"), Some(42));
        assert_eq!(simple_token_index("abc"), None);
        assert_eq!(simple_token_index("a.b.3"), None);
        assert_eq!(simple_token_index("a.-3"), None);
        let prefix = simple_token_prefix().expect("randomness");
        assert_eq!(prefix.len(), SIMPLE_TOKEN_LENGTH);
        assert!(prefix.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(prefix, simple_token_prefix().expect("randomness"));
    }

    #[test]
    fn simple_tokens_expire_unless_used_and_vanish_with_their_user() {
        let tokens = SimpleTokens::new(Duration::from_millis(200));
        tokens.assign("a.1".into(), "alice");
        assert_eq!(tokens.len(), 0, "nothing is kept while auth is off");
        tokens.set_enabled(true);
        tokens.assign("a.1".into(), "alice");
        tokens.assign("b.2".into(), "bob");
        assert_eq!(
            tokens.info("a.1", 7),
            Some(AuthInfo {
                username: "alice".into(),
                revision: 7
            })
        );
        assert_eq!(tokens.info("zz.3", 7), None);
        tokens.invalidate_user("bob");
        assert_eq!(tokens.info("b.2", 7), None);
        // Bounded by the TTL, not a synchronisation: the token must be gone after it.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(tokens.info("a.1", 7), None);
        tokens.assign("c.4".into(), "carol");
        tokens.set_enabled(false);
        assert_eq!(tokens.info("c.4", 7), None);
    }

    #[test]
    fn hmac_jwt_tokens_round_trip_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("secret");
        std::fs::write(&key, b"a shared secret").expect("write key");
        let tokens = JwtTokens::load("HS256", None, Some(&key), Duration::from_secs(60))
            .expect("HMAC key loads");
        let token = tokens.sign("alice", 12).expect("signs");
        assert_eq!(
            tokens.info(&token),
            Some(AuthInfo {
                username: "alice".into(),
                revision: 12
            })
        );
        let mut tampered = token.clone();
        tampered.push('x');
        assert_eq!(tokens.info(&tampered), None);
        let expired = JwtTokens::load("HS256", None, Some(&key), Duration::ZERO)
            .expect("HMAC key loads")
            .sign("alice", 12)
            .expect("signs");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(tokens.info(&expired), None, "an expired token is refused");
        let other = dir.path().join("other");
        std::fs::write(&other, b"another secret").expect("write key");
        let stranger = JwtTokens::load("HS256", None, Some(&other), Duration::from_secs(60))
            .expect("loads")
            .sign("alice", 12)
            .expect("signs");
        assert_eq!(
            tokens.info(&stranger),
            None,
            "another key's token is refused"
        );
    }
}
