pub mod db;
pub mod snapshot;
