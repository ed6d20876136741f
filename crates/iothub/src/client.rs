//! The API client lives in `iothub-client`; these names keep `crate::client::...` paths working.
pub use iothub_client::{segment, unix_now, ApiClient, HubTarget};
