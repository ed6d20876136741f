//! `iothub pki ...`: make test certificates without openssl. Files are written next to each other:
//! `NAME.pem` (certificate, with its chain for intermediates and devices) and `NAME.key` (mode 0600).
//! `pki ca --openssl-dir DIR` also writes what the seed tutorial's `openssl ca` step needs and
//! does not provide: `DIR/NAMEca.conf` and its database, so that the openssl path runs as written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iothub_pki::gen::{self, CaIssuer, KeyKind};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::files::write_new;
use crate::output::Output;

#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// RSA key of this many bits (2048, 3072 or 4096) instead of ECDSA P-256.
    #[arg(long, value_name = "BITS", conflicts_with_all = ["ed25519", "p384"])]
    rsa: Option<u32>,
    /// Ed25519 key instead of ECDSA P-256.
    #[arg(long, conflicts_with = "p384")]
    ed25519: bool,
    /// ECDSA P-384 key instead of P-256.
    #[arg(long)]
    p384: bool,
}

impl KeyArgs {
    fn kind(&self) -> KeyKind {
        match (self.rsa, self.ed25519, self.p384) {
            (Some(bits), _, _) => KeyKind::Rsa(bits),
            (_, true, _) => KeyKind::Ed25519,
            (_, _, true) => KeyKind::EcP384,
            _ => KeyKind::EcP256,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum PkiCommand {
    /// Make a root CA, or with --parent an intermediate CA: NAME.pem and NAME.key.
    Ca {
        /// The CA's name: the files are NAME.pem and NAME.key.
        name: String,
        /// Subject CN [default: NAME].
        #[arg(long)]
        cn: Option<String>,
        /// Sign with this CA: PARENT.pem and PARENT.key (or give --parent-cert and --parent-key).
        #[arg(long, conflicts_with_all = ["parent_cert", "parent_key"])]
        parent: Option<PathBuf>,
        /// The signing CA's certificate (PEM), with --parent-key.
        #[arg(long, requires = "parent_key")]
        parent_cert: Option<PathBuf>,
        /// The signing CA's private key (PEM), with --parent-cert.
        #[arg(long, requires = "parent_cert")]
        parent_key: Option<PathBuf>,
        #[command(flatten)]
        key: KeyArgs,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
        /// Also write DIR/NAMEca.conf and its database (DIR/NAMEca.db/), ready for
        /// `openssl ca -batch -config DIR/NAMEca.conf -extensions client_ext` to sign with this CA.
        #[arg(long, value_name = "DIR")]
        openssl_dir: Option<PathBuf>,
    },
    /// Make a device certificate with CN = ID and the clientAuth usage, signed by a CA: ID.pem
    /// (leaf followed by the CA chain) and ID.key.
    Device {
        /// The device id: the certificate's CN, and the files ID.pem and ID.key.
        id: String,
        /// The signing CA's certificate (PEM; its chain is appended to ID.pem).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The signing CA's private key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Make a verification certificate offline: CN = CODE, signed by the CA.
    VerificationCert {
        /// The CA's certificate (PEM).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The CA's private key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// The verification code the hub gave ('iothub cert code').
        #[arg(long)]
        code: String,
        /// Output file (its key goes beside it, with .key).
        #[arg(long, default_value = "verification.pem")]
        out: PathBuf,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn issuer(cert: &Path, key: &Path) -> Result<CaIssuer> {
    CaIssuer::from_pem(&read(cert)?, &read(key)?)
        .with_context(|| format!("cannot sign with {} and {}", cert.display(), key.display()))
}

fn check_days(days: i64) -> Result<Duration> {
    if !(1..=36500).contains(&days) {
        bail!("--days is {days}; expected 1 to 36500");
    }
    Ok(Duration::days(days))
}

fn write_pair(
    output: Output,
    cert_path: &Path,
    key_path: &Path,
    g: &gen::Generated,
    force: bool,
) -> Result<()> {
    // --out-dir names where the pair goes: made when missing, as `openssl req -out` would not.
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    // Key first: a certificate on disk always has its key beside it.
    write_new(key_path, g.key_pem.as_bytes(), 0o600, force)?;
    write_new(cert_path, g.cert_pem.as_bytes(), 0o644, force)?;
    match output {
        Output::Json => println!(
            "{}",
            json!({ "certificate": cert_path.display().to_string(), "key": key_path.display().to_string() })
        ),
        Output::Text => println!("wrote {} and {}", cert_path.display(), key_path.display()),
    }
    Ok(())
}

/// Writes `dir/NAMEca.conf` and its database for `openssl ca` with the CA `cert`/`key`: the
/// tutorial's step 9 (`openssl ca -config rootca.conf ... -extensions client_ext`) then runs as
/// written, `-batch` answering its two questions. Paths in it are absolute, so it works from any
/// directory.
fn write_openssl_ca(
    output: Output,
    dir: &Path,
    name: &str,
    (cert, key): (&Path, &Path),
    force: bool,
) -> Result<()> {
    let absolute = |p: &Path| {
        std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = absolute(dir)?.join(format!("{name}ca.db"));
    std::fs::create_dir_all(db.join("newcerts"))
        .with_context(|| format!("cannot create {}", db.display()))?;
    write_new(&db.join("index.txt"), b"", 0o644, force)?;
    write_new(&db.join("serial"), b"1000\n", 0o644, force)?;
    let conf = format!(
        "# openssl ca configuration for the CA '{name}', written by `iothub pki ca --openssl-dir`.\n\
         [ ca ]\n\
         default_ca = CA_default\n\
         [ CA_default ]\n\
         dir = {db}\n\
         database = $dir/index.txt\n\
         new_certs_dir = $dir/newcerts\n\
         serial = $dir/serial\n\
         certificate = {cert}\n\
         private_key = {key}\n\
         default_md = sha256\n\
         default_days = 30\n\
         policy = policy_loose\n\
         unique_subject = no\n\
         copy_extensions = none\n\
         [ policy_loose ]\n\
         commonName = supplied\n\
         # A verification certificate (or a device certificate) this CA signs.\n\
         [ client_ext ]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
        db = db.display(),
        cert = absolute(cert)?.display(),
        key = absolute(key)?.display(),
    );
    let conf_path = dir.join(format!("{name}ca.conf"));
    write_new(&conf_path, conf.as_bytes(), 0o644, force)?;
    match output {
        // A second JSON line after the certificate's.
        Output::Json => println!(
            "{}",
            json!({ "opensslConfig": conf_path.display().to_string(), "opensslDatabase": db.display().to_string() })
        ),
        Output::Text => println!(
            "wrote {} (and its database {})",
            conf_path.display(),
            db.display()
        ),
    }
    Ok(())
}

fn file_stem_ok(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{what} '{name}' cannot be used as a file name");
    }
    Ok(())
}

pub fn run(output: Output, cmd: PkiCommand) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::minutes(5);
    match cmd {
        PkiCommand::Ca {
            name,
            cn,
            parent,
            parent_cert,
            parent_key,
            key,
            days,
            out_dir,
            force,
            openssl_dir,
        } => {
            file_stem_ok(&name, "the CA name")?;
            let parent_files = match (parent, parent_cert, parent_key) {
                (Some(p), _, _) => Some((p.with_extension("pem"), p.with_extension("key"))),
                (None, Some(c), Some(k)) => Some((c, k)),
                _ => None,
            };
            let parent = parent_files.map(|(c, k)| issuer(&c, &k)).transpose()?;
            let g = gen::make_ca(
                cn.as_deref().unwrap_or(&name),
                key.kind(),
                parent.as_ref(),
                not_before,
                now + check_days(days)?,
            )?;
            let (cert, key) = (
                out_dir.join(format!("{name}.pem")),
                out_dir.join(format!("{name}.key")),
            );
            write_pair(output, &cert, &key, &g, force)?;
            match openssl_dir {
                Some(dir) => write_openssl_ca(output, &dir, &name, (&cert, &key), force),
                None => Ok(()),
            }
        }
        PkiCommand::Device {
            id,
            ca_cert,
            ca_key,
            key,
            days,
            out_dir,
            force,
        } => {
            file_stem_ok(&id, "the device id")?;
            let ca = issuer(&ca_cert, &ca_key)?;
            // The leaf is written followed by the CA's chain (as read from --ca-cert).
            let g = gen::make_leaf(
                &id,
                key.kind(),
                &ca,
                &[],
                not_before,
                now + check_days(days)?,
            )?;
            write_pair(
                output,
                &out_dir.join(format!("{id}.pem")),
                &out_dir.join(format!("{id}.key")),
                &g,
                force,
            )
        }
        PkiCommand::VerificationCert {
            ca_cert,
            ca_key,
            code,
            out,
            force,
        } => {
            let code = code.trim();
            if code.is_empty() || code.len() > 64 {
                bail!("--code must be the verification code the hub gave (48 hex characters)");
            }
            let ca = issuer(&ca_cert, &ca_key)?;
            let g = gen::make_verification_cert(code, &ca, now, Duration::hours(24))?;
            write_pair(output, &out, &out.with_extension("key"), &g, force)
        }
    }
}
