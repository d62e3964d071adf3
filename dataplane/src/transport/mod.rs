//! Stream transports (TCP, TLS), sans-IO: framing a byte stream into SIP
//! messages with RFC 5626 keep-alives ([`framer`]) and a worker's table of
//! connections with generation-checked flow tokens, limits and timeouts
//! ([`flows`]); the PROXY protocol header a load balancer in front sends first
//! ([`proxy_protocol`]); TLS sessions on a connection ([`tls`]). The drivers in `worker` own the sockets and feed bytes and `now` in.

pub mod flows;
pub mod framer;
pub mod proxy_protocol;
pub mod tls;

pub use flows::{CloseReason, Conn, FlowId, Flows, Limits, Refused};
pub use framer::{content_length, Frame, FrameError, Framer, PONG};
