//! Who glitchlab is to GitHub: a token from the environment, or a GitHub App — a JWT (RS256,
//! signed with the App's key through aws-lc-rs, the crypto rustls already builds) exchanged for an
//! installation token, renewed `token_refresh_margin_secs` before it expires, before every call
//! and every push. Token values never leave this module except in an `Authorization` header.

use std::time::Duration;

use aws_lc_rs::signature::RsaKeyPair;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::GithubError;

/// A JWT's life: GitHub refuses more than ten minutes.
const JWT_LIFE: Duration = Duration::from_secs(9 * 60);
/// The JWT's `iat` is set this far back, for clock drift (GitHub's advice).
const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// The largest key file read.
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Where tokens come from.
pub(crate) enum Credentials {
    /// A token in this environment variable, read at each call (a rotated token is picked up).
    Env(String),
    /// A GitHub App's installation.
    App(App),
}

/// A GitHub App: its key, and the installation token it holds now.
pub(crate) struct App {
    app_id: u64,
    installation_id: u64,
    key: RsaKeyPair,
    refresh_margin: Duration,
    /// The installation token and when it expires; one refresh at a time.
    cached: tokio::sync::Mutex<Option<(String, DateTime<Utc>)>>,
}

/// GitHub's answer to `POST /app/installations/{id}/access_tokens`.
#[derive(Deserialize)]
struct InstallationToken {
    token: String,
    expires_at: DateTime<Utc>,
}

impl App {
    /// Reads the App's key (PEM: PKCS#1 as GitHub hands it out, or PKCS#8).
    pub(crate) fn load(
        app_id: u64,
        installation_id: u64,
        key_file: &std::path::Path,
        refresh_margin: Duration,
    ) -> Result<Self, GithubError> {
        let bad = |reason: String| GithubError::Config(format!("{}: {reason}", key_file.display()));
        let size = std::fs::metadata(key_file)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if size > KEY_FILE_BYTES_MAX {
            return Err(bad("too large for a key".into()));
        }
        let pem = std::fs::read_to_string(key_file).map_err(|e| bad(e.to_string()))?;
        let key = parse_rsa_pem(&pem).map_err(bad)?;
        Ok(Self {
            app_id,
            installation_id,
            key,
            refresh_margin,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// A JWT for the App, valid for [`JWT_LIFE`] from `now`.
    pub(crate) fn jwt(&self, now: DateTime<Utc>) -> Result<String, GithubError> {
        sign_jwt(&self.key, self.app_id, now)
    }

    /// The installation token, renewed first when it expires within the margin.
    pub(crate) async fn token(
        &self,
        http: &reqwest::Client,
        api_url: &str,
    ) -> Result<String, GithubError> {
        let mut cached = self.cached.lock().await;
        let now = Utc::now();
        if let Some((token, expires_at)) = cached.as_ref() {
            let margin = chrono::Duration::from_std(self.refresh_margin).unwrap_or_default();
            if *expires_at - margin > now {
                return Ok(token.clone());
            }
        }
        let url = format!(
            "{api_url}/app/installations/{}/access_tokens",
            self.installation_id
        );
        let response = http
            .post(url)
            .bearer_auth(self.jwt(now)?)
            .header("accept", "application/vnd.github+json")
            .send()
            .await
            .map_err(|e| GithubError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 201 {
            return Err(GithubError::Status {
                step: "installation token",
                status,
                message: String::new(),
            });
        }
        let minted: InstallationToken = response
            .json()
            .await
            .map_err(|e| GithubError::Decode(e.to_string()))?;
        tracing::info!(expires_at = %minted.expires_at, "github: installation token renewed");
        *cached = Some((minted.token.clone(), minted.expires_at));
        Ok(minted.token)
    }
}

/// The RSA key in a PEM text (`RSA PRIVATE KEY`: PKCS#1; `PRIVATE KEY`: PKCS#8).
fn parse_rsa_pem(pem: &str) -> Result<RsaKeyPair, String> {
    let pkcs1 = pem.contains("BEGIN RSA PRIVATE KEY");
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("not PEM: {e}"))?;
    let key = if pkcs1 {
        RsaKeyPair::from_der(&der)
    } else {
        RsaKeyPair::from_pkcs8(&der)
    };
    key.map_err(|e| format!("not an RSA private key: {e}"))
}

/// `header.claims.signature`, RS256, `iss` = the App's id.
fn sign_jwt(key: &RsaKeyPair, app_id: u64, now: DateTime<Utc>) -> Result<String, GithubError> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let issued = now.timestamp() - JWT_BACKDATE.as_secs() as i64;
    let expires = now.timestamp() + JWT_LIFE.as_secs() as i64;
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64(format!(r#"{{"iat":{issued},"exp":{expires},"iss":"{app_id}"}}"#).as_bytes());
    let signing_input = format!("{header}.{claims}");
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| GithubError::Config("the App key could not sign".into()))?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair as _;

    fn test_key() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("app.pem");
        let made = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&path)
            .arg("2048")
            .output()
            .ok()?;
        made.status.success().then_some((dir, path))
    }

    /// The JWT verifies with the key's public half, names the App and lives under ten minutes.
    #[test]
    fn the_app_jwt_is_rs256_signed_by_the_key() {
        let Some((_dir, path)) = test_key() else {
            eprintln!("skipped: openssl is not installed to make a test key");
            return;
        };
        let app = App::load(42, 7, &path, Duration::from_secs(300)).unwrap();
        let now = Utc::now();
        let jwt = app.jwt(now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap()
        };
        let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(claims["iss"], "42");
        let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert!(life <= 600, "{life}");
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            app.key.public_key().as_ref().to_vec(),
        );
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(public.verify(input.as_bytes(), &decode(parts[2])).is_ok());
    }
}
