//! For tests and the bench only (feature `testing`; the shipped functions are built without it):
//! in-memory [`fakes`] of every port, with faults to inject, and the [`contract`] scenarios that
//! every store implementation must pass.

pub mod contract;
pub mod fakes;
