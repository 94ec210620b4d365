//! Whether the cloud TLS files hold what the MQTT client will read: a file
//! that exists but holds the wrong thing (a DER file, the key where the
//! certificate belongs, an encrypted key) passes a readability check and
//! only fails at the first connection, after the installer has left.

use std::io::Read as _;
use std::path::Path;

use rustls_pki_types::pem::{self, PemObject as _, SectionKind};

/// TLS files are a few kilobytes (a CA bundle a few hundred): reading
/// stops here, so a path naming a device or a huge file cannot hang the check.
const MAX_TLS_FILE_BYTES: u64 = 1024 * 1024;

fn read_capped(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)?
        .take(MAX_TLS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// What a TLS file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PemWant {
    /// At least one certificate (the CA file, the client certificate chain).
    Certificate,
    /// A private key in one of the unencrypted forms rustls reads.
    PrivateKey,
}

/// Why `bytes` is not the PEM file wanted, with a hint, or `None` if it is.
fn pem_problem(bytes: &[u8], want: PemWant) -> Option<(String, &'static str)> {
    const PEM_HINT: &str =
        "TLS files must be PEM text with `-----BEGIN …-----` / `-----END …-----` lines";
    if bytes.len() as u64 > MAX_TLS_FILE_BYTES {
        return Some((
            format!("larger than {MAX_TLS_FILE_BYTES} bytes; not a PEM file"),
            PEM_HINT,
        ));
    }
    let mut kinds = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        match section {
            Ok((kind, _)) => kinds.push(kind),
            Err(e) => return Some((format!("not valid PEM: {}", pem_error(&e)), PEM_HINT)),
        }
    }
    let has_cert = kinds.contains(&SectionKind::Certificate);
    let has_key = kinds.iter().any(|k| {
        matches!(
            k,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    });
    match want {
        PemWant::Certificate if has_cert => None,
        PemWant::Certificate if has_key => Some((
            "no PEM certificate found, only a private key".to_owned(),
            "is this the key file? cert_file and ca_file hold `BEGIN CERTIFICATE` blocks",
        )),
        PemWant::Certificate => Some((
            "no PEM certificate found".to_owned(),
            "expected `-----BEGIN CERTIFICATE-----` blocks; convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem`",
        )),
        PemWant::PrivateKey if has_key => None,
        PemWant::PrivateKey if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => Some((
            "the private key is encrypted; the agent cannot ask for a passphrase".to_owned(),
            "decrypt it with `openssl pkey -in FILE -out FILE.key` and protect the file by its permissions",
        )),
        PemWant::PrivateKey if has_cert => Some((
            "no PEM private key found, only a certificate".to_owned(),
            "is this the certificate file? key_file holds the agent's private key",
        )),
        PemWant::PrivateKey => Some((
            "no PEM private key found".to_owned(),
            "expected `BEGIN PRIVATE KEY` (PKCS#8), `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`",
        )),
    }
}

/// The PEM parser's errors, with byte strings shown as text.
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            // The parser gives the label alone (`CERTIFICATE`).
            let label = String::from_utf8_lossy(end_marker);
            format!("a section has no `-----END {}-----` line", label.trim())
        }
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed section start `{}`",
            String::from_utf8_lossy(line).trim()
        ),
        pem::Error::Base64Decode(why) => format!("bad base64 in a section: {why}"),
        other => other.to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why the readable file `file` is not the PEM file wanted, with a hint.
/// A file that cannot be read is not this check's to report.
pub(crate) fn file_problem(file: &Path, want: PemWant) -> Option<(String, &'static str)> {
    let bytes = read_capped(file).ok()?;
    pem_problem(&bytes, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway self-signed P-256 certificate and its key (`openssl req
    /// -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1
    /// -subj /CN=t`), used for nothing but tests.
    const TEST_CERT: &str = include_str!("../testdata/test-cert.pem");
    const TEST_KEY: &str = include_str!("../testdata/test-key.pem");

    #[test]
    fn broken_or_unusable_pem_says_what_is_wrong() {
        let why = |bytes: &str, want| pem_problem(bytes.as_bytes(), want).map(|(m, _)| m);
        assert_eq!(why(TEST_CERT, PemWant::Certificate), None);
        assert_eq!(why(TEST_KEY, PemWant::PrivateKey), None);
        assert_eq!(
            why(&format!("{TEST_KEY}{TEST_CERT}"), PemWant::Certificate),
            None,
            "a certificate after other blocks is found"
        );
        assert_eq!(
            why("", PemWant::Certificate).as_deref(),
            Some("no PEM certificate found")
        );
        assert_eq!(
            why(TEST_KEY, PemWant::Certificate).as_deref(),
            Some("no PEM certificate found, only a private key")
        );
        let torn = &TEST_CERT[..TEST_CERT.len() / 2];
        assert_eq!(
            why(torn, PemWant::Certificate).as_deref(),
            Some("not valid PEM: a section has no `-----END CERTIFICATE-----` line")
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            why(encrypted, PemWant::PrivateKey).as_deref(),
            Some("the private key is encrypted; the agent cannot ask for a passphrase")
        );
        assert_eq!(
            why("garbage", PemWant::PrivateKey).as_deref(),
            Some("no PEM private key found")
        );
    }
}
