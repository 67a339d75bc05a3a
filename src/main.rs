//! The `talkamie` command: the server and its operations tools.

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use talkamie::config::Settings;
use talkamie::ledger::audit;
use talkamie::store::{self, Store};
use talkamie::{app, telemetry};
use talkamie_projections::Projection;

#[derive(Parser)]
#[command(
    name = "talkamie",
    version,
    about = "Talkamie backend: API, WebSocket and operations tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and WebSocket (settings from the environment / talkamie.toml).
    Serve,
    /// Apply the database migrations (start-up also does).
    Migrate,
    /// Administrator accounts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Read-model maintenance.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Load generator and report: drives a running server and measures it.
    Bench {
        #[command(subcommand)]
        scenario: talkamie::bench::Scenario,
    },
    /// The coins ledger: audit and statements.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Replay every ledger event and prove every coin; exits 1 on any discrepancy.
    Audit {
        /// Audit one wallet (a user id)
        #[arg(long)]
        user: Option<String>,
        /// Replay only events recorded up to this time (ISO-8601)
        #[arg(long, value_parser = parse_time)]
        as_of: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value = "text")]
        format: AuditFormat,
    },
    /// One user's postings.
    Statement {
        #[arg(long)]
        user: String,
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value = "csv")]
        format: StatementFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AuditFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatementFormat {
    Csv,
    Json,
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("an ISO-8601 time like 2026-11-25T13:30:00Z: {e}"))
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin account (email verified).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Empty read models and replay the event log into them from position 0.
    Rebuild {
        /// One projection (e.g. `users`); all rebuildable ones when omitted.
        name: Option<String>,
    },
    /// List the projections and their checkpoints.
    List,
}

/// jemalloc rather than glibc's malloc (measured, see BENCHMARKS.md): freed large blocks go
/// back to the OS (glibc kept argon2's 19 MiB per password hash: 64 sign-ups grew the server
/// by 1.4 GiB), an idle socket costs less resident memory (no chunk headers touching the pages
/// of mostly unused buffers), and allocation is cheaper under many threads.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    telemetry::init(settings.log_format_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.command, settings))
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            talkamie::app::raise_open_files_limit();
            app::serve(settings).await
        }
        Command::Bench { scenario } => talkamie::bench::run(scenario).await,
        Command::Migrate => {
            let db = store::connect(&settings).await?;
            store::migrate(&db).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password,
                    name,
                },
        } => {
            let store = Store::open(&settings).await?;
            // Commands wait for the read models, so this process runs the projector too.
            let (_stop, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(store.projector.clone().run(stop_rx));
            let user_id = talkamie::accounts::create_admin(&store, &email, password, &name)
                .await
                .map_err(|e| match &e.details {
                    Some(details) => anyhow::anyhow!("{}: {details}", e.message),
                    None => anyhow::anyhow!("{}", e.message),
                })?;
            println!("admin created: {user_id}");
            Ok(())
        }
        Command::Ledger { command } => {
            let store = Store::open(&settings).await?;
            match command {
                LedgerCommand::Audit {
                    user,
                    as_of,
                    format,
                } => {
                    let report = audit::audit_settled(&store, user.as_deref(), as_of).await?;
                    match format {
                        AuditFormat::Text => print!("{}", report.to_text()),
                        AuditFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                    }
                    if !report.ok {
                        std::process::exit(1);
                    }
                }
                LedgerCommand::Statement {
                    user,
                    from,
                    to,
                    format,
                } => {
                    let lines = audit::statement(&store.db, &user, from, to).await?;
                    match format {
                        StatementFormat::Csv => print!("{}", audit::statement_csv(&lines)),
                        StatementFormat::Json => {
                            println!("{}", serde_json::to_string_pretty(&lines)?)
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Projections { command } => {
            let store = Store::open(&settings).await?;
            match command {
                ProjectionsCommand::Rebuild { name } => {
                    let only = name.as_deref().map(Projection::from_name).transpose()?;
                    let rebuilt = store.projector.rebuild(only).await?;
                    let names: Vec<_> = rebuilt.iter().map(|p| p.name()).collect();
                    println!("rebuilt: {}", names.join(", "));
                }
                ProjectionsCommand::List => {
                    let reached = store.projector.catch_up().await?;
                    for p in Projection::ALL {
                        let kind = if p.rebuildable() {
                            "rebuildable"
                        } else {
                            "append-only"
                        };
                        println!("{:<10} {kind}", p.name());
                    }
                    println!(
                        "checkpoint: transaction {} position {}",
                        reached.xid, reached.position
                    );
                }
            }
            Ok(())
        }
    }
}
