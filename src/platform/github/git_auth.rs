//! The GitHub token for git over HTTPS: handed to one git call as environment config
//! (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_n`, `GIT_CONFIG_VALUE_n`) setting
//! `http.<origin>/.extraHeader = Authorization: Basic base64("x-access-token:<token>")` — GitHub's
//! form for installation tokens, which fine-grained and classic tokens accept too. Never in argv,
//! in a URL or in a log: the header lives only in that git process's environment, and only for
//! the GitHub host the configuration names (a task's remote elsewhere never sees the token).

use base64::Engine as _;

/// The user name GitHub expects beside an installation token in Basic auth.
const TOKEN_USER: &str = "x-access-token";

/// The web origin (`scheme://host[:port]`) git talks to for the API at `api_url`:
/// `https://api.github.com` → `https://github.com`; GitHub Enterprise (`https://HOST/api/v3`) →
/// `https://HOST`; anything else (a fake on loopback) → its own origin.
pub(crate) fn git_origin(api_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(api_url).ok()?;
    let host = url.host_str()?;
    let host = if host == "api.github.com" {
        "github.com"
    } else {
        host
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{}://{host}{port}", url.scheme()))
}

/// The origin of a remote URL (`scheme://host[:port]`), when it is `http(s)` and names no user
/// (a URL carrying its own credentials is left to them).
fn remote_origin(remote: &str) -> Option<String> {
    let url = reqwest::Url::parse(remote).ok()?;
    if !matches!(url.scheme(), "https" | "http") || !url.username().is_empty() {
        return None;
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{}://{}{port}", url.scheme(), url.host_str()?))
}

/// Whether `remote` is on the GitHub host of `api_url`: only then does git get the token.
pub(crate) fn is_github_remote(api_url: &str, remote: &str) -> bool {
    match (git_origin(api_url), remote_origin(remote)) {
        (Some(github), Some(remote)) => github.eq_ignore_ascii_case(&remote),
        _ => false,
    }
}

/// Plain `http` is allowed only to a loopback host (a test's fake GitHub); every other remote
/// keeps git's pinned `protocol.allow` rules.
fn is_loopback_http(remote: &str) -> bool {
    reqwest::Url::parse(remote).is_ok_and(|url| {
        let host = url.host_str().unwrap_or_default();
        let ip = host.trim_start_matches('[').trim_end_matches(']');
        url.scheme() == "http"
            && ip
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// The environment that hands `token` to one git call on `remote` (which must be on the GitHub
/// host: see [`is_github_remote`]); empty when `remote` is not an `http(s)` URL.
pub(crate) fn git_env(remote: &str, token: &str) -> Vec<(String, String)> {
    let Some(origin) = remote_origin(remote) else {
        return Vec::new();
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:{token}"));
    let mut config = vec![(
        format!("http.{origin}/.extraHeader"),
        format!("Authorization: Basic {basic}"),
    )];
    if is_loopback_http(remote) {
        config.push(("protocol.http.allow".into(), "always".into()));
    }
    let mut env = vec![("GIT_CONFIG_COUNT".to_owned(), config.len().to_string())];
    for (index, (key, value)) in config.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{index}"), key));
        env.push((format!("GIT_CONFIG_VALUE_{index}"), value));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_to_the_github_host_only() {
        let api = "https://api.github.com";
        assert!(is_github_remote(api, "https://github.com/acme/w.git"));
        assert!(!is_github_remote(api, "https://evil.example/acme/w.git"));
        assert!(!is_github_remote(
            api,
            "https://github.com.evil.example/a/w.git"
        ));
        assert!(!is_github_remote(api, "ssh://git@github.com/acme/w.git"));
        assert!(!is_github_remote(api, "https://me@github.com/acme/w.git"));
        let ghe = "https://ghe.example/api/v3";
        assert!(is_github_remote(ghe, "https://ghe.example/acme/w.git"));
        assert!(!is_github_remote(
            ghe,
            "https://ghe.example:8443/acme/w.git"
        ));
        let fake = "http://127.0.0.1:4000";
        assert!(is_github_remote(fake, "http://127.0.0.1:4000/acme/w.git"));
        assert!(!is_github_remote(fake, "http://127.0.0.1:4001/acme/w.git"));
    }

    #[test]
    fn the_header_is_basic_x_access_token_in_env_config() {
        let env = git_env("https://github.com/acme/w.git", "ghs_abc");
        let expected = base64::engine::general_purpose::STANDARD.encode("x-access-token:ghs_abc");
        assert_eq!(
            env,
            [
                ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
                (
                    "GIT_CONFIG_KEY_0".to_owned(),
                    "http.https://github.com/.extraHeader".to_owned()
                ),
                (
                    "GIT_CONFIG_VALUE_0".to_owned(),
                    format!("Authorization: Basic {expected}")
                ),
            ]
        );
    }

    #[test]
    fn plain_http_is_allowed_to_loopback_only() {
        let local = git_env("http://127.0.0.1:4000/acme/w.git", "t");
        assert!(local.contains(&("GIT_CONFIG_KEY_1".into(), "protocol.http.allow".into())));
        let remote = git_env("http://example.com/acme/w.git", "t");
        assert!(!remote.iter().any(|(_, v)| v == "protocol.http.allow"));
        assert!(git_env("ssh://git@github.com/a/w.git", "t").is_empty());
    }
}
