//! Start-up: open the store, catch the read models up, start the background tasks (projector,
//! feed tailer, LISTEN, housekeeping), serve HTTP and WebSocket, and shut down gracefully.

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::Service;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{middleware, web, App, HttpMessage};
use anyhow::Context;
use tokio::sync::watch;
use tracing_actix_web::{RequestId, TracingLogger};
use utoipa_actix_web::AppExt;
use utoipa_scalar::{Scalar, Servable};

use crate::auth::TokenKeys;
use crate::config::Settings;
use crate::config::{PaymentsKind, StorageKind};
use crate::http::{self, KnownPaths};
use crate::providers::mail;
use crate::providers::payments::{PaymentProvider, SandboxPayments, StripePayments};
use crate::providers::payouts::SandboxPayouts;
use crate::providers::s3::S3Files;
use crate::providers::storage::{FileStore, LocalFiles};
use crate::ratelimit::RateLimits;
use crate::state::AppState;
use crate::store::{secret, Store};
use crate::ws::{self, hub::Hub};

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE_SECS: u64 = 15;

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = Store::open(&settings).await?;
    let jwt_secret = match &settings.jwt_secret {
        Some(secret) => secret.clone(),
        None => secret(&store.db, "jwt")
            .await
            .context("reading the JWT secret")?,
    };
    let hash_key = secret(&store.db, "hash")
        .await
        .context("reading the hash key")?;
    let mailer = mail::from_settings(&settings)?;
    // Serve only once the read models include everything already in the log.
    store
        .projector
        .catch_up()
        .await
        .context("catching up the read models")?;

    // The recorder goes in before anything records (once per process).
    crate::metrics::handle();
    let hub = Hub::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = vec![
        tokio::spawn(store.projector.clone().run(stop_rx.clone())),
        tokio::spawn(ws::hub::run_tailer(
            hub.clone(),
            store.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(ws::hub::run_presence(
            hub.clone(),
            store.db.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(ws::hub::listen_for_remote_pushes(
            hub.clone(),
            store.db.clone(),
            store.projector.origin().to_string(),
            stop_rx.clone(),
        )),
    ];

    let listener = TcpListener::bind((settings.host.as_str(), settings.port))
        .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
    let addr = listener.local_addr()?;

    let public_base = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let files = match &settings.storage {
        StorageKind::Local => FileStore::Local(LocalFiles::new(
            settings.data_dir.join("files"),
            public_base.clone(),
            secret(&store.db, "files")
                .await
                .context("reading the file key")?
                .into_bytes(),
        )),
        StorageKind::S3(s3) => {
            let s3 = S3Files::new(s3)?;
            s3.ensure_bucket().await.context("reaching the S3 bucket")?;
            FileStore::S3(s3)
        }
    };
    let internal_url = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    let payments: Box<dyn PaymentProvider> = match &settings.ledger.payments {
        PaymentsKind::Sandbox => Box::new(SandboxPayments {
            public_base: public_base.clone(),
            secret: match &settings.ledger.webhook_secret {
                Some(secret) => secret.clone(),
                None => secret(&store.db, "webhook")
                    .await
                    .context("reading the webhook secret")?,
            }
            .into_bytes(),
        }),
        PaymentsKind::Stripe(stripe) => {
            Box::new(StripePayments::new(stripe.clone(), public_base.clone()))
        }
    };
    let state = web::Data::new(AppState {
        settings: settings.clone(),
        store: store.clone(),
        tokens: TokenKeys::new(jwt_secret.as_bytes()),
        hash_key: hash_key.into_bytes(),
        mailer,
        background_checks: Box::new(crate::providers::background::SandboxChecks),
        files,
        payments,
        payouts: Box::new(SandboxPayouts),
        push: crate::providers::push::from_settings(&settings)?,
        internal_url,
        limits: RateLimits::new(settings.chat_messages_per_minute),
        hub: hub.clone(),
        clock: Default::default(),
        abandoned_calls: Default::default(),
    });
    tokio::spawn(housekeeping(state.clone(), stop_rx.clone()));
    tokio::spawn(crate::metrics::run_upkeep(stop_rx.clone()));
    tokio::spawn(crate::ledger::run_sweeper(state.clone(), stop_rx.clone()));
    tokio::spawn(crate::scheduling::run_timers(
        state.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::notifications::run_dispatcher(
        state.clone(),
        stop_rx.clone(),
    ));

    let api = http::openapi();
    let known = web::Data::new(KnownPaths::from_openapi(
        &api,
        &["/v1/ws", "/openapi.json", "/docs"],
    ));
    let api_data = web::Data::new(api.clone());
    let cors_origins = settings.cors_origins.clone();
    let app = move || {
        App::new()
            .into_utoipa_app()
            .configure(http::routes)
            .into_app()
            .app_data(state.clone())
            .app_data(known.clone())
            .app_data(api_data.clone())
            .app_data(http::json_config())
            .app_data(http::path_config())
            .app_data(http::query_config())
            .route("/v1/ws", web::get().to(ws::route))
            .route("/openapi.json", web::get().to(http::openapi_json))
            .service(Scalar::with_url("/docs", api.clone()))
            .default_service(web::to(http::fallback))
            // Before any handler: 400 for a NUL in the path, query or JSON body (PostgreSQL
            // text cannot hold U+0000). Inside the metrics, which count its answers.
            .wrap(middleware::from_fn(http::guard::refuse_nul))
            // Innermost but for the guard, so it sees the matched route and the status sent.
            .wrap(middleware::from_fn(crate::metrics::track))
            .wrap_fn(|req, srv| {
                let fut = srv.call(req);
                async move {
                    let mut res = fut.await?;
                    let id = res
                        .request()
                        .extensions()
                        .get::<RequestId>()
                        .map(|id| id.to_string());
                    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                        res.headers_mut()
                            .insert(HeaderName::from_static("x-request-id"), value);
                    }
                    Ok(res)
                }
            })
            .wrap(TracingLogger::default())
            .wrap(cors(&cors_origins))
    };
    let options = http::slow_clients::ServerOptions {
        // Every request head and body bounded, not only the first head (slow-loris).
        limits: http::slow_clients::Limits {
            head: Duration::from_secs(settings.request_head_timeout_secs),
            body_gap: Duration::from_secs(settings.request_body_gap_secs),
            body_min_rate: settings.request_body_min_rate,
        },
        // Idle connections stay open longer than clients' pools usually keep them (the 5 s
        // default races clients reusing a connection just as the server closes it:
        // IncompleteMessage).
        keep_alive: Duration::from_secs(75),
        shutdown_grace_secs: SHUTDOWN_GRACE_SECS,
    };
    let server = http::slow_clients::server(listener, options, app)?;

    tracing::info!(%addr, store = if store.db.is_postgres() { "postgres" } else { "sqlite" }, "serving");
    // Tests and scripts read the bound address from this line (PORT=0 picks a free port).
    println!("talkamie listening on http://{addr}");
    let _ = std::io::stdout().flush();

    let handle = server.handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing sockets, finishing in-flight requests");
        hub.begin_shutdown();
        handle.stop(true).await;
    });
    server.await?;
    // Let the projector finish its round (it commits or rolls back whole batches).
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(background),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        .allowed_headers([
            "authorization",
            "content-type",
            "idempotency-key",
            "x-user-timezone-offset",
            "x-auth-provider",
            "x-user-device",
        ])
        .expose_headers(["retry-after", "x-request-id"])
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Periodic chores: forget recovered rate-limit keys, prune pushes older than 7 days.
async fn housekeeping(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        state.limits.shrink();
        match crate::http::files::forget_unused_reservations(&state.store.db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "forgot unused upload reservations"),
            Err(error) => tracing::warn!(%error, "forgetting upload reservations failed"),
        }
        match talkamie_projections::feed::prune(&state.store.db, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned old pushes"),
            Err(error) => tracing::warn!(%error, "pruning pushes failed"),
        }
    }
}

/// Thousands of sockets need as many descriptors: lift the soft limit to the hard one.
pub fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
