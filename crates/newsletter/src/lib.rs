//! The core of newsletter dispatch: what a newsletter is and how a request becomes one
//! ([`domain`]), the messages that carry the work through the queue ([`message`]), the use cases
//! of both functions ([`submit`], [`preview`] and [`status`] for accept, [`control`] for both (pause and
//! resume), [`dispatch`] for the worker, with [`planning`], [`audience`], [`render`] and
//! [`sending`]), and the [`ports`] they need from the
//! outside world, each with its contract.
//!
//! Nothing here knows about Lambda or AWS (this crate depends on no AWS crate): the adapters
//! are in `newsletter-aws`, and the `accept` and `worker` functions wire them to these use cases.

pub mod audience;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod domain;
pub mod message;
pub mod planning;
pub mod ports;
pub mod preview;
pub mod render;
pub mod sending;
pub mod status;
pub mod submit;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use domain::{FieldError, IdempotencyKey, Newsletter, TaskId};
