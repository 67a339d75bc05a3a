//! `rebuild`: fills the event log to M events through the running server (chat messages from
//! a few pairs, as fast as it takes them), then empties every rebuildable read model and
//! replays the whole log into them in this process, timed: events per second. It opens the
//! server's store from the same settings the server uses (`DATABASE_URL` or
//! `TALKAMIE_DATA_DIR`).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use talkamie_projections::{with_pool, Db};
use tokio::time::Instant;

use super::client::{open_socket, request, Api};
use super::stats::{note, Latency};
use super::{BenchResult, Common};
use crate::config::Settings;
use crate::store::Store;

#[derive(Args, Clone, Debug)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub common: Common,
    /// Events the log should hold before the rebuild (generated when fewer).
    #[arg(long, default_value_t = 50_000)]
    pub events: i64,
    /// Chats that generate them, each sending one message at a time.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
}

pub async fn run(args: RebuildArgs) -> anyhow::Result<BenchResult> {
    let quiet = args.common.quiet;
    let settings = Settings::load()?;
    let store = Store::open(&settings).await.context(
        "opening the server's store (set DATABASE_URL or TALKAMIE_DATA_DIR as the server has them)",
    )?;
    let generating = Instant::now();
    let generated = fill(&store.db, &args).await?;
    let generate_secs = generating.elapsed().as_secs_f64();
    let events = count_events(&store.db).await?;

    note(
        quiet,
        &format!("rebuilding the read models from {events} events"),
    );
    let started = Instant::now();
    let rebuilt = store.projector.rebuild(None).await?;
    let seconds = started.elapsed().as_secs_f64();
    let names: Vec<_> = rebuilt.iter().map(|p| p.name()).collect();
    let ms = seconds * 1000.0;
    Ok(BenchResult {
        scenario: "rebuild".into(),
        label: args
            .common
            .label
            .clone()
            .unwrap_or_else(|| format!("rebuild events={events}")),
        url: args.common.url.clone(),
        started_at: chrono::Utc::now(),
        params: json!({"events": args.events, "writers": args.writers,
                       "store": if matches!(store.db, Db::Postgres(_)) { "postgres" } else { "sqlite" }}),
        duration_secs: seconds,
        operations: events as u64,
        errors: 0,
        throughput: events as f64 / seconds.max(1e-9),
        unit: "events/s".into(),
        latency_ms: Latency {
            p50: ms,
            p90: ms,
            p99: ms,
            max: ms,
            mean: ms,
            samples: 1,
        },
        extra: json!({"projections": names, "generatedEvents": generated,
                      "generateSeconds": generate_secs}),
    })
}

async fn count_events(db: &Db) -> anyhow::Result<i64> {
    Ok(with_pool!(db, pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events").fetch_one(pool).await?
    }))
}

/// Sends chat messages until the log holds `args.events` events; returns how many it added.
async fn fill(db: &Db, args: &RebuildArgs) -> anyhow::Result<i64> {
    let before = count_events(db).await?;
    if before >= args.events {
        return Ok(0);
    }
    note(
        args.common.quiet,
        &format!("generating events: {before} -> {}", args.events),
    );
    let api = Api::new(&args.common.url)?;
    let pairs = api.pairs(args.writers.max(1)).await?;
    let mut writers = Vec::new();
    for (senior, _, chat) in pairs {
        let mut socket = open_socket(&api.ws_url(), &senior.token).await?;
        let db = db.clone();
        let target = args.events;
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                // Counting is a query: look every 200 messages.
                if n.is_multiple_of(200) && count_events(&db).await? >= target {
                    return Ok::<_, anyhow::Error>(());
                }
                n += 1;
                let reply = request(
                    &mut socket,
                    json!({"action": "chat.message.send", "requestId": n.to_string(),
                           "chatId": chat, "message": {"text": format!("filler {n}")}}),
                )
                .await?;
                if reply["success"] != json!(true) {
                    if reply["statusCode"] == json!(429) {
                        // The server's chat quota: TALKAMIE_CHAT_MESSAGES_PER_MINUTE.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    bail!("a filler message was refused: {reply}");
                }
            }
        }));
    }
    for writer in writers {
        writer.await??;
    }
    Ok(count_events(db).await? - before)
}
