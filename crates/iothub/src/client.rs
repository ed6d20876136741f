//! The HTTPS API client lives in the `iothub-client` crate; these names keep `crate::client::...` paths working.
pub use iothub_client::{segment, unix_now, ApiClient, HubTarget};
