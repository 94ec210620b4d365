//! GTIN (GS1 Global Trade Item Number): 8, 12, 13 or 14 digits ending in a
//! mod-10 check digit (weights 3,1,3,1… from the right, check digit excluded).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A GTIN whose length and check digit have been verified. Kept as the
/// digits received (a UPC-A stays 12 digits) so nothing is rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gtin(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtinError {
    #[error("a GTIN has 8, 12, 13 or 14 digits, not {0}")]
    Length(usize),
    #[error("a GTIN has only digits")]
    NotDigits,
    #[error("check digit is {found} but should be {expected}")]
    CheckDigit { expected: u8, found: u8 },
}

/// The mod-10 check digit for the digits before it.
pub fn check_digit(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| u32::from(*d) * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

impl Gtin {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same item as a 14-digit GTIN (left-padded with zeros), the form
    /// GS1 AI (01) carries and the form to compare on.
    pub fn to_gtin14(&self) -> String {
        format!("{:0>14}", self.0)
    }
}

impl FromStr for Gtin {
    type Err = GtinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !matches!(s.len(), 8 | 12 | 13 | 14) {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(GtinError::NotDigits);
            }
            return Err(GtinError::Length(s.len()));
        }
        let digits: Vec<u8> = s
            .bytes()
            .map(|b| {
                if b.is_ascii_digit() {
                    Some(b - b'0')
                } else {
                    None
                }
            })
            .collect::<Option<_>>()
            .ok_or(GtinError::NotDigits)?;
        let (body, last) = digits.split_at(digits.len() - 1);
        let expected = check_digit(body);
        if last[0] != expected {
            return Err(GtinError::CheckDigit {
                expected,
                found: last[0],
            });
        }
        Ok(Gtin(s.to_owned()))
    }
}

impl fmt::Display for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Gtin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Gtin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_gtins_validate() {
        for ok in [
            "4006381333931",
            "96385074",
            "036000291452",
            "05901234123457",
            "5901234123457",
        ] {
            assert!(ok.parse::<Gtin>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            "4006381333932".parse::<Gtin>(),
            Err(GtinError::CheckDigit {
                expected: 1,
                found: 2
            })
        );
        assert_eq!("12345".parse::<Gtin>(), Err(GtinError::Length(5)));
        assert_eq!("40063813339x1".parse::<Gtin>(), Err(GtinError::NotDigits));
    }

    #[test]
    fn padding_to_gtin14_keeps_the_item() {
        let upc: Gtin = "036000291452".parse().expect("valid UPC-A");
        assert_eq!(upc.to_gtin14(), "00036000291452");
        assert!(upc.to_gtin14().parse::<Gtin>().is_ok());
    }

    proptest! {
        #[test]
        fn appending_the_computed_check_digit_always_validates(body in proptest::collection::vec(0u8..10, 7..14usize)) {
            prop_assume!(matches!(body.len(), 7 | 11 | 12 | 13));
            let check = check_digit(&body);
            let s: String = body.iter().chain(std::iter::once(&check)).map(|d| char::from(b'0' + d)).collect();
            prop_assert!(s.parse::<Gtin>().is_ok());
        }

        /// Against GS1's own description of the check digit, written out
        /// here rather than calling `check_digit`: from the right, digits
        /// weigh 3, 1, 3, 1…; the check digit rounds the sum up to a
        /// multiple of ten.
        #[test]
        fn the_check_digit_is_gs1s_mod_10(body in proptest::collection::vec(0u8..10, 7..14usize)) {
            let mut sum = 0u32;
            let mut weight = 3;
            for d in body.iter().rev() {
                sum += u32::from(*d) * weight;
                weight = 4 - weight;
            }
            let mut expected = 0u8;
            while (sum + u32::from(expected)) % 10 != 0 {
                expected += 1;
            }
            prop_assert_eq!(check_digit(&body), expected);
        }

        #[test]
        fn any_single_digit_change_is_caught(body in proptest::collection::vec(0u8..10, 12..13usize), pos in 0usize..13, delta in 1u8..10) {
            let check = check_digit(&body);
            let mut digits: Vec<u8> = body.clone();
            digits.push(check);
            digits[pos] = (digits[pos] + delta) % 10;
            let s: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            prop_assert!(s.parse::<Gtin>().is_err());
        }
    }
}
