//! Newsletter dispatch, the domain: what a newsletter is, how a request becomes one, the messages
//! that carry the work through the queue, and how an email is rendered.
//!
//! Nothing here knows about Lambda. The `accept` and `worker` functions are thin adapters around it.

pub mod audience;
pub mod aws_error;
pub mod config;
pub mod deliver;
pub mod directory;
pub mod domain;
pub mod dynamo;
pub mod message;
pub mod planning;
pub mod queue;
pub mod render;
pub mod sdk;
pub mod status;
pub mod submit;
pub mod tasks;
pub mod work;

#[cfg(any(test, feature = "fakes"))]
pub mod contract;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;

pub use domain::{FieldError, IdempotencyKey, Newsletter, TaskId};
