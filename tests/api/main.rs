//! Integration tests: the functions' real handlers against real local AWS servers (moto for SQS
//! and SES, DynamoDB Local for DynamoDB).

mod accept;
mod control;
mod enqueue_faults;
mod events;
mod helpers;
mod status;
mod store_contract;
mod store_faults;
mod test_send;
mod worker;
