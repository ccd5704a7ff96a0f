//! Newsletter dispatch, the domain: what a newsletter is, how a request becomes one, the messages
//! that carry the work through the queue, and how an email is rendered.
//!
//! Nothing here knows about Lambda. The `accept` and `worker` functions are thin adapters around it.

pub mod config;
pub mod domain;
pub mod message;
pub mod queue;
pub mod submit;

pub use domain::{FieldError, Newsletter, TaskId};
