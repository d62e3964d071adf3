//! sipvane data plane.
//!
//! Everything here except `worker` is sans-IO: no sockets, no clocks, no
//! environment. Drivers in `worker` pass received bytes and the current time
//! in, and take datagrams to send and the next timer deadline out.

pub mod dialog;
pub mod dispatch;
pub mod hep;
pub mod proxy;
pub mod registrar;
pub mod route;
pub mod rtpengine;
pub mod sip;
pub mod transport;
pub mod txn;
pub mod worker;
