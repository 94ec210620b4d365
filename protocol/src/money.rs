//! Money as integer minor units of an ISO 4217 currency.
//!
//! Floats never appear: a price of EUR 1.99 is `199` minor units, JPY 500 is
//! `500` (JPY has no minor unit), KWD 1.250 is `1250` (three decimals). The
//! currency table below is what lets the protocol format and check amounts
//! without guessing the exponent.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount in a currency's minor units. Signed, because refunds, change and
/// adjustments are naturally negative in some calculations; the domain types
/// say where negatives are allowed.
pub type MinorUnits = i64;

/// ISO 4217 currencies whose minor-unit exponent is not 2, and the active
/// codes with exponent 2. Keeping the full active list lets a typo such as
/// `"EUD"` be refused instead of silently treated as a two-decimal currency.
const EXPONENT_0: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const EXPONENT_3: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const EXPONENT_4: &[&str] = &["CLF", "UYW"];
const EXPONENT_2: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN",
    "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY",
    "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD",
    "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR",
    "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "MAD", "MDL", "MKD", "MMK", "MNT", "MOP", "MUR", "MVR", "MWK", "MXN", "MYR",
    "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN",
    "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS",
    "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD",
    "TZS", "UAH", "USD", "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW",
    "ZWG",
];
/// Codes added to the table after version 1 of the protocol. A reader built
/// for version 1 refuses them, so an event in one is version 2 (see
/// [`Currency::schema_version`]).
const ADDED_IN_VERSION_2: &[&str] = &["VED", "XCG"];

/// Currencies whose minor unit is not a decimal subdivision (1 ariary = 5
/// iraimbilanja). ISO 4217 still lists exponent 2 for them; amounts are kept
/// in the listed minor unit and formatting is the only thing that differs.
const NON_DECIMAL: &[&str] = &["MGA", "MRU"];

/// An ISO 4217 alphabetic currency code.
///
/// Parsing (`"EUR".parse()`, a store profile) accepts only the codes in the
/// table above. Reading an event accepts any three capital letters, so a
/// code ISO adds after this build (as XCG replaced ANG in 2025) does not
/// make every reader dead-letter that store's events; [`Currency::is_known`]
/// says whether the table has it, and validation refuses one it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO 4217 currency code this protocol knows")]
pub struct UnknownCurrency(pub String);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");
    pub const USD: Currency = Currency(*b"USD");
    pub const GBP: Currency = Currency(*b"GBP");
    pub const JPY: Currency = Currency(*b"JPY");
    pub const KWD: Currency = Currency(*b"KWD");

    /// The alphabetic code, e.g. `"EUR"`.
    pub fn code(&self) -> &str {
        // Both constructors accept only ASCII capital letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Whether this build's ISO 4217 table lists the code.
    pub fn is_known(&self) -> bool {
        // Every sale asks: binary searches of the sorted tables.
        [EXPONENT_2, EXPONENT_0, EXPONENT_3, EXPONENT_4, NON_DECIMAL]
            .iter()
            .any(|table| table.binary_search(&self.code()).is_ok())
    }

    /// The first schema version whose readers know this code: 1 for the
    /// codes of the version-1 table, 2 for those added since (and for a
    /// code this build does not know either).
    pub fn schema_version(&self) -> u16 {
        if self.is_known() && !ADDED_IN_VERSION_2.contains(&self.code()) {
            1
        } else {
            2
        }
    }

    /// Number of decimal digits of the minor unit: 2 for EUR, 0 for JPY, 3
    /// for KWD (and 2 for a code this build does not know).
    pub fn exponent(&self) -> u32 {
        let code = self.code();
        if EXPONENT_0.contains(&code) {
            0
        } else if EXPONENT_3.contains(&code) {
            3
        } else if EXPONENT_4.contains(&code) {
            4
        } else {
            2
        }
    }

    /// True where the minor unit is not a power-of-ten subdivision (MGA, MRU).
    pub fn is_non_decimal(&self) -> bool {
        NON_DECIMAL.contains(&self.code())
    }
}

impl FromStr for Currency {
    type Err = UnknownCurrency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let known = [EXPONENT_0, EXPONENT_2, EXPONENT_3, EXPONENT_4, NON_DECIMAL]
            .iter()
            .any(|table| table.contains(&s));
        match (known, s.as_bytes()) {
            (true, &[a, b, c]) => Ok(Currency([a, b, c])),
            _ => Err(UnknownCurrency(s.to_owned())),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(serde::de::Error::custom(UnknownCurrency(code.into_owned()))),
        }
    }
}

/// An amount together with its currency; used where an amount stands alone
/// (a domain body that carries one currency for all its amounts stores plain
/// [`MinorUnits`] next to a single [`Currency`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: MinorUnits,
    pub currency: Currency,
}

/// Arithmetic that would overflow or mix currencies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount overflow")]
    Overflow,
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
}

