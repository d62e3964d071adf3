//! Stream transports (TCP; TLS later), sans-IO: framing a byte stream into SIP
//! messages with RFC 5626 keep-alives ([`framer`]) and a worker's table of
//! connections with generation-checked flow tokens, limits and timeouts
//! ([`flows`]). The drivers in `worker` own the sockets and feed bytes and `now` in.

pub mod flows;
pub mod framer;

pub use flows::{CloseReason, Conn, FlowId, Flows, Limits, Refused};
pub use framer::{content_length, Frame, FrameError, Framer, PONG};
