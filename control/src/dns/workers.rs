//! Answers the workers' questions about host names in the Request-URI,
//! Route and Contact of requests they relay (`dataplane::route::names`).
//! Each question is resolved in a task of its own, so a name whose server
//! never answers holds up nothing but the requests waiting for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::route::names::{Answer, NameBridge, Question, Resolved};
use tokio::sync::{Notify, Semaphore};

use super::rfc3263::Transport;
use super::Resolver;

/// Transports a relayed request may use (UDP and TCP; not TLS).
const RELAY_TRANSPORTS: &[Transport] = &[Transport::Udp, Transport::Tcp];

/// Names resolved at the same time; further questions wait in the bridge.
const CONCURRENT: usize = 64;

/// How long a worker keeps "the DNS server failed" before asking again.
const FAILED_TTL: Duration = Duration::from_secs(1);

/// Serves the workers' questions until the runtime stops.
pub async fn serve(bridge: Arc<NameBridge>, dns: Arc<Resolver>, negative_ttl: Duration) {
    let notify = Arc::new(Notify::new());
    let wake = notify.clone();
    bridge.on_question(move || wake.notify_one());
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        // Drained before waiting: questions asked before this task started
        // woke nobody.
        while let Some(q) = bridge.next_question() {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (bridge, dns) = (bridge.clone(), dns.clone());
            tokio::spawn(async move {
                answer(&bridge, &dns, q, negative_ttl).await;
                drop(slot);
            });
        }
        notify.notified().await;
    }
}

async fn answer(bridge: &NameBridge, dns: &Resolver, q: Question, negative_ttl: Duration) {
    let uri = String::from_utf8_lossy(&q.name).into_owned();
    let (resolved, ttl) = resolve(dns, &uri, negative_ttl).await;
    let worker = usize::from(q.worker);
    if !bridge.answer(
        worker,
        Answer {
            name: q.name,
            resolved,
            ttl,
        },
    ) {
        tracing::warn!(worker, name = %uri, "a worker's DNS answer queue is full: answer dropped");
    }
}

/// The first RFC 3263 target of `uri`, and how long a worker may keep it:
/// until the control thread's cache refreshes it.
pub async fn resolve(dns: &Resolver, uri: &str, negative_ttl: Duration) -> (Resolved, Duration) {
    match dns.resolve_uri(uri, RELAY_TRANSPORTS).await {
        Ok(res) => {
            let Some(t) = res.targets.first() else {
                return (Resolved::NoSuchName, negative_ttl);
            };
            let ttl = res.refresh.map_or(negative_ttl, |at| {
                at.saturating_duration_since(Instant::now())
            });
            let found = Resolved::Found {
                to: t.addr,
                tcp: t.transport == Transport::Tcp,
            };
            (found, ttl.max(Duration::from_secs(1)))
        }
        Err(e) if e.temporary => {
            tracing::warn!(name = uri, error = %e, "cannot resolve a request's next hop");
            (Resolved::Failed, FAILED_TTL)
        }
        Err(e) => {
            tracing::info!(name = uri, error = %e, "a request's next hop does not resolve");
            (
                Resolved::NoSuchName,
                negative_ttl.max(Duration::from_secs(1)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unusable_names_are_not_found_and_dead_servers_failures() {
        let dns = Resolver::new(&super::super::tests::no_server()).unwrap();
        let ttl = Duration::from_secs(30);
        assert_eq!(
            resolve(&dns, "sip:127.0.0.1;transport=tls", ttl).await,
            (Resolved::NoSuchName, ttl)
        );
        assert_eq!(
            resolve(&dns, "sip:pbx.sipvane.test:5060", ttl).await,
            (Resolved::Failed, FAILED_TTL)
        );
        let (found, _) = resolve(&dns, "sip:127.0.0.1:5070;transport=tcp", ttl).await;
        assert_eq!(
            found,
            Resolved::Found {
                to: "127.0.0.1:5070".parse().unwrap(),
                tcp: true
            }
        );
    }

    #[tokio::test]
    async fn questions_are_answered_to_the_worker_that_asked() {
        let bridge = Arc::new(NameBridge::new(2, 8));
        let dns = Arc::new(Resolver::new(&super::super::tests::no_server()).unwrap());
        let task = tokio::spawn(serve(bridge.clone(), dns, Duration::from_secs(5)));
        tokio::task::yield_now().await;
        assert!(bridge.ask(1, b"sip:127.0.0.1:5071"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = loop {
            if let Some(a) = bridge.next_answer(1) {
                break a;
            }
            assert!(Instant::now() < deadline, "no answer");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(&*answer.name, b"sip:127.0.0.1:5071");
        assert!(matches!(
            answer.resolved,
            Resolved::Found { tcp: false, .. }
        ));
        assert!(bridge.next_answer(0).is_none());
        task.abort();
    }
}
