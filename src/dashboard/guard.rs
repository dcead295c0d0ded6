//! Who may see the dashboard, and which requests may change anything.
//!
//! Like a notebook server: the first URL carries a secret. It is a one-time code (each
//! `dashboard` command makes a new one, valid for [`CODE_LIFETIME`] and used up when opened, so
//! an address seen in a process list or a shell history is worth nothing), or the API token when
//! one is set. Opening it sets a cookie (HttpOnly, named for the port) and redirects to the same
//! page with the engine's *page key* in the fragment, which the page keeps in `localStorage` and
//! sends with every data request (`x-orchestr8-key`; `?k=` for the event stream, which cannot
//! send headers). Both are needed: browsers send a cookie to every port of a host, but
//! `localStorage` belongs to one origin (port included), and no page of another origin can add
//! the header to a request. So another site — another port on localhost included — can neither
//! read the data nor change anything through the user's browser. Scripts may send the API token
//! as a bearer token instead.
//!
//! The `Host` must name this machine (or the configured address), so a DNS-rebinding page
//! cannot talk to the dashboard under its own domain; a change must also come from the
//! dashboard's own origin (`Origin`, `Sec-Fetch-Site`). Every decision here is a pure function
//! of the request's headers and the keys.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::rest::middleware::{bearer, digest, host_name, is_local_host_header};

/// How long a first URL's code stays valid.
pub const CODE_LIFETIME: Duration = Duration::from_secs(300);
/// Codes kept at most (the oldest goes first).
const MAX_CODES: usize = 32;

/// Secrets of one running dashboard.
pub struct Keys {
    /// SHA-256 of the API token: opens the dashboard, and is accepted as a bearer token.
    api: Option<[u8; 32]>,
    /// Codes not used yet (SHA-256) and when each expires.
    codes: Mutex<Vec<([u8; 32], Instant)>>,
    /// The cookie's value.
    session: String,
    /// What every data request carries in [`KEY_HEADER`].
    key: String,
    /// The cookie's name.
    cookie: String,
    /// Host names besides loopback that requests may be addressed to (the listen address).
    hosts: Vec<String>,
}

pub const KEY_HEADER: &str = "x-orchestr8-key";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No or a wrong token, cookie or page key.
    NotSignedIn,
    /// The `Host` names another machine.
    ForeignHost(String),
    /// A state change from another origin or without the page key.
    CrossSite(String),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::NotSignedIn => "not signed in to this dashboard: run `orchestr8-async-server dashboard` and open the address it prints (scripts: send `Authorization: Bearer <ORCHESTR8_API_TOKEN>`)".into(),
            Refusal::ForeignHost(h) => format!("Host {h:?} is not this machine: open the dashboard at the address `orchestr8-async-server dashboard` prints"),
            Refusal::CrossSite(why) => format!("refused a cross-site request ({why}): changes can only be made from the dashboard's own pages"),
        }
    }
}

/// The headers that decide.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen<'a> {
    pub host: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    /// The page key, from its header or the `k` query parameter.
    pub key: Option<&'a str>,
}

fn same(a: &str, want: &[u8; 32]) -> bool {
    bool::from(digest(a).ct_eq(want))
}

