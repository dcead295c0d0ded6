//! What every request passes through: the access guard (browser checks and the bearer token)
//! and the recorder (time limit and metrics).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::{AppState, REQUEST_TIMEOUT};

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Guards `/api/*`, `/mcp` and `/metrics`.
///
/// Browsers first: a page from an origin not listed in `ORCHESTR8_CORS_ORIGINS` is refused
/// (its `Origin` header says where it comes from), and without a token the `Host` must name
/// this machine, so a DNS-rebinding page cannot reach the API under its own domain. Then the
/// bearer token, when one is set (`/metrics` is open on loopback).
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = browser_check(&s, req.headers()) {
        return e.into_response();
    }
    let Some(want) = &s.token_digest else {
        return next.run(req).await;
    };
    if req.uri().path() == "/metrics" && s.loopback {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or("");
    if bool::from(digest(given).ct_eq(want.as_slice())) {
        next.run(req).await
    } else {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send the header `Authorization: Bearer <ORCHESTR8_API_TOKEN>`".into(),
        )
        .into_response()
    }
}

/// The credentials of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn browser_check(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !s.origins.iter().any(|o| o == origin) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("requests from the web page origin {origin:?} are refused; to allow it, add it to ORCHESTR8_CORS_ORIGINS"),
            ));
        }
    }
    if s.token_digest.is_none() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_local_host_header(host) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("Host {host:?} is not this machine: without ORCHESTR8_API_TOKEN the API answers only requests addressed to localhost, 127.0.0.1 or [::1]"),
            ));
        }
    }
    Ok(())
}

/// The host name of a `Host` header, without its port or an IPv6 address's brackets.
pub(crate) fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    }
}

/// Whether a `Host` header (with or without a port) names the loopback interface.
pub(crate) fn is_local_host_header(host: &str) -> bool {
    super::is_loopback(&host_name(host).to_ascii_lowercase())
}

/// Limits every request to [`REQUEST_TIMEOUT`] and counts and times it by route pattern.
pub async fn record(req: Request, next: Next) -> Response {
    // Only known methods and matched routes become labels, so odd requests cannot grow the
    // metrics without bound.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {REQUEST_TIMEOUT:?}; it may still take effect (state changes are never half-done): check before repeating it"),
        )
        .into_response(),
    };
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    crate::metrics::request(
        "rest",
        format!("{method} {route}"),
        class,
        started.elapsed(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_of_this_machine() {
        for h in [
            "localhost",
            "localhost:3000",
            "127.0.0.1:8080",
            "[::1]:3000",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_local_host_header(h), "{h}");
        }
        for h in [
            "",
            "evil.example:3000",
            "127.0.0.1.evil.example",
            "10.0.0.1:3000",
            "[::2]:1",
        ] {
            assert!(!is_local_host_header(h), "{h}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }
}
