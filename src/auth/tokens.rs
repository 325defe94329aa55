//! Access tokens (HS256 JWTs, algorithm pinned on verify, `exp` enforced with no leeway) and
//! refresh tokens (random, stored only as SHA-256 digests).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::DbConn;
use crate::domain::ids::UserId;
use crate::domain::values::Role;
use crate::error::{Error, Result};

/// Name of the settings row that keeps a generated signing secret across restarts.
const SECRET_SETTING: &str = "jwt_secret";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string per RFC 7519.
    pub sub: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    /// The sign-in session the token belongs to: ending it refuses the token before its `exp`.
    pub sid: i64,
}

impl Claims {
    pub fn user_id(&self) -> Result<UserId> {
        self.sub.parse().map(UserId).map_err(|_| Error::InvalidToken)
    }

    /// What a connection keeps of the token it was opened or renewed with.
    pub fn credentials(&self) -> Result<Credentials> {
        Ok(Credentials {
            user: self.user_id()?,
            session: SignInId(self.sid),
            issued_at: self.iat,
            expires_at: self.exp,
        })
    }
}

/// A sign-in session's id (the `sid` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignInId(pub i64);

/// A verified access token: whose it is, which sign-in session it continues, and until when (unix
/// seconds) it may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: UserId,
    pub session: SignInId,
    pub issued_at: i64,
    pub expires_at: i64,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Seconds.
    pub access_ttl: u64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], access_ttl: u64) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
        }
    }

    pub fn issue(&self, user: UserId, role: Role, session: SignInId) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            role,
            iat: now,
            exp: now + self.access_ttl as i64,
            sid: session.0,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(anyhow::anyhow!("signing a token failed: {e}")))
    }

    /// Expired tokens are told apart so clients know to refresh; every other failure
    /// (bad signature, other algorithm, `alg: none`, garbage) is simply invalid.
    ///
    /// RFC 7519 makes `exp` the first moment a token must not be accepted; the library accepts it
    /// through that whole second, so the check is repeated here in milliseconds — the same instant
    /// at which a live connection holding the token is closed.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                _ => Error::InvalidToken,
            })?;
        if claims.exp.saturating_mul(1000) <= crate::clock::now_ms() {
            return Err(Error::TokenExpired);
        }
        Ok(claims)
    }
}

/// 256 random bits, hex-encoded.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// What the database keeps of a refresh token.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signing secret kept in the database, created on first start.
pub fn stored_secret(conn: &mut DbConn) -> Result<String> {
    crate::db::stored_setting(conn, SECRET_SETTING, random_secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify() {
        let keys = TokenKeys::new(b"secret", 60);
        let token = keys.issue(UserId(7), Role::Operator, SignInId(3)).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.user_id().unwrap(), UserId(7));
        assert_eq!(claims.credentials().unwrap().session, SignInId(3));
        assert_eq!(claims.role, Role::Operator);
    }

    #[test]
    fn other_secrets_and_expired_tokens_fail() {
        let keys = TokenKeys::new(b"secret", 60);
        let other = TokenKeys::new(b"other", 60)
            .issue(UserId(1), Role::Admin, SignInId(1))
            .unwrap();
        assert!(matches!(keys.verify(&other), Err(Error::InvalidToken)));
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: "1".into(),
            role: Role::User,
            iat: now - 120,
            exp: now - 60,
            sid: 1,
        };
        let expired = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(keys.verify(&expired), Err(Error::TokenExpired)));
    }

    #[test]
    fn tokens_without_a_session_are_refused() {
        // Signed with the right key, but from before sign-in sessions: no `sid`.
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({"sub": "1", "role": "admin", "iat": now, "exp": now + 60});
        let old = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(
            TokenKeys::new(b"secret", 60).verify(&old),
            Err(Error::InvalidToken)
        ));
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let keys = TokenKeys::new(b"secret", 60);
        // {"alg":"none","typ":"JWT"} . {"sub":"1","role":"admin","iat":1,"exp":9999999999} .
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIiwiaWF0IjoxLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(matches!(keys.verify(none), Err(Error::InvalidToken)));
    }

    #[test]
    fn digests_are_stable_hex() {
        assert_eq!(digest("abc").len(), 64);
        assert_eq!(digest("abc"), digest("abc"));
        assert_eq!(random_secret().len(), 64);
    }
}
