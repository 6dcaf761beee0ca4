//! Wake-ups for projectors: at once for appends in this process, through
//! LISTEN/NOTIFY for appends in other processes, and by polling as the fallback. A
//! projector is woken only by appends of the stream types it reads (the NOTIFY payload
//! carries them).
//!
//! NOTIFY is never sent inside the append transaction: PostgreSQL serialises the commits
//! of notifying transactions on one queue lock, which would cap append throughput. A
//! background task sends one coalesced NOTIFY after appends instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::watch;

pub const CHANNEL: &str = "cloudlens_events";

/// Cloneable handle; counters only ever grow, receivers compare with what they saw.
#[derive(Clone, Default)]
pub struct EventSignal {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by appends in this process (read by the NOTIFY sender).
    local: watch::Sender<u64>,
    /// Stream types appended here since the last NOTIFY (its payload).
    unsent: Mutex<BTreeSet<String>>,
    /// One counter per stream type, bumped by local appends and remote notifications
    /// (read by the projectors of that type).
    by_type: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Bumped by every wake-up, whatever the stream type (read by feed readers).
    any: watch::Sender<u64>,
}

/// Wakes a projector when events of one of its stream types were appended.
#[derive(Clone)]
pub struct Wake {
    receivers: Vec<watch::Receiver<u64>>,
}

impl Wake {
    /// Forgets the wake-ups so far.
    pub fn mark_unchanged(&mut self) {
        for r in &mut self.receivers {
            r.mark_unchanged();
        }
    }

    /// Resolves at the next append of one of the stream types.
    pub async fn changed(&mut self) {
        if self.receivers.is_empty() {
            return futures::future::pending().await;
        }
        let waits = self.receivers.iter_mut().map(|r| Box::pin(r.changed()));
        let _ = futures::future::select_all(waits).await;
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|n| *n = n.wrapping_add(1));
}

impl EventSignal {
    /// Called after events of `stream_type` were committed in this process.
    pub fn appended(&self, stream_type: &str) {
        if let Ok(mut unsent) = self.inner.unsent.lock() {
            if !unsent.contains(stream_type) {
                unsent.insert(stream_type.to_owned());
            }
        }
        bump(&self.inner.local);
        self.wake(Some(stream_type));
    }

    /// Wakes the projectors of `stream_type`, or all of them.
    fn wake(&self, stream_type: Option<&str>) {
        bump(&self.inner.any);
        let Ok(by_type) = self.inner.by_type.lock() else {
            return;
        };
        match stream_type {
            Some(t) => {
                if let Some(s) = by_type.get(t) {
                    bump(s);
                }
            }
            None => by_type.values().for_each(bump),
        }
    }

    /// A notification from another process: its payload lists the stream types (an
    /// empty payload wakes everyone).
    fn remote(&self, payload: &str) {
        if payload.is_empty() {
            return self.wake(None);
        }
        for t in payload.split(',') {
            self.wake(Some(t));
        }
    }

    /// Wake-ups for appends of any of `stream_types`.
    pub fn subscribe(&self, stream_types: &[&str]) -> Wake {
        let Ok(mut by_type) = self.inner.by_type.lock() else {
            return Wake {
                receivers: Vec::new(),
            };
        };
        // `stream/EventType` (a projection reading one event type) wakes on its stream.
        let receivers = stream_types
            .iter()
            .map(|t| t.split('/').next().unwrap_or(t))
            .map(|t| {
                by_type
                    .entry(t.to_owned())
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe()
            })
            .collect();
        Wake { receivers }
    }

    /// Wake-ups for appends of any stream type (the event feed).
    pub fn subscribe_all(&self) -> Wake {
        Wake {
            receivers: vec![self.inner.any.subscribe()],
        }
    }

    /// Sends one NOTIFY per burst of local appends until `shutdown` fires.
    pub async fn run_notifier(self, pool: Pool, mut shutdown: watch::Receiver<bool>) {
        let mut local = self.inner.local.subscribe();
        loop {
            tokio::select! {
                changed = local.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            local.mark_unchanged();
            let types = match self.inner.unsent.lock() {
                Ok(mut unsent) => std::mem::take(&mut *unsent),
                Err(_) => BTreeSet::new(),
            };
            if types.is_empty() {
                continue; // already announced by the previous NOTIFY
            }
            let payload = types.into_iter().collect::<Vec<_>>().join(",");
            if let Ok(client) = pool.get().await {
                if let Err(e) = client
                    .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                    .await
                {
                    tracing::debug!(error = %e, "NOTIFY failed; projectors elsewhere fall back to polling");
                }
            }
            // Coalesce: appends during this pause are covered by the next NOTIFY. Each
            // NOTIFY is a transaction of its own that every listener has to process, so
            // other processes hear of appends at most every 20 ms.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Keeps a LISTEN connection open (reconnecting as needed) and turns notifications
    /// from other processes into local wake-ups.
    pub async fn run_listener(self, conn: String, mut shutdown: watch::Receiver<bool>) {
        loop {
            match listen_once(&conn, &self, &mut shutdown).await {
                Ok(Stop::Shutdown) => return,
                Ok(Stop::Disconnected) => tracing::debug!("LISTEN connection closed; retrying"),
                Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

enum Stop {
    Shutdown,
    Disconnected,
}

async fn listen_once(
    conn: &str,
    signal: &EventSignal,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Stop, tokio_postgres::Error> {
    let (cfg, tls) = crate::db::config(conn)?;
    let (client, mut connection) = cfg.connect(tls).await?;
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(messages.map(Ok).forward(tx));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    signal.remote(""); // events may have arrived while we were not listening
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => signal.remote(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => { driver.abort(); return Err(e) }
                None => return Ok(Stop::Disconnected),
            },
            _ = shutdown.changed() => { driver.abort(); return Ok(Stop::Shutdown) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_projector_is_woken_only_by_its_stream_types() {
        let signal = EventSignal::default();
        let mut budgets = signal.subscribe(&["budget"]);
        signal.appended("counter");
        signal.remote("counter,tag");
        let woke = tokio::time::timeout(Duration::from_millis(50), budgets.changed()).await;
        assert!(woke.is_err(), "woken by another stream type");
        signal.appended("budget");
        budgets.changed().await;
        budgets.mark_unchanged();
        signal.remote("tag,budget");
        budgets.changed().await;
        budgets.mark_unchanged();
        signal.remote(""); // an old server's NOTIFY without payload wakes everyone
        budgets.changed().await;
    }
}
