//! Decoding what a barcode scanner sends in one frame: an optional AIM
//! symbology identifier, then a GTIN, a GS1 element string or plain data.
//!
//! Pure functions, no I/O. Anything a scanner can send decodes to a
//! [`Decoded`]; a bad read carries a [`ReadError`] whose `Display` starts
//! with a stable snake_case code (`bad_check_digit: …`), which becomes the
//! scan event's `invalid_reason`. Nothing here panics on input (property
//! tested with arbitrary bytes).
//!
//! # What is recognised
//! * AIM identifier `]` + code letter + modifier (ISO/IEC 15424), e.g. `]E0`.
//! * `]E0` EAN-13 / UPC-A (UPC-A arrives padded to 13 digits), `]E4` EAN-8,
//!   `]E3` EAN-13 with a 2/5-digit add-on (15 or 18 digits), `]E1`/`]E2`
//!   add-on alone: GTIN with check digit.
//! * `]C1` GS1-128, `]d2` GS1 DataMatrix, `]Q3` GS1 QR, `]e0` GS1 DataBar,
//!   `]J1` GS1 DotCode: GS1 element strings.
//! * Any other well-formed identifier (`]A0` Code 39, `]C0` Code 128, `]Q1`
//!   QR…): valid, data kept as sent, nothing interpreted.
//! * No identifier: 8/12/13/14 digits are a GTIN (check digit verified; 8
//!   digits are an EAN-8, or a UPC-E expanded to its GTIN-12 for a scanner
//!   whose profile says `eight_digit_reads = "upc_e"`); data with a GS byte,
//!   or starting `01` with 16+ characters, is a GS1 element string; anything
//!   else is kept as plain data.
//!
//! # GS1 element strings
//! AIs come from a table ([`ai_spec`]) with fixed or variable lengths and
//! character sets, following GS1's `gs1-syntax-dictionary.txt` for the AIs
//! stores meet (coupons included). FNC1 is transmitted as GS (0x1D) and ends a variable-length
//! field; a GS after a fixed-length field, or a leading one, is tolerated.
//! Dates (11–17) are YYMMDD and day `00` (end of month) is allowed. Check
//! digits of (00), (01), (02), (410)–(417) are verified. (21) requires (01);
//! an AI repeated with a different value is an error. Other requirement
//! rules of the dictionary are not enforced.

use firmware_config::EightDigitReads;
use protocol::device::Gs1Element;
use protocol::gtin::{check_digit, GtinError};
use protocol::Gtin;

/// ASCII GS, how scanners transmit FNC1.
pub const GS: u8 = 0x1D;

/// Why a read is invalid. `Display` = `code: detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Offsets here and in `UnknownAi` count from the start of the data
    /// (after the symbology identifier).
    #[error("noise: unexpected byte 0x{byte:02X} at offset {offset}")]
    Noise { byte: u8, offset: usize },
    #[error("bad_symbology: `{0}` is not an AIM symbology identifier")]
    BadSymbology(String),
    #[error("empty: no data after {0}")]
    Empty(String),
    #[error("bad_length: {0}")]
    BadLength(String),
    #[error("not_digits: {0}")]
    NotDigits(String),
    #[error("bad_check_digit: {0}")]
    BadCheckDigit(String),
    #[error("unknown_ai: no AI starts with `{prefix}` at offset {offset}")]
    UnknownAi { prefix: String, offset: usize },
    #[error("bad_value: {0}")]
    BadValue(String),
    #[error("bad_date: ({ai}) `{value}` is not a date (YYMMDD, day 00 = end of month)")]
    BadDate { ai: String, value: String },
    #[error("missing_ai: ({ai}) requires ({requires})")]
    MissingAi { ai: String, requires: &'static str },
    #[error("duplicate_ai: ({0}) appears twice with different values")]
    DuplicateAi(String),
    #[error("truncated: read longer than {max_len} bytes was cut")]
    Truncated { max_len: usize },
    #[error("incomplete: no terminator within {after_ms} ms of the last byte (noise, a read cut off, or a scanner suffix that does not match the profile)")]
    Incomplete { after_ms: u64 },
}

impl ReadError {
    /// The stable code (metric label, first word of the reason).
    pub fn code(&self) -> &'static str {
        match self {
            ReadError::Noise { .. } => "noise",
            ReadError::BadSymbology(_) => "bad_symbology",
            ReadError::Empty(_) => "empty",
            ReadError::BadLength(_) => "bad_length",
            ReadError::NotDigits(_) => "not_digits",
            ReadError::BadCheckDigit(_) => "bad_check_digit",
            ReadError::UnknownAi { .. } => "unknown_ai",
            ReadError::BadValue(_) => "bad_value",
            ReadError::BadDate { .. } => "bad_date",
            ReadError::MissingAi { .. } => "missing_ai",
            ReadError::DuplicateAi(_) => "duplicate_ai",
            ReadError::Truncated { .. } => "truncated",
            ReadError::Incomplete { .. } => "incomplete",
        }
    }
}

