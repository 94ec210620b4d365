//! A throwaway PKI for the TLS tests, made with the `openssl` command: a CA,
//! a broker certificate for 127.0.0.1 and localhost, and client certificates
//! for agents and bridges. EC P-256 keys in PKCS#8, X.509 v3 with the
//! extensions rustls insists on (a CA marked as one, leaf certificates with
//! their extended key usage and subject alternative names).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `openssl` configuration: our own, so the machine's `openssl.cnf` (which
/// adds extensions of its own to `req -x509`) cannot change the certificates.
const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = storelink-test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA in a directory; issues certificates next to itself.
#[derive(Debug, Clone)]
pub struct TestPki {
    dir: PathBuf,
    config: PathBuf,
    pub ca: CertPair,
}

impl TestPki {
    /// A new CA named `name` in `dir/name/`.
    pub fn create(dir: &Path, name: &str) -> Result<TestPki> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("openssl.cnf");
        std::fs::write(&config, CONFIG).context("writing openssl.cnf")?;
        let ca = CertPair {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-config"])
                .arg(&config)
                .args(["-extensions", "ca", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-days", "2", "-subj", &format!("/CN={name}")])
                .arg("-keyout")
                .arg(&ca.key)
                .arg("-out")
                .arg(&ca.cert),
        )?;
        Ok(TestPki { dir, config, ca })
    }

    /// A broker certificate valid for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Result<CertPair> {
        self.issue(name, "server")
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> Result<CertPair> {
        self.issue(name, "client")
    }

    fn issue(&self, name: &str, extensions: &str) -> Result<CertPair> {
        let pair = CertPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-config"])
                .arg(&self.config)
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-subj", &format!("/CN={name}")])
                .arg("-keyout")
                .arg(&pair.key)
                .arg("-out")
                .arg(&csr),
        )?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&self.ca.cert)
                .arg("-CAkey")
                .arg(&self.ca.key)
                .args(["-CAcreateserial", "-days", "2", "-extfile"])
                .arg(&self.config)
                .args(["-extensions", extensions, "-out"])
                .arg(&pair.cert),
        )?;
        Ok(pair)
    }
}

fn openssl(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .context("running openssl (install it: scripts/install-deps.sh)")?;
    if !out.status.success() {
        bail!(
            "openssl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
