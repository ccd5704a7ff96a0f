//! Integration tests: the functions' real handlers against a real local AWS server (moto).

mod accept;
mod events;
mod helpers;
mod status;
mod worker;
