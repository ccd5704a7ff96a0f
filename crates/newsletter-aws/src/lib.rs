//! The adapters of newsletter dispatch on AWS: every AWS SDK type of the project lives here. Each
//! module implements ports of the core (`newsletter::ports`) on one service and keeps to their
//! contracts; the functions build them once, at init, from one [`sdk::load`]ed configuration.

pub mod dynamodb;
pub mod error;
pub mod sdk;
pub mod ses;
pub mod sqs;
