//! The connection hub: which sockets of which users live on this instance, and the tailer that
//! reads new feed rows and hands each to its user's sockets here.
//!
//! Wake-ups: the local projector after a batch that wrote pushes; PostgreSQL `LISTEN` for
//! batches written by other instances (one NOTIFY per batch); and a short poll as a fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use talkamie_projections::feed::{self, RawFeedRow};

use super::frames::PushFrame;
use talkamie_projections::projector::FEED_CHANNEL;
use talkamie_projections::Db;
use tokio::sync::{mpsc, watch, Notify};

use super::presence;
use crate::store::Store;

/// Pushes buffered per socket; a socket that falls this far behind is dropped and reconnects
/// with `since` (nothing is lost: the feed keeps the rows).
const SOCKET_BUFFER: usize = 1024;
const POLL_INTERVAL: Duration = Duration::from_millis(1000);
const PAGE: i64 = 500;

type Sender = mpsc::Sender<Arc<PushFrame>>;

pub struct Hub {
    /// This instance in the shared `presence` table.
    pub instance_id: String,
    /// Users whose socket count changed, for the presence writer.
    presence_dirty: mpsc::UnboundedSender<String>,
    presence_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    sockets: Mutex<HashMap<String, Vec<(u64, Sender)>>>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// Wakes the tailer when another instance wrote pushes.
    remote_wake: Notify,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        let (presence_dirty, presence_rx) = mpsc::unbounded_channel();
        Arc::new(Hub {
            instance_id: uuid::Uuid::new_v4().to_string(),
            presence_dirty,
            presence_rx: Mutex::new(Some(presence_rx)),
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            remote_wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, Sender)>>> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, user_id: &str) -> (u64, mpsc::Receiver<Arc<PushFrame>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SOCKET_BUFFER);
        self.lock()
            .entry(user_id.to_string())
            .or_default()
            .push((id, tx));
        let _ = self.presence_dirty.send(user_id.to_string());
        (id, rx)
    }

    pub fn unregister(&self, user_id: &str, socket_id: u64) {
        let mut sockets = self.lock();
        if let Some(list) = sockets.get_mut(user_id) {
            list.retain(|(id, _)| *id != socket_id);
            if list.is_empty() {
                sockets.remove(user_id);
            }
        }
        drop(sockets);
        let _ = self.presence_dirty.send(user_id.to_string());
    }

    fn local_sockets(&self, user_id: &str) -> usize {
        self.lock().get(user_id).map_or(0, Vec::len)
    }

    /// Which of `user_ids` are online on any instance (this one answers from memory).
    pub async fn online(&self, db: &Db, user_ids: &[String]) -> std::collections::HashSet<String> {
        match self.online_checked(db, user_ids).await {
            Ok(online) => online,
            Err(error) => {
                tracing::warn!(%error, "presence lookup failed; showing local presence only");
                user_ids
                    .iter()
                    .filter(|id| self.is_online(id))
                    .cloned()
                    .collect()
            }
        }
    }

    /// Like `online`, but an error when other instances' presence cannot be read (for decisions
    /// that must not take "unknown" for "offline").
    pub async fn online_checked(
        &self,
        db: &Db,
        user_ids: &[String],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let mut online: std::collections::HashSet<String> = user_ids
            .iter()
            .filter(|id| self.is_online(id))
            .cloned()
            .collect();
        let others: Vec<String> = user_ids
            .iter()
            .filter(|id| !online.contains(*id))
            .cloned()
            .collect();
        online.extend(presence::online_among(db, &others).await?);
        Ok(online)
    }

    /// Whether the user has an open socket on this instance.
    pub fn is_online(&self, user_id: &str) -> bool {
        self.lock().contains_key(user_id)
    }

    pub fn socket_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Hands `row` to this instance's sockets of its user (most rows have none here: the
    /// frame is made only for those that do).
    fn deliver(&self, row: &RawFeedRow) {
        let mut sockets = self.lock();
        if let Some(list) = sockets.get_mut(&row.user_id) {
            let frame = Arc::new(PushFrame::from_raw(row));
            // A full buffer drops that socket's sender; the socket sees it and closes.
            list.retain(|(_, tx)| tx.try_send(frame.clone()).is_ok());
        }
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every socket to send a close frame and end.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Writes socket counts to the shared `presence` table (one writer, so counts never go back
/// in time) and refreshes this instance's rows on a heartbeat.
pub async fn run_presence(hub: Arc<Hub>, db: Db, mut stop: watch::Receiver<bool>) {
    let Some(mut dirty) = hub
        .presence_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let mut heartbeat = tokio::time::interval(presence::HEARTBEAT);
    loop {
        let result = tokio::select! {
            Some(user_id) = dirty.recv() => {
                presence::record(&db, &hub.instance_id, &user_id, hub.local_sockets(&user_id)).await
            }
            _ = heartbeat.tick() => presence::refresh(&db, &hub.instance_id).await,
            _ = stop.changed() => {
                let _ = presence::clear(&db, &hub.instance_id).await;
                return;
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "presence update failed");
        }
    }
}

/// Tails the feed from its current end and delivers new rows to local sockets.
pub async fn run_tailer(hub: Arc<Hub>, store: Store, mut stop: watch::Receiver<bool>) {
    let mut last = loop {
        match feed::last_position(&store.background).await {
            Ok(p) => break p,
            Err(error) => {
                tracing::warn!(%error, "feed tailer cannot start yet");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    };
    loop {
        match feed::read_raw_after(&store.background, last, PAGE).await {
            Ok(rows) => {
                let full = rows.len() as i64 == PAGE;
                for row in &rows {
                    last = row.position;
                    hub.deliver(row);
                }
                if full {
                    continue;
                }
            }
            Err(error) => tracing::warn!(%error, "feed tailer read failed"),
        }
        tokio::select! {
            _ = store.projector.feed_written.notified() => {}
            _ = hub.remote_wake.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// PostgreSQL only: LISTEN for batches other instances wrote, and wake the tailer.
pub async fn listen_for_remote_pushes(
    hub: Arc<Hub>,
    db: Db,
    origin: String,
    mut stop: watch::Receiver<bool>,
) {
    let Db::Postgres(pool) = db else { return };
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN; relying on polling");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if let Err(error) = listener.listen(FEED_CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; retrying");
            continue;
        }
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    // This instance's own rounds woke its tailer already.
                    Ok(notification) if notification.payload() == origin => {}
                    Ok(_) => hub.remote_wake.notify_one(),
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
