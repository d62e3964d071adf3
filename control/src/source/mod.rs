//! Where destinations come from: a Kamailio `dispatcher.list` file, or the
//! Kamailio `dispatcher` table on PostgreSQL / MariaDB.

pub mod db;
pub mod file;
pub mod reload;
pub mod resolve;
pub mod snapshot;
