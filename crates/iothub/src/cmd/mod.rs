//! The client commands, one file per command group. Each talks to a hub through the API
//! (`iothub_client`), except `pki`, which makes test certificates locally; every one prints its
//! answer through `crate::output`.

pub mod audit;
pub mod c2d;
pub mod cert;
pub mod credentials;
pub mod device;
pub mod dps;
pub mod eventhub;
pub mod kms;
pub mod monitor;
pub mod pkcs11;
pub mod pki;
pub mod policy;
pub mod twin;
