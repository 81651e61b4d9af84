//! Browser sessions of the web control plane (`app::http::ui`): a page cannot send a bearer
//! header with an `EventSource` or keep a secret out of reach of its own scripts, so a token
//! secret is exchanged once (`POST /ui/login`) for an HttpOnly, `SameSite=Strict` cookie that the
//! API accepts as an alternative to `Authorization: Bearer`.
//!
//! A session is bound to the exact token it was opened with (by the token's secret hash): revoking
//! or expiring the token ends its sessions at once. Every request authenticated by the cookie that
//! changes something must also carry the session's CSRF token in [`CSRF_HEADER`] (the page's
//! script reads it from the login answer or `GET /ui/session`, which another origin cannot read);
//! that, `SameSite=Strict` and the guard's `Origin` check each stop a cross-site request.
//!
//! Sessions live in memory only (a restart logs everyone out), at most [`SESSIONS_MAX`] at once,
//! each for [`SESSION_TTL`]. One principal (token) holds at most [`SESSIONS_PER_PRINCIPAL_MAX`]:
//! its next login ends *its own* oldest session, never another principal's. A full table drops
//! its expired sessions; if it is still full, the principal's own oldest session makes room, and a
//! principal with none is refused (`503 TOO_MANY_SESSIONS`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::model::codes;

/// The cookie that carries a session id.
pub(crate) const COOKIE_NAME: &str = "glitchlab_session";
/// The header a cookie-authenticated change must carry the session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions open at once: a bound on memory whatever a client does.
pub(crate) const SESSIONS_MAX: usize = 1024;
/// Sessions one principal holds at once (browsers and tabs of one person; a script logging in
/// in a loop only pushes out its own).
pub(crate) const SESSIONS_PER_PRINCIPAL_MAX: usize = 16;
/// How long a session lasts after login (a working day; log in again after).
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Random bytes in a session id and in a CSRF token.
const RANDOM_BYTES: usize = 32;

/// One open session.
#[derive(Debug, Clone)]
struct Session {
    /// The SHA-256 (hex) of the secret of the token it was opened with.
    token_sha256: String,
    /// The CSRF token every change must carry.
    csrf: String,
    /// When it was opened (the oldest goes first when the table is full).
    opened: Instant,
}

/// What a valid session cookie stands for.
#[derive(Debug, Clone)]
pub(crate) struct SessionFacts {
    /// The SHA-256 (hex) of the secret of the token it was opened with.
    pub token_sha256: String,
    /// The session's CSRF token.
    pub csrf: String,
}

/// A freshly opened session: the cookie value and the CSRF token, shown to the page once.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    /// The session id, the cookie's value.
    pub id: String,
    /// The CSRF token the page sends in [`CSRF_HEADER`].
    pub csrf: String,
}

/// The table of open sessions, keyed by the SHA-256 of their id (a lookup's timing then says
/// nothing about the ids stored).
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

/// Why no session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenRefusal {
    /// [`SESSIONS_MAX`] unexpired sessions are open, none of them the principal's.
    Full,
    /// The OS has no randomness to give (no session is better than a guessable one).
    NoRandomness,
}

impl Sessions {
    /// Opens a session for the token whose secret hashes to `token_sha256`, ending that token's
    /// oldest session when it holds [`SESSIONS_PER_PRINCIPAL_MAX`] already.
    pub(crate) fn open(&self, token_sha256: &str) -> Result<Opened, OpenRefusal> {
        let id = random_hex().ok_or(OpenRefusal::NoRandomness)?;
        let csrf = random_hex().ok_or(OpenRefusal::NoRandomness)?;
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held = open
            .values()
            .filter(|session| session.token_sha256 == token_sha256)
            .count();
        // Bounded: each turn removes one of the principal's sessions.
        while held >= SESSIONS_PER_PRINCIPAL_MAX && remove_oldest_of(&mut open, token_sha256) {
            held -= 1;
        }
        if open.len() >= SESSIONS_MAX {
            open.retain(|_, session| now.duration_since(session.opened) < SESSION_TTL);
        }
        // Still full: only the principal's own oldest may make room.
        if open.len() >= SESSIONS_MAX && !remove_oldest_of(&mut open, token_sha256) {
            return Err(OpenRefusal::Full);
        }
        open.insert(
            key(&id),
            Session {
                token_sha256: token_sha256.to_owned(),
                csrf: csrf.clone(),
                opened: now,
            },
        );
        Ok(Opened { id, csrf })
    }