impl Money {
    pub fn new(minor: MinorUnits, currency: Currency) -> Self {
        Self { minor, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }
}

impl fmt::Display for Money {
    /// `EUR 1.99`, `JPY 500`, `KWD -1.250`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exp == 0 {
            return write!(f, "{} {sign}{abs}", self.currency);
        }
        let scale = 10u64.pow(exp);
        write!(
            f,
            "{} {sign}{}.{:0width$}",
            self.currency,
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    }
}

/// Extended amount of a weighed line: `price_per_kg × grams / 1000`, rounded
/// half away from zero, the way scales at the till round. Integer only.
pub fn weighed_amount(price_per_kg: MinorUnits, grams: i64) -> Option<MinorUnits> {
    let product = i128::from(price_per_kg).checked_mul(i128::from(grams))?;
    let rounded = if product >= 0 {
        (product + 500) / 1000
    } else {
        (product - 500) / 1000
    };
    i64::try_from(rounded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::EUR.exponent(), 2);
        assert_eq!(Currency::JPY.exponent(), 0);
        assert_eq!(Currency::KWD.exponent(), 3);
        assert_eq!("KRW".parse::<Currency>().map(|c| c.exponent()), Ok(0));
        assert_eq!("CLF".parse::<Currency>().map(|c| c.exponent()), Ok(4));
        assert!("MGA".parse::<Currency>().map(|c| c.is_non_decimal()) == Ok(true));
    }

    #[test]
    fn unknown_and_malformed_codes_are_refused() {
        for bad in ["EUD", "eur", "EURO", "", "€"] {
            assert_eq!(bad.parse::<Currency>(), Err(UnknownCurrency(bad.into())));
        }
        for new in ["XCG", "VED"] {
            assert_eq!(new.parse::<Currency>().map(|c| c.exponent()), Ok(2));
            assert_eq!(new.parse::<Currency>().map(|c| c.schema_version()), Ok(2));
        }
        assert_eq!(Currency::EUR.schema_version(), 1);
    }

    #[test]
    fn the_tables_are_sorted_and_disjoint() {
        let tables = [EXPONENT_0, EXPONENT_2, EXPONENT_3, EXPONENT_4, NON_DECIMAL];
        for t in tables {
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
        }
        let mut all: Vec<&str> = tables.concat();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a code in two tables");
        assert!(all
            .iter()
            .all(|c| c.parse::<Currency>().is_ok_and(|c| c.is_known())));
    }

    /// A reader takes any three capital letters (a code newer than its
    /// table), and says it does not know them; anything else is refused.
    #[test]
    fn events_read_a_code_newer_than_the_table() {
        let read = |s: &str| serde_json::from_str::<Currency>(&format!("\"{s}\""));
        let newer = read("QQQ").expect("three capitals");
        assert!(!newer.is_known() && newer.code() == "QQQ");
        assert!(read("EUR").expect("EUR").is_known());
        for bad in ["eur", "EURO", "", "€", "E1R"] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_uses_the_currency_exponent() {
        assert_eq!(Money::new(199, Currency::EUR).to_string(), "EUR 1.99");
        assert_eq!(Money::new(5, Currency::EUR).to_string(), "EUR 0.05");
        assert_eq!(Money::new(500, Currency::JPY).to_string(), "JPY 500");
        assert_eq!(Money::new(-1250, Currency::KWD).to_string(), "KWD -1.250");
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let eur = Money::new(100, Currency::EUR);
        let usd = Money::new(100, Currency::USD);
        assert_eq!(
            eur.checked_add(usd),
            Err(MoneyError::CurrencyMismatch(Currency::EUR, Currency::USD))
        );
        assert_eq!(
            Money::new(i64::MAX, Currency::EUR).checked_add(eur),
            Err(MoneyError::Overflow)
        );
        assert_eq!(eur.checked_sub(eur), Ok(Money::new(0, Currency::EUR)));
    }

    #[test]
    fn weighed_amounts_round_half_away_from_zero() {
        // 1.234 kg at EUR 2.99/kg = 3.68966 -> 3.69
        assert_eq!(weighed_amount(299, 1234), Some(369));
        // exactly half a cent rounds up: 0.5 kg at 0.01/kg = 0.005 -> 0.01
        assert_eq!(weighed_amount(1, 500), Some(1));
        assert_eq!(weighed_amount(1, 499), Some(0));
        assert_eq!(weighed_amount(i64::MAX, i64::MAX), None);
    }

    #[test]
    fn currency_serde_is_the_plain_code() {
        let json = serde_json::to_string(&Currency::JPY).unwrap_or_default();
        assert_eq!(json, "\"JPY\"");
        assert!(serde_json::from_str::<Currency>("\"XXX\"").is_ok_and(|c| !c.is_known()));
        assert!(serde_json::from_str::<Currency>("\"xxx\"").is_err());
    }
}