/// One frame, decoded as far as it could be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// The AIM identifier as sent (`]E0`), if the scanner prefixed one.
    pub symbology: Option<String>,
    /// The data after the identifier; GS stays a `\u{1d}` character and any
    /// byte outside printable ASCII is shown as `\xNN`.
    pub data: String,
    pub gtin: Option<Gtin>,
    pub elements: Vec<Gs1Element>,
    pub error: Option<ReadError>,
}

impl Decoded {
    pub fn is_valid(&self) -> bool {
        self.error.is_none()
    }
}

/// How to read the data after the identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// A GTIN of exactly this many digits (EAN/UPC family).
    Gtin(usize, &'static str),
    /// EAN-13 plus a 2 or 5 digit add-on.
    GtinWithAddOn,
    /// Only digits, this many (EAN add-on alone).
    Digits(&'static [usize]),
    Gs1,
    Plain,
    /// No identifier: guess from the data.
    Guess,
}

fn content_of(code: u8, modifier: u8) -> Content {
    match (code, modifier) {
        (b'E', b'0') => Content::Gtin(13, "]E0 (EAN-13/UPC-A)"),
        (b'E', b'4') => Content::Gtin(8, "]E4 (EAN-8)"),
        (b'E', b'3') => Content::GtinWithAddOn,
        (b'E', b'1') => Content::Digits(&[2]),
        (b'E', b'2') => Content::Digits(&[5]),
        (b'C', b'1') | (b'd', b'2') | (b'Q', b'3') | (b'e', b'0') | (b'J', b'1') => Content::Gs1,
        _ => Content::Plain,
    }
}

fn printable(b: u8) -> bool {
    (0x20..=0x7E).contains(&b)
}

/// The frame as text: printable ASCII and GS as they are, other bytes `\xNN`.
fn render(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if printable(b) || b == GS {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02X}"));
        }
    }
    s
}

/// Decodes one frame (terminator already removed).
pub fn decode(frame: &[u8]) -> Decoded {
    decode_with(frame, EightDigitReads::Ean8)
}

/// [`decode`], with unprefixed 8-digit reads taken as `eight` says (a
/// scanner profile's `eight_digit_reads`).
pub fn decode_with(frame: &[u8], eight: EightDigitReads) -> Decoded {
    let (symbology, body, content) = match frame {
        [b']', code, modifier, rest @ ..]
            if code.is_ascii_alphabetic() && modifier.is_ascii_alphanumeric() =>
        {
            let id = format!("]{}{}", char::from(*code), char::from(*modifier));
            (Some(id), rest, content_of(*code, *modifier))
        }
        [b']', ..] => {
            let shown: Vec<u8> = frame.iter().copied().take(3).collect();
            return Decoded {
                data: render(frame),
                error: Some(ReadError::BadSymbology(render(&shown))),
                ..Decoded::default()
            };
        }
        _ => (None, frame, Content::Guess),
    };
    let mut out = Decoded {
        symbology,
        data: render(body),
        ..Decoded::default()
    };
    if let Some((i, &b)) = body
        .iter()
        .enumerate()
        .find(|(_, &b)| !printable(b) && b != GS)
    {
        out.error = Some(ReadError::Noise { byte: b, offset: i });
        return out;
    }
    if body.is_empty() {
        let what = match &out.symbology {
            Some(id) => format!("the symbology identifier {id}"),
            None => "the start of the frame".to_owned(),
        };
        out.error = Some(ReadError::Empty(what));
        return out;
    }
    // Only printable ASCII and GS remain, so this is valid UTF-8.
    let text = out.data.clone();
    let result = match content {
        Content::Gtin(len, what) => gtin_of(&text, len, what).map(|g| (Some(g), vec![])),
        Content::GtinWithAddOn => {
            if !text.bytes().all(|b| b.is_ascii_digit()) {
                // The add-on too: a GTIN followed by letters is not an add-on.
                Err(ReadError::NotDigits(format!("`{text}` has non-digits")))
            } else if text.len() == 15 || text.len() == 18 {
                gtin_of(&text[..13], 13, "]E3 (EAN-13 + add-on)").map(|g| (Some(g), vec![]))
            } else {
                Err(ReadError::BadLength(format!(
                    "]E3 (EAN-13 + add-on) carries 15 or 18 digits, got {}",
                    text.len()
                )))
            }
        }
        Content::Digits(lens) => {
            if !text.bytes().all(|b| b.is_ascii_digit()) {
                Err(ReadError::NotDigits(format!("`{text}` has non-digits")))
            } else if !lens.contains(&text.len()) {
                Err(ReadError::BadLength(format!(
                    "add-on carries {} digits, got {}",
                    lens.iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    text.len()
                )))
            } else {
                Ok((None, vec![]))
            }
        }
        Content::Gs1 => element_string(&text),
        Content::Plain => Ok((None, vec![])),
        Content::Guess => {
            let all_digits = text.bytes().all(|b| b.is_ascii_digit());
            if all_digits && text.len() == 8 && eight == EightDigitReads::UpcE {
                upc_e(&text).map(|g| (Some(g), vec![]))
            } else if all_digits && matches!(text.len(), 8 | 12 | 13 | 14) {
                gtin_of(&text, text.len(), "GTIN").map(|g| (Some(g), vec![]))
            } else if text.contains(char::from(GS)) || (text.starts_with("01") && text.len() >= 16)
            {
                element_string(&text)
            } else {
                Ok((None, vec![]))
            }
        }
    };
    match result {
        Ok((gtin, elements)) => {
            out.gtin = gtin;
            out.elements = elements;
        }
        Err(e) => out.error = Some(e),
    }
    out
}

