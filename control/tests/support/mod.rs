//! Shared harness for the `control` crate's integration tests: real SIPp
//! peers, loopback ports, readiness checks, and processes that never outlive
//! a test. Use it with `mod support;` at the top of a test file.
//!
//! Services (Redis, PostgreSQL, MariaDB, RTPEngine) come from
//! `scripts/services.sh` through [`Service::start`], one private instance per
//! call.
//!
//! Everything binds to loopback (127.0.0.1 / ::1) on explicitly chosen ports,
//! every run is bounded in calls and time, and every child process is killed
//! when its handle is dropped (also on panic).
//!
//! ```ignore
//! mod support;
//! use support::{Scenario, Uac, Uas};
//!
//! let uas = Uas::start(Scenario::Uas, support::free_udp_addr());
//! let run = Uac::new(Scenario::Uac, uas.addr()).calls(50).rate(50).run();
//! run.assert_all_succeeded(50);
//! ```

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

/// Runs every listed scenario (a `fn(io: &str)`) once per I/O driver, as
/// tests in modules `io_uring` and `epoll`. Needs `#[macro_use] mod support;`.
#[allow(unused_macros)]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod io_uring {
            $( #[test] fn $name() { super::$name("uring") } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll") } )*
        }
    };
}

pub mod dns;
pub mod net;
pub mod notify;
pub mod process;
pub mod services;
pub mod sipp;
pub mod sipvane;
pub mod tcp;
pub mod tls;

#[allow(unused_imports)]
pub use dns::{Dnsmasq, Record};
#[allow(unused_imports)]
pub use net::{
    assert_loopback, free_sip_port, free_tcp_port, free_udp_addr, free_udp_port, free_udp_ports,
    localhost, sip_options_ping, status_code, udp_bound, wait_for_tcp_listener,
    wait_for_udp_listener,
};
#[allow(unused_imports)]
pub use notify::NotifySocket;
#[allow(unused_imports)]
pub use process::{output_within, repo_root, require_binary, which, ChildGuard, WorkDir};
#[allow(unused_imports)]
pub use services::{Service, ServiceKind};
#[allow(unused_imports)]
pub use sipp::{
    received_messages, require_sipp, scenarios_dir, RunningUac, Scenario, SippRun, SippStats, Uac,
    Uas, UasBuilder,
};
#[allow(unused_imports)]
pub use sipvane::{api_get, metric, metrics, Counters, Sipvane, SipvaneBuilder};
