//! Login and access tokens. A token is `EXPIRY.MAC`: the expiry in Unix seconds and an
//! HMAC-SHA256 of it under a key derived from the cluster group and the credentials. Every
//! node configured with the same credentials checks every other node's tokens, so nothing
//! about sessions is replicated, and changing the password revokes every token at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Checks credentials and tokens for one node.
#[derive(Clone)]
pub struct Auth {
    username: String,
    password: String,
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("username", &self.username).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// What an HTTP caller presented: a cluster token (`X-Dister-Token`, `token=`) and a login
/// token (`Authorization: Bearer`, `accessToken`), either perhaps absent.
#[derive(Debug, Default)]
pub struct Presented<'a> {
    /// The cluster token, as presented.
    pub cluster: Option<&'a str>,
    /// The login token, as presented.
    pub login: Option<&'a str>,
}

/// The one rule both HTTP APIs apply: open when the node has neither credentials nor a
/// cluster token; else the cluster token (compared in constant time) or a valid login token
/// (when the node has credentials) lets a request in. A login token field carrying the
/// cluster token counts too, for clients that have only that field.
pub fn http_allowed(config: &Config, auth: Option<&Auth>, presented: &Presented<'_>, now: SystemTime) -> bool {
    let Some(want) = config.cluster_token.as_deref() else {
        return auth.is_none_or(|a| presented.login.is_some_and(|t| a.verify(t, now)));
    };
    let matches = |t: Option<&str>| t.is_some_and(|t| bool::from(t.as_bytes().ct_eq(want.as_bytes())));
    matches(presented.cluster)
        || matches(presented.login)
        || auth.is_some_and(|a| presented.login.is_some_and(|t| a.verify(t, now)))
}

/// A token issued by [`Auth::login`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// What the caller presents.
    pub token: String,
    /// How long it is valid for.
    pub ttl: Duration,
}

impl Auth {
    /// The node's auth, when its config sets credentials.
    pub fn from_config(config: &Config) -> Option<Auth> {
        let (username, password) = (config.auth_username.clone()?, config.auth_password.clone()?);
        let mut h = Sha256::new();
        // The cluster token, when there is one, is mixed in: a token that leaks (Nacos clients
        // put it in URLs) then does not allow guessing the password offline.
        let cluster = config.cluster_token.as_deref().unwrap_or_default();
        for part in ["dister-auth-v1", config.group.as_str(), cluster, username.as_str(), password.as_str()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let key = h.finalize().to_vec();
        Some(Auth { username, password, key, ttl: Duration::from_secs(config.auth_token_ttl_secs) })
    }

    /// A token for the right credentials (compared in constant time), `None` for wrong ones.
    pub fn login(&self, username: &str, password: &str, now: SystemTime) -> Option<Token> {
        let user_ok = username.as_bytes().ct_eq(self.username.as_bytes());
        let pass_ok = password.as_bytes().ct_eq(self.password.as_bytes());
        if !bool::from(user_ok & pass_ok) {
            return None;
        }
        let expiry = unix_secs(now).saturating_add(self.ttl.as_secs());
        Some(Token { token: format!("{expiry}.{}", self.mac(expiry)), ttl: self.ttl })
    }

    /// Whether `token` was issued by a node with these credentials and has not expired.
    pub fn verify(&self, token: &str, now: SystemTime) -> bool {
        let Some((expiry, mac)) = token.split_once('.') else { return false };
        let Ok(expiry) = expiry.parse::<u64>() else { return false };
        bool::from(mac.as_bytes().ct_eq(self.mac(expiry).as_bytes())) && expiry > unix_secs(now)
    }

    fn mac(&self, expiry: u64) -> String {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        m.update(&expiry.to_be_bytes());
        hex(&m.finalize().into_bytes())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(password: &str) -> Config {
        Config { auth_username: Some("nacos".into()), auth_password: Some(password.into()), ..Config::default() }
    }

    #[test]
    fn tokens_check_on_every_node_with_the_same_credentials_and_expire() {
        let now = SystemTime::now();
        let a = Auth::from_config(&config("secret-pw")).unwrap();
        let b = Auth::from_config(&config("secret-pw")).unwrap();
        assert!(a.login("nacos", "wrong-pw", now).is_none());
        assert!(a.login("other", "secret-pw", now).is_none());
        let t = a.login("nacos", "secret-pw", now).unwrap();
        assert!(b.verify(&t.token, now), "another node takes the token");
        assert!(!b.verify(&t.token, now + Duration::from_secs(18_001)), "expired");
        let changed = Auth::from_config(&config("other-pw")).unwrap();
        assert!(!changed.verify(&t.token, now), "a new password revokes old tokens");
        let (expiry, mac) = t.token.split_once('.').unwrap();
        let later: u64 = expiry.parse::<u64>().unwrap() + 1000;
        assert!(!a.verify(&format!("{later}.{mac}"), now), "the expiry is signed");
        for junk in ["", ".", "x.y", "1", "99999999999.", "abc.def"] {
            assert!(!a.verify(junk, now), "{junk:?}");
        }
        assert!(Auth::from_config(&Config::default()).is_none());
    }
}
