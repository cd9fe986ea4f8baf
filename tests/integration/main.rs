//! Integration tests against real servers and clients: Debian's
//! `docker-registry` as the upstream (anonymous and behind Docker-Hub-style
//! token auth), skopeo as the client, and an in-process fake upstream where
//! a fault must be injected. One test binary, so it links once.

mod common;

mod cli;
mod clients;
mod coalesce;
mod crash;
mod diskfull;
mod faults;
mod hostile;
mod lifecycle;
mod matrix;
mod metrics;
mod ops;
mod protocol;
mod pull;
mod routing;
mod sqlite;
