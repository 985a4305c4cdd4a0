//! Test fixtures for syncer: real `docker-registry` processes on loopback,
//! real images built from files, a certificate authority, a fault-injecting
//! reverse proxy and a token server. Nothing here mocks a registry: the
//! proxy and the token server only add what a real registry cannot show on
//! demand.

pub mod certs;
pub mod image;
pub mod listener;
pub mod proxy;
pub mod registry;
pub mod token;

pub use token::credential_helper_dir;
