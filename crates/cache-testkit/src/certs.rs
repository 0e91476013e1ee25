//! Throwaway TLS certificates made with `openssl`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::process::find_binary;

/// A throwaway certificate authority, a server certificate it signed (for `localhost` and
/// `127.0.0.1`) and a client certificate it signed (for mutual TLS), made with the `openssl`
/// command in a temp dir, for TLS tests.
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM): what clients must trust.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), valid for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
    /// A client certificate (PEM, `CN=tiercache test client`, extended key usage
    /// `clientAuth`) signed by the same CA: what a server with `tls-auth-clients yes`
    /// accepts.
    pub client_cert: PathBuf,
    /// The client certificate's private key (PEM, PKCS#8).
    pub client_key: PathBuf,
}

impl fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCerts")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestCerts {
    /// Generate a CA (P-256) and a server certificate signed by it, valid for two days, for
    /// `localhost` and `127.0.0.1`.
    pub fn generate() -> Result<TestCerts> {
        Self::generate_with_san("DNS:localhost,IP:127.0.0.1")
    }

    /// Like [`TestCerts::generate`], with the server certificate valid only for the names in
    /// `subject_alt_names` (OpenSSL syntax, e.g. `"DNS:elsewhere.invalid"`): for "wrong host
    /// name" tests.
    pub fn generate_with_san(subject_alt_names: &str) -> Result<TestCerts> {
        let openssl = find_binary("openssl").map_err(|_| {
            Error::new(
                "`openssl` was not found on PATH; install it with: apt-get install -y openssl",
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("tiercache-certs-")
            .tempdir()
            .map_err(|e| Error::new(format!("cannot create a temp dir for certificates: {e}")))?;
        let p = |name: &str| dir.path().join(name);
        let s = |path: &Path| path.to_string_lossy().into_owned();
        std::fs::write(
            p("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={subject_alt_names}\n"
            ),
        )
        .map_err(|e| Error::new(format!("cannot write server.ext: {e}")))?;
        std::fs::write(
            p("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
        .map_err(|e| Error::new(format!("cannot write client.ext: {e}")))?;
        let (ca_key, ca_pem) = (s(&p("ca.key")), s(&p("ca.pem")));
        let (key, csr, pem, ext) = (
            s(&p("server.key")),
            s(&p("server.csr")),
            s(&p("server.pem")),
            s(&p("server.ext")),
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(&openssl)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::new(format!("cannot run openssl: {e}")))?;
            if out.status.success() {
                return Ok(());
            }
            Err(Error::new(format!(
                "openssl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )))
        };
        let subj_ca = "/CN=tiercache test CA";
        run(&[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &ca_key, "-out", &ca_pem],
            &["-days", "2", "-subj", subj_ca],
            &ca_ext,
        ]
        .concat())?;
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
        let (client_key, client_csr, client_pem, client_ext) = (
            s(&p("client.key")),
            s(&p("client.csr")),
            s(&p("client.pem")),
            s(&p("client.ext")),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &client_key,
                "-out",
                &client_csr,
                "-subj",
                "/CN=tiercache test client",
            ],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &client_csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &client_pem,
            "-days",
            "2",
            "-extfile",
            &client_ext,
        ])?;
        Ok(TestCerts {
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        })
    }
}