/// A read that was cut at `max_len`: decoded for its data, but never
/// valid and never trusted for a GTIN.
pub fn decode_truncated(frame: &[u8], max_len: usize) -> Decoded {
    decode_untrusted(frame, ReadError::Truncated { max_len })
}

/// A read whose terminator never came: likewise never valid.
pub fn decode_incomplete(frame: &[u8], after_ms: u64) -> Decoded {
    decode_untrusted(frame, ReadError::Incomplete { after_ms })
}

/// A frame known to be only part of a read: its data, and `error`.
fn decode_untrusted(frame: &[u8], error: ReadError) -> Decoded {
    let mut d = decode(frame);
    d.gtin = None;
    d.elements.clear();
    d.error = Some(error);
    d
}

/// A UPC-E as scanners send it unexpanded (number system, six digits,
/// check digit: 8 ASCII digits), as its UPC-A GTIN-12. The check digit is
/// the UPC-A's, so it is verified on the expanded number.
fn upc_e(text: &str) -> Result<Gtin, ReadError> {
    let d: Vec<u8> = text.bytes().map(|b| b.wrapping_sub(b'0')).collect();
    let [ns, d1, d2, d3, d4, d5, d6, _check] = d[..] else {
        return Err(ReadError::BadLength(format!(
            "UPC-E carries 8 digits, got {}",
            text.len()
        )));
    };
    if ns > 1 {
        return Err(ReadError::BadValue(format!(
            "UPC-E `{text}`: the number system must be 0 or 1, not {ns}"
        )));
    }
    // GS1 General Specifications, UPC-E zero suppression, by the last of
    // the six digits.
    let body: [u8; 10] = match d6 {
        0..=2 => [d1, d2, d6, 0, 0, 0, 0, d3, d4, d5],
        3 => [d1, d2, d3, 0, 0, 0, 0, 0, d4, d5],
        4 => [d1, d2, d3, d4, 0, 0, 0, 0, 0, d5],
        _ => [d1, d2, d3, d4, d5, 0, 0, 0, 0, d6],
    };
    let upc_a: String = std::iter::once(ns)
        .chain(body)
        .chain(std::iter::once(d[7]))
        .map(|x| char::from(b'0' + x))
        .collect();
    gtin_of(&upc_a, 12, "UPC-E").map_err(|e| match e {
        ReadError::BadCheckDigit(detail) => {
            ReadError::BadCheckDigit(format!("UPC-E `{text}` as UPC-A {detail}"))
        }
        other => other,
    })
}

fn gtin_of(text: &str, len: usize, what: &str) -> Result<Gtin, ReadError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReadError::NotDigits(format!(
            "{what} `{text}` has non-digits"
        )));
    }
    if text.len() != len {
        return Err(ReadError::BadLength(format!(
            "{what} carries {len} digits, got {}",
            text.len()
        )));
    }
    text.parse::<Gtin>().map_err(|e| match e {
        GtinError::CheckDigit { .. } => ReadError::BadCheckDigit(format!("{text}: {e}")),
        GtinError::Length(_) => ReadError::BadLength(format!("{text}: {e}")),
        GtinError::NotDigits => ReadError::NotDigits(format!("{text}: {e}")),
    })
}

