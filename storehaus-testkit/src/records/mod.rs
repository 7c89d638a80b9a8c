//! The records that more than one test file uses, each with its constructor
//! and its `CREATE TABLE`. A record only one file uses is declared in that
//! file.

pub mod accounts;
pub mod items;
pub mod users;
