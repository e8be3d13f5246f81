//! Tokens and signatures of the GitHub Actions artifact protocol.
//!
//! The runtime token is a JWT (HS256) that Satchel issues and verifies
//! itself. Its `scp` claim carries `Actions.Results:<runId>:<jobId>` as the
//! real client expects; the `satchel` claim maps it to a Satchel pipeline,
//! run and job. Signed blob URLs carry an expiry and a hex HMAC, so the
//! Azure SDK (which drops `=` padding from query values) cannot mangle them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The Satchel job a runtime token stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// Pipeline key.
    pub pipeline: String,
    /// Run number.
    pub run: u64,
    /// Job key.
    pub job: String,
    /// The stored token that minted it (none: the bootstrap admin). Each
    /// request checks that token again, so revoking it stops the runtime
    /// token too, and the runtime token can do only what it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Identity {
    /// The run id the client sends back (`workflow_run_backend_id`).
    pub fn run_backend_id(&self) -> String {
        format!("satchel.{}.{}", self.pipeline, self.run)
    }

    /// The job id the client sends back (`workflow_job_run_backend_id`).
    pub fn job_backend_id(&self) -> String {
        self.job.clone()
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    scp: String,
    iat: u64,
    exp: u64,
    satchel: Identity,
}

/// Keys derived from the server's secret, one per purpose.
#[derive(Clone)]
pub struct Keys {
    token: [u8; 32],
    url: [u8; 32],
}

fn derive(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(secret).expect("any key length");
    m.update(purpose.as_bytes());
    m.finalize().into_bytes().into()
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn verify_mac(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(data);
    m.verify_slice(tag).is_ok()
}

/// Why a token or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed token.
    #[error("malformed runtime token: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("the runtime token's signature is not valid for this server")]
    BadSignature,
    /// Expired.
    #[error("the runtime token expired; issue a new one with `satchel admin gha-token`")]
    Expired,
}

impl Keys {
    /// Keys derived from `secret` (the data directory's `signing.key`, so
    /// replacing that file revokes every runtime token and signed URL).
    pub fn new(secret: &[u8]) -> Keys {
        Keys {
            token: derive(secret, "satchel gha runtime token v1"),
            url: derive(secret, "satchel gha signed url v1"),
        }
    }

    /// Issues a runtime token for `who`, valid `ttl_secs` from `now`.
    pub fn issue(&self, who: &Identity, now: u64, ttl_secs: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            iss: "satchel".into(),
            scp: format!(
                "Actions.ExampleScope Actions.Results:{}:{}",
                who.run_backend_id(),
                who.job_backend_id()
            ),
            iat: now,
            exp: now + ttl_secs,
            satchel: who.clone(),
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signing = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(mac(&self.token, signing.as_bytes()));
        format!("{signing}.{sig}")
    }

    /// Verifies a runtime token at time `now`; returns who it stands for.
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url".into()))?;
        if !verify_mac(&self.token, format!("{h}.{p}").as_bytes(), &sig) {
            return Err(TokenError::BadSignature);
        }
        let header = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|_| TokenError::Malformed("header is not JSON".into()))?;
        if header["alg"] != "HS256" {
            return Err(TokenError::Malformed(
                "only HS256 tokens are accepted".into(),
            ));
        }
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed("payload is not base64url".into()))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims.satchel)
    }

    /// The signature of `what` (a URL's purpose and target) valid until
    /// `expires`, as hex.
    pub fn sign_url(&self, what: &str, expires: u64) -> String {
        hex::encode(mac(&self.url, format!("{what}\n{expires}").as_bytes()))
    }

    /// Checks a URL signature from [`Keys::sign_url`] at time `now`.
    pub fn check_url(&self, what: &str, expires: u64, sig: &str, now: u64) -> bool {
        let Ok(tag) = hex::decode(sig) else {
            return false;
        };
        expires > now && verify_mac(&self.url, format!("{what}\n{expires}").as_bytes(), &tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Identity {
        Identity {
            pipeline: "web".into(),
            run: 7,
            job: "build".into(),
            by: None,
        }
    }

    #[test]
    fn tokens_round_trip_and_carry_the_scope() {
        let k = Keys::new(b"secret");
        let t = k.issue(&who(), 1000, 60);
        assert_eq!(k.verify(&t, 1059).unwrap(), who());
        let payload = t.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let scp = claims["scp"].as_str().unwrap();
        let results = scp
            .split(' ')
            .find(|s| s.starts_with("Actions.Results:"))
            .unwrap();
        assert_eq!(results.split(':').count(), 3, "{results}");
        assert_eq!(results, "Actions.Results:satchel.web.7:build");
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let k = Keys::new(b"secret");
        let t = k.issue(&who(), 1000, 60);
        assert_eq!(k.verify(&t, 1060), Err(TokenError::Expired));
        assert_eq!(
            Keys::new(b"other").verify(&t, 1001),
            Err(TokenError::BadSignature)
        );
        // Another job's claims under this token's signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let forged = Claims {
            iss: "satchel".into(),
            scp: "Actions.Results:x:y".into(),
            iat: 1000,
            exp: 99999,
            satchel: Identity {
                job: "deploy".into(),
                ..who()
            },
        };
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            k.verify(&parts.join("."), 1001),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(k.verify("a.b", 1), Err(TokenError::Malformed(_))));
        assert!(matches!(k.verify("", 1), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn url_signatures_expire_and_bind_their_target() {
        let k = Keys::new(b"secret");
        let sig = k.sign_url("upload/abc", 2000);
        assert!(sig.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(k.check_url("upload/abc", 2000, &sig, 1999));
        assert!(!k.check_url("upload/abc", 2000, &sig, 2000));
        assert!(!k.check_url("upload/abd", 2000, &sig, 1));
        assert!(!k.check_url("upload/abc", 2001, &sig, 1));
        assert!(!k.check_url("upload/abc", 2000, "zz", 1));
    }
}