/// Character set of an AI's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Digits.
    N,
    /// GS1 AI encodable character set 82.
    X,
}

/// Extra checks on a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    None,
    /// The last digit is a GS1 mod-10 check digit over the value.
    CheckDigit,
    /// YYMMDD, day 00 allowed.
    Date,
}

/// One AI's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AiSpec {
    /// Fixed length (`min == max`) or variable up to `max`.
    pub min: usize,
    pub max: usize,
    pub charset: Charset,
    pub check: Check,
}

impl AiSpec {
    pub fn fixed(&self) -> bool {
        self.min == self.max
    }
}

const fn fixed(n: usize, charset: Charset, check: Check) -> AiSpec {
    AiSpec {
        min: n,
        max: n,
        charset,
        check,
    }
}

const fn var(max: usize, charset: Charset) -> AiSpec {
    AiSpec {
        min: 1,
        max,
        charset,
        check: Check::None,
    }
}

/// How many digits the AI starting with these two digits has (GS1 General
/// Specifications: the first two digits decide an AI's length).
fn ai_len(prefix: &[u8; 2]) -> Option<usize> {
    let n = (prefix[0].wrapping_sub(b'0')) as usize * 10 + (prefix[1].wrapping_sub(b'0')) as usize;
    Some(match n {
        0..=4 | 10..=17 | 20..=22 | 30 | 37 | 90..=99 => 2,
        23..=25 | 40..=43 => 3,
        31..=36 | 39 | 70..=72 | 80..=82 => 4,
        _ => return None,
    })
}

/// The format of `ai`, for the AIs a store meets on trade items and cases.
pub fn ai_spec(ai: &str) -> Option<AiSpec> {
    use Charset::{N, X};
    let b = ai.as_bytes();
    let spec = match ai {
        "00" => fixed(18, N, Check::CheckDigit),
        "01" | "02" => fixed(14, N, Check::CheckDigit),
        "10" | "21" | "22" => var(20, X),
        "11" | "12" | "13" | "15" | "16" | "17" => fixed(6, N, Check::Date),
        "20" => fixed(2, N, Check::None),
        "30" | "37" => var(8, N),
        "235" => var(28, X),
        "240" | "241" | "250" | "251" | "400" | "401" | "403" => var(30, X),
        "242" => var(6, N),
        "254" | "420" => var(20, X),
        "410" | "411" | "412" | "413" | "414" | "415" | "416" | "417" => {
            fixed(13, N, Check::CheckDigit)
        }
        "421" => AiSpec {
            min: 4,
            max: 12,
            charset: X,
            check: Check::None,
        },
        "422" | "424" | "426" => fixed(3, N, Check::None),
        "7003" => fixed(10, N, Check::None),
        "8004" => var(30, X),
        "8005" => fixed(6, N, Check::None),
        "8020" => var(25, X),
        "8200" => var(70, X),
        // North American coupons (DataBar at the till) and loyalty points.
        "8110" | "8112" => var(70, X),
        "8111" => fixed(4, N, Check::None),
        "90" => var(30, X),
        _ if b.len() == 2 && b[0] == b'9' && (b'1'..=b'9').contains(&b[1]) => var(90, X),
        // 310n-369n: trade measures, n = decimal places (0-5).
        _ if b.len() == 4
            && ai[..3]
                .parse::<u16>()
                .is_ok_and(|p| (310..=369).contains(&p))
            && (b'0'..=b'5').contains(&b[3]) =>
        {
            fixed(6, N, Check::None)
        }
        // 390n / 392n amounts payable, 391n / 393n with an ISO 4217 code.
        _ if b.len() == 4 && (b[..3] == *b"390" || b[..3] == *b"392") && b[3].is_ascii_digit() => {
            var(15, N)
        }
        _ if b.len() == 4 && (b[..3] == *b"391" || b[..3] == *b"393") && b[3].is_ascii_digit() => {
            AiSpec {
                min: 4,
                max: 18,
                charset: N,
                check: Check::None,
            }
        }
        _ => return None,
    };
    Some(spec)
}

/// GS1 AI encodable character set 82.
fn in_cset82(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!\"%&'()*+,-./:;<=>?_".contains(&c)
}

fn valid_date(v: &[u8]) -> bool {
    let num = |i: usize| u32::from(v[i] - b'0') * 10 + u32::from(v[i + 1] - b'0');
    let (yy, mm, dd) = (num(0), num(2), num(4));
    let days = match mm {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        // GS1 resolves YY to the year within -49/+50 of the current one
        // (General Specifications 7.12), a sliding window. Until 2050 it
        // holds no century year but 2000, a leap year, so YY % 4 decides;
        // from 2050 on, YY = 00 can mean 2100, which is not.
        2 if yy % 4 == 0 => 29,
        2 => 28,
        _ => return false,
    };
    dd <= days
}