fn equal(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A random hex string of 32 bytes.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

impl Keys {
    /// `api_token`: `ORCHESTR8_API_TOKEN`; `port`: where the dashboard listens; `listen_host`:
    /// the configured address.
    pub fn new(api_token: Option<&str>, port: u16, listen_host: &str) -> Keys {
        Keys {
            api: api_token.map(digest),
            codes: Mutex::new(Vec::new()),
            session: random_secret(),
            key: random_secret(),
            cookie: format!("orchestr8_dashboard_{port}"),
            hosts: vec![listen_host.trim_matches(['[', ']']).to_ascii_lowercase()],
        }
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, Vec<([u8; 32], Instant)>> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new one-time code for a first URL.
    pub fn mint(&self, now: Instant) -> String {
        let code = random_secret();
        let mut codes = self.codes();
        codes.retain(|(_, until)| *until > now);
        if codes.len() >= MAX_CODES {
            codes.remove(0);
        }
        codes.push((digest(&code), now + CODE_LIFETIME));
        code
    }

    /// Codes handed out and neither used nor expired (someone is about to open the dashboard).
    pub fn pending(&self, now: Instant) -> usize {
        self.codes()
            .iter()
            .filter(|(_, until)| *until > now)
            .count()
    }

    /// Whether `token` from a first URL opens the dashboard; a code is used up by it.
    pub fn opens(&self, token: &str, now: Instant) -> bool {
        if self.api.as_ref().is_some_and(|api| same(token, api)) {
            return true;
        }
        let d = digest(token);
        let mut codes = self.codes();
        let found = codes
            .iter()
            .position(|(c, until)| bool::from(c.ct_eq(&d)) && *until > now);
        match found {
            Some(i) => {
                codes.remove(i);
                true
            }
            None => false,
        }
    }

    /// The page key, for the fragment of the address a first URL redirects to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The `Set-Cookie` value that signs a browser in. `Lax`, so that following a link to the
    /// dashboard from elsewhere shows it; the page key, not the cookie, guards the data.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            self.cookie, self.session
        )
    }

    /// Whether the request is addressed to this machine (or the listen address).
    pub fn check_host(&self, seen: &Seen) -> Result<(), Refusal> {
        let host = seen.host.unwrap_or("");
        if self.host_allowed(host) {
            Ok(())
        } else {
            Err(Refusal::ForeignHost(host.to_string()))
        }
    }

    /// Whether the page itself (the HTML, which holds no data) may be served.
    pub fn check_page(&self, seen: &Seen) -> Result<(), Refusal> {
        self.check_host(seen)?;
        if self.by_cookie(seen) {
            Ok(())
        } else {
            Err(Refusal::NotSignedIn)
        }
    }

    /// Whether a data request may read; `change`: whether it may also change something.
    pub fn check(&self, seen: &Seen, change: bool) -> Result<(), Refusal> {
        self.check_host(seen)?;
        let by_bearer = match (&self.api, seen.authorization.and_then(bearer)) {
            (Some(want), Some(given)) => same(given, want),
            _ => false,
        };
        if by_bearer {
            return Ok(());
        }
        if !self.by_cookie(seen) {
            return Err(Refusal::NotSignedIn);
        }
        if change {
            same_origin(seen)?;
        }
        match seen.key {
            Some(k) if equal(k, &self.key) => Ok(()),
            _ if change => Err(Refusal::CrossSite(format!(
                "no or a wrong {KEY_HEADER} header"
            ))),
            _ => Err(Refusal::NotSignedIn),
        }
    }

    /// Any cookie of our name with our value (another port's page could set one of the same
    /// name, so not only the first counts).
    fn by_cookie(&self, seen: &Seen) -> bool {
        seen.cookie
            .is_some_and(|c| cookie_values(c, &self.cookie).any(|v| equal(v, &self.session)))
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        is_local_host_header(host) || (!name.is_empty() && self.hosts.contains(&name))
    }
}

