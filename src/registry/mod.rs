//! Client for the OCI distribution API. Layers, from the wire up: a
//! `transport` with timeouts, rate limits and one retry policy, `auth` that
//! answers `WWW-Authenticate` challenges, and `client` with the registry
//! operations the planner and executor call.

mod auth;
mod client;
mod credentials;
mod error;
mod settings;
#[cfg(test)]
mod test_server;
mod transport;

pub use auth::Scope;
pub use client::{Access, BlobStream, ManifestHead, RegistryClient, UploadStart};
pub use credentials::{Credentials, Secret};
pub use error::{ErrorBody, ErrorInfo, RegistryError, RequestInfo};
pub use settings::{ConnectionSettings, Registries, TlsMode};
