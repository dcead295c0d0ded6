//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by
//! the base64 bytes of a `whsec_` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The decoded `ORCHESTR8_WEBHOOK_SECRET`. Its `Debug` shows no key material.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl WebhookSecret {
    /// Accepts `whsec_<base64>` (at least 16 bytes once decoded, as Standard Webhooks
    /// libraries generate 24-64); the error says what is wrong without echoing the secret.
    pub fn parse(s: &str) -> Result<WebhookSecret, String> {
        let Some(b64) = s.trim().strip_prefix("whsec_") else {
            return Err("ORCHESTR8_WEBHOOK_SECRET must start with \"whsec_\" followed by base64 (for example: whsec_$(openssl rand -base64 32))".into());
        };
        let key = STANDARD.decode(b64).map_err(|e| {
            format!("ORCHESTR8_WEBHOOK_SECRET: the part after \"whsec_\" is not valid base64 ({e}); generate one with: echo whsec_$(openssl rand -base64 32)")
        })?;
        if key.len() < 16 {
            return Err(format!(
                "ORCHESTR8_WEBHOOK_SECRET is too short ({} bytes once decoded; use at least 16, e.g. whsec_$(openssl rand -base64 32))",
                key.len()
            ));
        }
        Ok(WebhookSecret(key))
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The example of the Standard Webhooks specification.
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_secrets_are_refused_with_a_reason() {
        assert!(WebhookSecret::parse("secret")
            .unwrap_err()
            .contains("whsec_"));
        assert!(WebhookSecret::parse("whsec_***")
            .unwrap_err()
            .contains("base64"));
        assert!(WebhookSecret::parse("whsec_YWJj")
            .unwrap_err()
            .contains("too short"));
    }
}
