//! `cert prove --pkcs11-*`: the verification certificate signed inside a PKCS#11 module (an HSM,
//! a smart card, SoftHSM2 for tests), so the CA's private key never exists outside it. This file
//! is the module I/O only: finding the token and the key, logging in, and asking for one
//! signature; what is signed and how the answer is shaped is `iothub_pki::external_key`.

use anyhow::{bail, Context, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use iothub_pki::external_key::{ecdsa_raw_to_der, ExternalKeyKind};

/// Where the CA's key is: `--pkcs11-module`, `--pkcs11-token`, `--pkcs11-key` and the PIN.
#[derive(Debug, Clone, clap::Args)]
pub struct Pkcs11Args {
    /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so); with it, the CA key is used
    /// inside the module instead of --key.
    #[arg(long, requires_all = ["pkcs11_token", "pkcs11_key"], conflicts_with = "key")]
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The label of the token holding the CA key.
    #[arg(long)]
    pub pkcs11_token: Option<String>,
    /// The label of the CA's private key on the token.
    #[arg(long)]
    pub pkcs11_key: Option<String>,
    /// The token's user PIN (or IOTHUB_PKCS11_PIN; never printed).
    #[arg(long, env = "IOTHUB_PKCS11_PIN", hide_env_values = true)]
    pub pkcs11_pin: Option<String>,
}

/// A logged-in session and the CA key's handle in it.
pub struct Pkcs11Signer {
    session: Session,
    key: ObjectHandle,
    kind: ExternalKeyKind,
    // Kept open for as long as the session lives.
    _context: Pkcs11,
}

impl Pkcs11Signer {
    /// Opens `args.pkcs11_module`, finds the token and the key, and logs in.
    pub fn open(args: &Pkcs11Args, kind: ExternalKeyKind) -> Result<Pkcs11Signer> {
        let (Some(module), Some(token), Some(label)) =
            (&args.pkcs11_module, &args.pkcs11_token, &args.pkcs11_key)
        else {
            bail!("--pkcs11-module, --pkcs11-token and --pkcs11-key go together");
        };
        let Some(pin) = &args.pkcs11_pin else {
            bail!("the token's PIN is needed: --pkcs11-pin PIN or IOTHUB_PKCS11_PIN");
        };
        let context = Pkcs11::new(module)
            .with_context(|| format!("cannot load the PKCS#11 module {}", module.display()))?;
        context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .context("the PKCS#11 module did not initialise")?;
        let mut labels = Vec::new();
        let mut found = None;
        for slot in context.get_slots_with_token()? {
            let info = context.get_token_info(slot)?;
            let shown = info.label().trim().to_string();
            if shown == *token {
                found = Some(slot);
                break;
            }
            labels.push(shown);
        }
        let Some(slot) = found else {
            bail!(
                "no token labelled '{token}' in {} (tokens: {})",
                module.display(),
                if labels.is_empty() {
                    "none".into()
                } else {
                    labels.join(", ")
                }
            );
        };
        let session = context.open_ro_session(slot)?;
        session
            .login(UserType::User, Some(&AuthPin::from(pin.clone())))
            .with_context(|| format!("cannot log in to token '{token}' (wrong PIN?)"))?;
        let keys = session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?;
        let key = match keys.as_slice() {
            [one] => *one,
            [] => bail!("token '{token}' has no private key labelled '{label}'"),
            many => bail!(
                "token '{token}' has {} private keys labelled '{label}'; label them apart",
                many.len()
            ),
        };
        Ok(Pkcs11Signer {
            session,
            key,
            kind,
            _context: context,
        })
    }

    /// Signs the to-be-signed bytes of a certificate inside the module, answering in X.509's
    /// form: ECDSA over the SHA-256 digest (`CKM_ECDSA`, whose raw r||s becomes DER), RSA with
    /// `CKM_SHA256_RSA_PKCS`.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        match self.kind {
            ExternalKeyKind::EcP256 => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
                let raw = self
                    .session
                    .sign(&Mechanism::Ecdsa, self.key, digest.as_ref())
                    .map_err(|e| e.to_string())?;
                ecdsa_raw_to_der(&raw)
                    .ok_or_else(|| "the module's ECDSA signature is malformed".into())
            }
            ExternalKeyKind::Rsa => self
                .session
                .sign(&Mechanism::Sha256RsaPkcs, self.key, msg)
                .map_err(|e| e.to_string()),
        }
    }
}