/// Parses a GS1 element string (FNC1 as GS) into elements; returns the
/// GTIN of (01) when present.
pub fn element_string(text: &str) -> Result<(Option<Gtin>, Vec<Gs1Element>), ReadError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut elements: Vec<Gs1Element> = vec![];
    while pos < bytes.len() {
        if bytes[pos] == GS {
            // Leading FNC1, or one after a fixed-length field: tolerated.
            pos += 1;
            continue;
        }
        let start = pos;
        let prefix = match bytes.get(pos..pos + 2) {
            Some([a, b]) if a.is_ascii_digit() && b.is_ascii_digit() => [*a, *b],
            _ => {
                return Err(ReadError::UnknownAi {
                    prefix: render(&bytes[pos..(pos + 2).min(bytes.len())]),
                    offset: pos,
                })
            }
        };
        let unknown = || ReadError::UnknownAi {
            prefix: render(&bytes[start..(start + 4).min(bytes.len())]),
            offset: start,
        };
        let ai_len = ai_len(&prefix).ok_or_else(unknown)?;
        let ai_bytes = bytes.get(pos..pos + ai_len).ok_or_else(unknown)?;
        if !ai_bytes.iter().all(u8::is_ascii_digit) {
            return Err(unknown());
        }
        let ai = String::from_utf8_lossy(ai_bytes).into_owned();
        let spec = ai_spec(&ai).ok_or_else(unknown)?;
        pos += ai_len;
        let rest = &bytes[pos..];
        let value: &[u8] = if spec.fixed() {
            let avail = rest.iter().take_while(|&&b| b != GS).count().min(spec.max);
            if avail < spec.max {
                return Err(ReadError::BadLength(format!(
                    "({ai}) has {} characters, got {avail}",
                    spec.max
                )));
            }
            &rest[..spec.max]
        } else {
            let len = rest.iter().take_while(|&&b| b != GS).count();
            if len > spec.max {
                return Err(ReadError::BadLength(format!(
                    "({ai}) is at most {} characters, got {len} (FNC1 separator missing?)",
                    spec.max
                )));
            }
            if len < spec.min {
                return Err(ReadError::BadLength(format!(
                    "({ai}) needs at least {} characters, got {len}",
                    spec.min
                )));
            }
            &rest[..len]
        };
        pos += value.len();
        let shown = render(value);
        match spec.charset {
            Charset::N if !value.iter().all(u8::is_ascii_digit) => {
                return Err(ReadError::BadValue(format!(
                    "({ai}) `{shown}` must be digits"
                )));
            }
            Charset::X => {
                if let Some(&c) = value.iter().find(|&&c| !in_cset82(c)) {
                    return Err(ReadError::BadValue(format!(
                        "({ai}) `{shown}` has `{}`, outside GS1's character set",
                        char::from(c)
                    )));
                }
            }
            _ => {}
        }
        match spec.check {
            Check::CheckDigit => {
                let digits: Vec<u8> = value.iter().map(|d| d - b'0').collect();
                let (body, last) = digits.split_at(digits.len() - 1);
                let expected = check_digit(body);
                if last.first() != Some(&expected) {
                    return Err(ReadError::BadCheckDigit(format!(
                        "({ai}) {shown}: check digit is {} but should be {expected}",
                        last.first().copied().unwrap_or_default()
                    )));
                }
            }
            Check::Date if !valid_date(value) => {
                return Err(ReadError::BadDate { ai, value: shown });
            }
            _ => {}
        }
        if let Some(prev) = elements.iter().find(|e| e.ai == ai) {
            if prev.value != shown {
                return Err(ReadError::DuplicateAi(ai));
            }
            continue;
        }
        elements.push(Gs1Element { ai, value: shown });
    }
    if elements.is_empty() {
        return Err(ReadError::Empty("the FNC1 separators".into()));
    }
    let has = |ai: &str| elements.iter().any(|e| e.ai == ai);
    if has("21") && !has("01") {
        return Err(ReadError::MissingAi {
            ai: "21".into(),
            requires: "01",
        });
    }
    let gtin = elements
        .iter()
        .find(|e| e.ai == "01")
        .and_then(|e| e.value.parse::<Gtin>().ok());
    Ok((gtin, elements))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(frame: &[u8]) -> Option<String> {
        decode(frame).error.map(|e| e.to_string())
    }

    fn el(ai: &str, value: &str) -> Gs1Element {
        Gs1Element {
            ai: ai.into(),
            value: value.into(),
        }
    }

    #[test]
    fn unprefixed_upc_e_is_expanded_when_the_profile_says_so() {
        let upc_e = |frame: &[u8]| decode_with(frame, EightDigitReads::UpcE);
        let reason_of = |d: &Decoded| d.error.as_ref().map(ToString::to_string);
        // Each rule of the zero suppression (last digit 0-2, 3, 4, 5-9).
        for (sent, gtin) in [
            ("04252614", "042100005264"),
            ("01234565", "012345000065"),
            ("01234531", "012300000451"),
            ("01234543", "012340000053"),
            ("01234572", "012345000072"),
            ("11234562", "112345000062"),
        ] {
            let d = upc_e(sent.as_bytes());
            assert_eq!(d.error, None, "{sent}");
            assert_eq!(d.gtin.as_ref().map(|g| g.as_str()), Some(gtin), "{sent}");
            assert_eq!(d.data, sent, "the read is kept as sent");
        }
        // The check digit is verified on the expansion.
        assert!(reason_of(&upc_e(b"04252615"))
            .is_some_and(|r| r.starts_with("bad_check_digit: UPC-E `04252615`")));
        // Only number systems 0 and 1 have a UPC-E.
        assert!(reason_of(&upc_e(b"24252614")).is_some_and(|r| r.starts_with("bad_value:")));
        // Other lengths and identified reads are not affected.
        assert_eq!(upc_e(b"4006381333931").gtin, decode(b"4006381333931").gtin);
        assert_eq!(upc_e(b"]E496385074").gtin, decode(b"]E496385074").gtin);
        // And by default 8 digits stay an EAN-8: `04252614` fails its
        // GTIN-8 check, `96385074` passes it.
        assert!(reason_of(&decode(b"04252614")).is_some_and(|r| r.starts_with("bad_check_digit")));
        assert_eq!(decode(b"96385074").error, None);
    }

    #[test]
    fn north_american_coupons_are_element_strings() {
        let d = decode(b"]e081100106141412345501\x1d81110250");
        assert_eq!(d.error, None);
        assert_eq!(
            d.elements,
            [el("8110", "0106141412345501"), el("8111", "0250")]
        );
        assert!(d.is_valid());
        let d = decode(b"]e08112001061414123455");
        assert_eq!(d.elements, [el("8112", "001061414123455")]);
        // Loyalty points are four digits.
        assert!(decode(b"]e08111025").error.is_some());
    }

    #[test]
    fn ean13_and_padded_upc_a_with_aim() {
        let d = decode(b"]E04006381333931");
        assert_eq!(d.symbology.as_deref(), Some("]E0"));
        assert_eq!(d.data, "4006381333931");
        assert_eq!(d.gtin.as_ref().map(Gtin::as_str), Some("4006381333931"));
        assert!(d.is_valid());
        // UPC-A 036000291452 arrives as 13 digits.
        let d = decode(b"]E00036000291452");
        assert_eq!(
            d.gtin.as_ref().map(Gtin::to_gtin14).as_deref(),
            Some("00036000291452")
        );
        assert!(d.is_valid());
    }

    #[test]
    fn bad_gtins_say_why() {
        assert_eq!(
            reason(b"]E04006381333932").as_deref(),
            Some("bad_check_digit: 4006381333932: check digit is 2 but should be 1")
        );
        assert_eq!(
            reason(b"]E0036000291452").as_deref(),
            Some("bad_length: ]E0 (EAN-13/UPC-A) carries 13 digits, got 12")
        );
        assert_eq!(
            reason(b"]E0400638133393A").as_deref(),
            Some("not_digits: ]E0 (EAN-13/UPC-A) `400638133393A` has non-digits")
        );
        assert_eq!(reason(b"]E496385074"), None);
        assert_eq!(
            reason(b"]E496385075").as_deref(),
            Some("bad_check_digit: 96385075: check digit is 5 but should be 4")
        );
    }

    #[test]
    fn ean_add_ons() {
        let d = decode(b"]E3400638133393112");
        assert_eq!(d.gtin.as_ref().map(Gtin::as_str), Some("4006381333931"));
        assert!(d.is_valid());
        assert_eq!(reason(b"]E112"), None);
        assert_eq!(reason(b"]E212345"), None);
        // The GTIN's 13 digits are not enough: the add-on is digits too.
        assert_eq!(
            reason(b"]E34006381333931A1").as_deref(),
            Some("not_digits: `4006381333931A1` has non-digits")
        );
        assert_eq!(
            reason(b"]E2123").as_deref(),
            Some("bad_length: add-on carries 5 digits, got 3")
        );
    }

    #[test]
    fn gs1_128_with_variable_fields_and_fnc1() {
        let d = decode(b"]C10104006381333931172612001010A1B2C3\x1d21SER-99");
        assert!(d.is_valid(), "{:?}", d.error);
        assert_eq!(d.gtin.as_ref().map(Gtin::as_str), Some("04006381333931"));
        assert_eq!(
            d.elements,
            vec![
                el("01", "04006381333931"),
                el("17", "261200"),
                el("10", "10A1B2C3"),
                el("21", "SER-99")
            ]
        );
        assert_eq!(d.data, "0104006381333931172612001010A1B2C3\u{1d}21SER-99");
    }

    #[test]
    fn gs1_symbologies_all_parse_element_strings() {
        for id in ["]C1", "]d2", "]Q3", "]e0", "]J1"] {
            let frame = format!("{id}\u{1d}01040063813339313103001250");
            let d = decode(frame.as_bytes());
            assert!(d.is_valid(), "{id}: {:?}", d.error);
            assert_eq!(
                d.elements,
                vec![el("01", "04006381333931"), el("3103", "001250")],
                "{id}"
            );
        }
    }

    #[test]
    fn gs1_errors_have_stable_codes() {
        let cases: [(&[u8], &str); 10] = [
            (
                b"]C10104006381333932",
                "bad_check_digit: (01) 04006381333932: check digit is 2 but should be 1",
            ),
            (
                b"]C1010400638133393",
                "bad_length: (01) has 14 characters, got 13",
            ),
            (
                b"]C1010400638133393117261332",
                "bad_date: (17) `261332` is not a date (YYMMDD, day 00 = end of month)",
            ),
            (
                b"]C10104006381333931170002",
                "bad_length: (17) has 6 characters, got 4",
            ),
            (b"]C121ABC", "missing_ai: (21) requires (01)"),
            (
                b"]C10104006381333931\x1d5512",
                "unknown_ai: no AI starts with `5512` at offset 17",
            ),
            (
                b"]C1010400638133393110ABC#",
                "bad_value: (10) `ABC#` has `#`, outside GS1's character set",
            ),
            (
                b"]C1010400638133393131031A3456",
                "bad_value: (3103) `1A3456` must be digits",
            ),
            (
                b"]C101040063813339311012345678901234567890123",
                "bad_length: (10) is at most 20 characters, got 23 (FNC1 separator missing?)",
            ),
            (
                b"]C1010400638133393110A\x1d10B",
                "duplicate_ai: (10) appears twice with different values",
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(
                reason(frame).as_deref(),
                Some(want),
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn expiry_day_00_means_end_of_month_and_leap_years_count() {
        for ok in ["260200", "240229", "000229", "261231"] {
            let frame = format!("]C10104006381333931 17{ok}").replace(' ', "");
            assert!(decode(frame.as_bytes()).is_valid(), "{ok}");
        }
        for bad in ["250229", "261300", "260431", "269900"] {
            let frame = format!("]C1010400638133393117{bad}");
            assert_eq!(
                decode(frame.as_bytes()).error.map(|e| e.code()),
                Some("bad_date"),
                "{bad}"
            );
        }
    }

    #[test]
    fn identical_repeated_ai_is_kept_once() {
        let d = decode(b"]C1010400638133393110A\x1d10A");
        assert!(d.is_valid());
        assert_eq!(d.elements.len(), 2);
    }

    #[test]
    fn other_symbologies_are_plain_data() {
        for (frame, id, data) in [
            (&b"]A0CODE39-123"[..], "]A0", "CODE39-123"),
            (
                b"]Q1https://example.com/p?id=1",
                "]Q1",
                "https://example.com/p?id=1",
            ),
            (b"]C0HELLO", "]C0", "HELLO"),
            (b"]d1ANY THING", "]d1", "ANY THING"),
        ] {
            let d = decode(frame);
            assert!(d.is_valid(), "{id}");
            assert_eq!(d.symbology.as_deref(), Some(id));
            assert_eq!(d.data, data);
            assert_eq!(d.gtin, None);
        }
    }

    #[test]
    fn without_aim_the_data_decides() {
        assert_eq!(
            decode(b"4006381333931")
                .gtin
                .map(|g| g.to_string())
                .as_deref(),
            Some("4006381333931")
        );
        assert_eq!(
            decode(b"036000291452")
                .gtin
                .map(|g| g.to_string())
                .as_deref(),
            Some("036000291452")
        );
        assert_eq!(
            reason(b"4006381333932").as_deref(),
            Some("bad_check_digit: 4006381333932: check digit is 2 but should be 1")
        );
        let d = decode(b"010400638133393110LOT7");
        assert_eq!(
            d.elements,
            vec![el("01", "04006381333931"), el("10", "LOT7")]
        );
        assert!(decode(b"12345").is_valid());
        assert!(decode(b"HELLO WORLD").is_valid());
    }

    #[test]
    fn noise_and_malformed_frames_are_invalid_not_fatal() {
        assert_eq!(
            reason(b"\x00\xff]E04006381333931").as_deref(),
            Some("noise: unexpected byte 0x00 at offset 0")
        );
        let d = decode(b"]E0400638\x07133393");
        assert_eq!(
            d.error.map(|e| e.to_string()).as_deref(),
            Some("noise: unexpected byte 0x07 at offset 6")
        );
        assert_eq!(d.data, "400638\\x07133393");
        assert_eq!(d.symbology.as_deref(), Some("]E0"));
        assert_eq!(
            reason(b"]E0").as_deref(),
            Some("empty: no data after the symbology identifier ]E0")
        );
        assert_eq!(
            reason(b"]").as_deref(),
            Some("bad_symbology: `]` is not an AIM symbology identifier")
        );
        assert_eq!(
            reason(b"]1x123").as_deref(),
            Some("bad_symbology: `]1x` is not an AIM symbology identifier")
        );
        assert_eq!(
            reason(b"]C1\x1d\x1d").as_deref(),
            Some("empty: no data after the FNC1 separators")
        );
    }

    #[test]
    fn truncated_reads_are_never_valid() {
        let d = decode_truncated(b"]E04006381333931", 16);
        assert_eq!(d.gtin, None);
        assert_eq!(
            d.error.map(|e| e.to_string()).as_deref(),
            Some("truncated: read longer than 16 bytes was cut")
        );
    }

    fn gtin14() -> impl Strategy<Value = String> {
        proptest::collection::vec(0u8..10, 13).prop_map(|body| {
            let c = check_digit(&body);
            body.iter()
                .chain(std::iter::once(&c))
                .map(|d| char::from(b'0' + d))
                .collect()
        })
    }

    fn cset82() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[A-Za-z0-9!\"%&'()*+,./:;<=>?_-]{1,20}").expect("regex")
    }

    fn date() -> impl Strategy<Value = String> {
        (0u32..100, 1u32..13, 0u32..29).prop_map(|(y, m, d)| format!("{y:02}{m:02}{d:02}"))
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let d = decode(&bytes);
            if let Some(e) = &d.error {
                let reason = e.to_string();
                prop_assert!(reason.starts_with(e.code()));
            }
            let _ = decode_truncated(&bytes, 64);
        }

        #[test]
        fn decode_never_panics_on_gs1_like_input(s in "(\\]C1)?[0-9A-Z\u{1d}]{0,60}") {
            let _ = decode(s.as_bytes());
        }

        #[test]
        fn generated_element_strings_round_trip(
            gtin in gtin14(),
            lot in cset82(),
            serial in proptest::option::of(cset82()),
            expiry in proptest::option::of(date()),
            weight in proptest::option::of(0u32..1_000_000),
            leading_fnc1 in any::<bool>(),
        ) {
            let mut expected = vec![el("01", &gtin)];
            let mut s = String::from(if leading_fnc1 { "\u{1d}" } else { "" });
            s.push_str(&format!("01{gtin}"));
            if let Some(e) = &expiry { s.push_str(&format!("17{e}")); expected.push(el("17", e)); }
            if let Some(w) = weight { s.push_str(&format!("3103{w:06}")); expected.push(el("3103", &format!("{w:06}"))); }
            s.push_str(&format!("10{lot}")); expected.push(el("10", &lot));
            if let Some(sn) = &serial { s.push_str(&format!("\u{1d}21{sn}")); expected.push(el("21", sn)); }
            let d = decode(format!("]C1{s}").as_bytes());
            prop_assert!(d.is_valid(), "{:?} for {:?}", d.error, s);
            prop_assert_eq!(d.elements, expected);
            prop_assert_eq!(d.gtin.map(|g| g.to_string()), Some(gtin));
        }

        #[test]
        fn a_changed_gtin_digit_is_caught_through_aim(body in proptest::collection::vec(0u8..10, 12), pos in 0usize..13, delta in 1u8..10) {
            let c = check_digit(&body);
            let mut digits = body.clone();
            digits.push(c);
            let good: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            let frame = format!("]E0{}", good);
            prop_assert!(decode(frame.as_bytes()).is_valid());
            digits[pos] = (digits[pos] + delta) % 10;
            let bad: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            let d = decode(format!("]E0{bad}").as_bytes());
            prop_assert_eq!(d.error.map(|e| e.code()), Some("bad_check_digit"));
        }
    }
}
