//! Wake-ups for projectors: at once for appends in this process, through
//! LISTEN/NOTIFY for appends in other processes, and by polling as the fallback.
//!
//! NOTIFY is never sent inside the append transaction: PostgreSQL serialises the commits
//! of notifying transactions on one queue lock, which would cap append throughput. A
//! background task sends one coalesced NOTIFY after appends instead.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::watch;

pub const CHANNEL: &str = "cloudlens_events";

/// Cloneable handle; counters only ever grow, receivers compare with what they saw.
#[derive(Clone)]
pub struct EventSignal {
    /// Bumped by appends in this process (read by the NOTIFY sender).
    local: watch::Sender<u64>,
    /// Bumped by local appends and remote notifications (read by projectors).
    wake: watch::Sender<u64>,
}

impl Default for EventSignal {
    fn default() -> Self {
        Self {
            local: watch::channel(0).0,
            wake: watch::channel(0).0,
        }
    }
}

impl EventSignal {
    pub fn appended(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn remote(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Sends one NOTIFY per burst of local appends until `shutdown` fires.
    pub async fn run_notifier(self, pool: Pool, mut shutdown: watch::Receiver<bool>) {
        let mut local = self.local.subscribe();
        loop {
            tokio::select! {
                changed = local.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            local.mark_unchanged();
            if let Ok(client) = pool.get().await {
                if let Err(e) = client.batch_execute(&format!("NOTIFY {CHANNEL}")).await {
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
    let cfg: tokio_postgres::Config = conn.parse()?;
    let (client, mut connection) = cfg.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(messages.map(Ok).forward(tx));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    signal.remote(); // events may have arrived while we were not listening
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => signal.remote(),
                Some(Ok(_)) => {}
                Some(Err(e)) => { driver.abort(); return Err(e) }
                None => return Ok(Stop::Disconnected),
            },
            _ = shutdown.changed() => { driver.abort(); return Ok(Stop::Shutdown) }
        }
    }
}