    /// The session `id` names, if it is open and not expired.
    pub(crate) fn find(&self, id: &str) -> Option<SessionFacts> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(id);
        let session = open.get(&key)?;
        if session.opened.elapsed() >= SESSION_TTL {
            open.remove(&key);
            return None;
        }
        Some(SessionFacts {
            token_sha256: session.token_sha256.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Ends the session `id` names (nothing when there is none).
    pub(crate) fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&key(id));
    }

    /// Sessions open now (expired ones included until they are looked up or pushed out).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Ends the oldest session of the token whose secret hashes to `token_sha256`; whether it had one.
fn remove_oldest_of(open: &mut HashMap<[u8; 32], Session>, token_sha256: &str) -> bool {
    let oldest = open
        .iter()
        .filter(|(_, session)| session.token_sha256 == token_sha256)
        .min_by_key(|(_, session)| session.opened)
        .map(|(key, _)| *key);
    oldest.is_some_and(|key| open.remove(&key).is_some())
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> Option<String> {
    let mut bytes = [0_u8; RANDOM_BYTES];
    match getrandom::fill(&mut bytes) {
        Ok(()) => Some(hex::encode(bytes)),
        Err(error) => {
            tracing::error!(%error, "the OS random generator failed");
            None
        }
    }
}

/// The session id of a request's cookie, if it sends one.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Whether `request` carries `csrf` in [`CSRF_HEADER`] (compared in constant time).
pub(crate) fn csrf_matches(request: &Request, csrf: &str) -> bool {
    request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())))
}

/// The answer to a cookie-authenticated change without its session's CSRF token:
/// `403 CSRF_REJECTED`, nothing run.
pub(crate) fn csrf_refused() -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        codes::CSRF_REJECTED,
        format!(
            "a request authenticated by the session cookie must send the session's CSRF token in \
             `{CSRF_HEADER}`"
        ),
    )
    .into_response()
}

/// The `Set-Cookie` value that stores session `id` (`Secure` when the service serves TLS, so
/// the cookie never travels in clear).
pub(crate) fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget its session cookie.
pub(crate) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_session_is_found_by_its_id_only_and_closes() {
        let sessions = Sessions::default();
        let opened = sessions.open("hash").unwrap();
        assert_eq!(opened.id.len(), 64);
        assert_ne!(opened.id, opened.csrf);
        let facts = sessions.find(&opened.id).unwrap();
        assert_eq!(facts.token_sha256, "hash");
        assert_eq!(facts.csrf, opened.csrf);
        assert!(sessions.find(&opened.csrf).is_none());
        sessions.close(&opened.id);
        assert!(sessions.find(&opened.id).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open("h0").unwrap();
        for n in 1..SESSIONS_MAX {
            sessions.open(&format!("h{n}")).unwrap();
        }
        assert_eq!(sessions.len(), SESSIONS_MAX);
        // Full of other principals' sessions: refused, nobody's pushed out.
        assert_eq!(sessions.open("new").unwrap_err(), OpenRefusal::Full);
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert!(sessions.find(&first.id).is_some());
        // A principal already in the table may still log in: its own oldest goes.
        sessions.open("h0").unwrap();
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert!(sessions.find(&first.id).is_none());
    }

    #[test]
    fn a_principal_logging_in_again_and_again_pushes_out_only_its_own_sessions() {
        let sessions = Sessions::default();
        let admin = sessions.open("admin").unwrap();
        let first = sessions.open("viewer").unwrap();
        for _ in 0..SESSIONS_MAX + 100 {
            sessions.open("viewer").unwrap();
        }
        assert!(
            sessions.find(&admin.id).is_some(),
            "another principal's session stays"
        );
        assert!(
            sessions.find(&first.id).is_none(),
            "the viewer's oldest went first"
        );
        assert_eq!(sessions.len(), SESSIONS_PER_PRINCIPAL_MAX + 1);
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_http_only_strict() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; glitchlab_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("glitchlab_session="),
        );
        assert_eq!(cookie(&headers), None);
        let set = set_cookie("abc", true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.ends_with("; Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
