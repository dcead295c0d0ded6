//! Whole numbers as JSON Schema means them: `9` and `9.0` are the same integer, so both are
//! taken (serde's `i64` refuses `9.0`); `9.5` is refused saying so. In a JSON body a number
//! must be a number (`"9"` is refused, as the schema says); query strings give every value as
//! text, so arguments that also come from a query read numeric text too.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

struct Whole {
    text: bool,
}

impl Visitor<'_> for Whole {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // Integral and within i64 (2^63 itself is not: it is one past i64::MAX).
        if v.fract() == 0.0
            && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v)
        {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not a whole number")))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        if !self.text {
            return Err(E::invalid_type(de::Unexpected::Str(v), &self));
        }
        if let Ok(n) = v.parse::<i64>() {
            return Ok(n);
        }
        match v.parse::<f64>() {
            Ok(f) if f.is_finite() => self.visit_f64(f),
            _ => Err(E::custom(format!("{v:?} is not a whole number"))),
        }
    }
}

struct MaybeWhole {
    text: bool,
}

impl<'de> Visitor<'de> for MaybeWhole {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(Whole { text: self.text }).map(Some)
    }
}

/// For `#[serde(default, deserialize_with = "whole::option")]` on an `Option<i64>` of a JSON
/// body.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_option(MaybeWhole { text: false })
}

/// As [`option`], for arguments that may also come from a query string.
pub fn option_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_option(MaybeWhole { text: true })
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Args {
        #[serde(default, deserialize_with = "super::option")]
        n: Option<i64>,
    }

    #[derive(serde::Deserialize, Debug)]
    struct Query {
        #[serde(default, deserialize_with = "super::option_or_text")]
        n: Option<i64>,
    }

    fn json(s: &str) -> Result<Option<i64>, String> {
        serde_json::from_str::<Args>(s)
            .map(|a| a.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_are_taken_however_written() {
        assert_eq!(json(r#"{"n": 9}"#), Ok(Some(9)));
        assert_eq!(json(r#"{"n": 9.0}"#), Ok(Some(9)));
        assert_eq!(json(r#"{"n": -3}"#), Ok(Some(-3)));
        assert_eq!(json(r#"{"n": 1e3}"#), Ok(Some(1000)));
        assert_eq!(json(r#"{"n": 1e16}"#), Ok(Some(10_000_000_000_000_000)));
        assert_eq!(json(r#"{"n": null}"#), Ok(None));
        assert_eq!(json(r#"{}"#), Ok(None));
        let q: Query = serde_json::from_str(r#"{"n": "12.0"}"#).unwrap();
        assert_eq!(q.n, Some(12));
    }

    #[test]
    fn fractions_and_text_are_refused() {
        assert!(json(r#"{"n": 9.5}"#)
            .unwrap_err()
            .contains("not a whole number"));
        assert!(json(r#"{"n": "9"}"#)
            .unwrap_err()
            .contains("expected a whole number"));
        assert!(serde_json::from_str::<Query>(r#"{"n": "9.5"}"#).is_err());
        let nine = serde_json::from_str::<Query>(r#"{"n": "nine"}"#).unwrap_err();
        assert!(nine.to_string().contains("not a whole number"), "{nine}");
        assert!(json(r#"{"n": 1e300}"#)
            .unwrap_err()
            .contains("not a whole number"));
    }
}
