//! SIP messages: zero-copy parsing, typed header access and writing.

pub mod method;

pub use method::Method;
