//! Certificates made with rcgen for the unit tests of the trust index and of chain validation,
//! which both need CAs, intermediates and device leaves shaped the same way.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate named `cn`: a CA with constraints `ca`, else a clientAuth device leaf; valid
/// from an hour ago for a day.
pub(crate) fn params(cn: &str, ca: Option<BasicConstraints>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    match ca {
        Some(bc) => {
            p.is_ca = IsCa::Ca(bc);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        }
        None => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    p
}

pub(crate) struct Chain {
    pub(crate) root: rcgen::Certificate,
    pub(crate) root_issuer: Issuer<'static, KeyPair>,
    pub(crate) inter: rcgen::Certificate,
    pub(crate) leaf: rcgen::Certificate,
}

/// root ("root", with `root_constraints`) > "inter" > leaf "dev".
pub(crate) fn root_inter_leaf(root_constraints: BasicConstraints) -> Chain {
    let root_key = KeyPair::generate().expect("a P-256 key");
    let root_params = params("root", Some(root_constraints));
    let root = root_params
        .self_signed(&root_key)
        .expect("the root signs itself");
    let root_issuer = Issuer::new(root_params, root_key);
    let inter_key = KeyPair::generate().expect("a P-256 key");
    let inter_params = params("inter", Some(BasicConstraints::Unconstrained));
    let inter = inter_params
        .signed_by(&inter_key, &root_issuer)
        .expect("the root signs the intermediate");
    let leaf = params("dev", None)
        .signed_by(
            &KeyPair::generate().expect("a P-256 key"),
            &Issuer::new(inter_params, inter_key),
        )
        .expect("the intermediate signs the leaf");
    Chain {
        root,
        root_issuer,
        inter,
        leaf,
    }
}