/// A browser's state change must come from the dashboard's own page.
fn same_origin(seen: &Seen) -> Result<(), Refusal> {
    if let Some(site) = seen.sec_fetch_site {
        if site != "same-origin" {
            return Err(Refusal::CrossSite(format!("Sec-Fetch-Site: {site}")));
        }
    }
    if let Some(origin) = seen.origin {
        let host = seen.host.unwrap_or("");
        let own = [format!("http://{host}"), format!("https://{host}")];
        if !own.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Err(Refusal::CrossSite(format!("Origin {origin}")));
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The values of cookie `name` in a `Cookie` header.
fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    header.split(';').filter_map(move |kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(Some("api"), 4000, "127.0.0.1")
    }

    fn cookie_of(k: &Keys) -> String {
        format!("other=1; {}", k.set_cookie().split(';').next().unwrap())
    }

    #[test]
    fn a_code_opens_once_and_expires_the_api_token_always_opens() {
        let k = keys();
        let now = Instant::now();
        let code = k.mint(now);
        assert_eq!(k.pending(now), 1);
        assert!(!k.opens("nope", now));
        assert!(k.opens(&code, now));
        assert!(!k.opens(&code, now), "a code is used up");
        assert_eq!(k.pending(now), 0);
        let late = k.mint(now);
        assert!(!k.opens(&late, now + CODE_LIFETIME));
        assert_eq!(k.pending(now + CODE_LIFETIME), 0);
        assert!(k.opens("api", now) && k.opens("api", now));
        assert!(!Keys::new(None, 1, "127.0.0.1").opens("api", now));
        for _ in 0..MAX_CODES + 5 {
            k.mint(now);
        }
        assert_eq!(k.pending(now), MAX_CODES);
    }

    #[test]
    fn reads_need_the_cookie_and_the_page_key_or_the_bearer_token() {
        let k = keys();
        let cookie = cookie_of(&k);
        let host = Some("127.0.0.1:4000");
        let mut seen = Seen {
            host,
            ..Seen::default()
        };
        assert_eq!(k.check(&seen, false), Err(Refusal::NotSignedIn));
        seen.key = Some(k.key());
        assert_eq!(k.check(&seen, false), Err(Refusal::NotSignedIn));
        seen.cookie = Some("orchestr8_dashboard_4000=forged");
        assert_eq!(k.check(&seen, false), Err(Refusal::NotSignedIn));
        seen.cookie = Some(&cookie);
        assert_eq!(k.check(&seen, false), Ok(()));
        // The cookie alone (sent to every port of the host) is not enough for data.
        let cookie_only = Seen { key: None, ..seen };
        assert_eq!(k.check(&cookie_only, false), Err(Refusal::NotSignedIn));
        assert_eq!(k.check_page(&cookie_only), Ok(()));
        // A cookie of the same name set by another port's page does not hide ours.
        let both = format!("orchestr8_dashboard_4000=planted; {cookie}");
        assert_eq!(
            k.check(
                &Seen {
                    cookie: Some(&both),
                    ..seen
                },
                false
            ),
            Ok(())
        );
        // Another port's dashboard has another cookie.
        let other = Keys::new(None, 4001, "127.0.0.1");
        assert_eq!(other.check_page(&seen), Err(Refusal::NotSignedIn));
        let bearer = Seen {
            host,
            authorization: Some("Bearer api"),
            ..Seen::default()
        };
        assert_eq!(k.check(&bearer, true), Ok(()));
    }

    #[test]
    fn only_this_machine_or_the_listen_address_may_be_the_host() {
        let k = Keys::new(None, 4000, "192.168.1.5");
        let cookie = cookie_of(&k);
        for h in [
            "localhost:4000",
            "127.0.0.1:4000",
            "[::1]:4000",
            "192.168.1.5:4000",
        ] {
            let seen = Seen {
                host: Some(h),
                cookie: Some(&cookie),
                key: Some(k.key()),
                ..Seen::default()
            };
            assert_eq!(k.check(&seen, false), Ok(()), "{h}");
        }
        for h in ["evil.example:4000", "", "127.0.0.1.evil.example"] {
            let seen = Seen {
                host: Some(h),
                cookie: Some(&cookie),
                key: Some(k.key()),
                ..Seen::default()
            };
            assert!(
                matches!(k.check(&seen, false), Err(Refusal::ForeignHost(_))),
                "{h}"
            );
            assert!(
                matches!(k.check_page(&seen), Err(Refusal::ForeignHost(_))),
                "{h}"
            );
        }
    }

    #[test]
    fn changes_must_come_from_the_dashboard_itself() {
        let k = keys();
        let cookie = cookie_of(&k);
        let ok = Seen {
            host: Some("127.0.0.1:4000"),
            cookie: Some(&cookie),
            origin: Some("http://127.0.0.1:4000"),
            sec_fetch_site: Some("same-origin"),
            key: Some(k.key()),
            ..Seen::default()
        };
        assert_eq!(k.check(&ok, true), Ok(()));
        let cases = [
            Seen { key: None, ..ok },
            Seen {
                key: Some("x"),
                ..ok
            },
            // Another port of the same host is another origin (but the same site).
            Seen {
                origin: Some("http://127.0.0.1:9999"),
                ..ok
            },
            Seen {
                sec_fetch_site: Some("same-site"),
                ..ok
            },
            Seen {
                sec_fetch_site: Some("cross-site"),
                ..ok
            },
        ];
        for c in cases {
            assert!(
                matches!(k.check(&c, true), Err(Refusal::CrossSite(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn the_cookie_is_scoped_and_unreadable_by_scripts() {
        let c = keys().set_cookie();
        assert!(c.starts_with("orchestr8_dashboard_4000="));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax"));
    }
}
