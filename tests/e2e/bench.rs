//! Smoke runs of `talkamie bench`: each scenario for about five seconds against a real server,
//! to prove the tool works end to end. Figures are not checked here (a benchmark is not a
//! test); only that the work was done without errors. Speed lives in BENCHMARKS.md.

use std::process::Command;

use serde_json::Value;

use crate::both_stores;
use crate::helpers::{Backend, Server, TestDb};

both_stores!(every_scenario_runs_against_a_real_server);

/// What the bench scripts give the server: no per-socket or per-sender quota in the way.
const UNLIMITED: [(&str, &str); 2] = [
    ("TALKAMIE_WS_FRAMES_PER_SECOND", "1000000"),
    ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "100000000"),
];

/// Runs `talkamie bench <args>` with the store's settings; returns the JSON result.
fn bench(db: &TestDb, server: &Server, args: &[&str]) -> Value {
    let out = db.data_dir.path().join(format!("{}.json", args[0]));
    let mut command = Command::new(env!("CARGO_BIN_EXE_talkamie"));
    command
        .arg("bench")
        .args(args)
        .args([
            "--url",
            &server.base,
            "--warmup",
            "1",
            "--duration",
            "4",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error");
    for (k, v) in db.env() {
        command.env(k, v);
    }
    let output = command.output().expect("run talkamie bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench {args:?} failed: {stderr}");
    let stdout: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("--out file")).expect("JSON");
    assert_eq!(stdout, file, "stdout and --out agree");
    assert_eq!(file["scenario"], args[0], "{file}");
    assert_eq!(file["errors"], 0, "{file}");
    assert!(file["operations"].as_u64().is_some_and(|n| n > 0), "{file}");
    assert!(
        file["throughput"].as_f64().is_some_and(|t| t > 0.0),
        "{file}"
    );
    // The summary line names the scenario's figures.
    assert!(stderr.contains("latency ms p50"), "{stderr}");
    file
}

async fn every_scenario_runs_against_a_real_server(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start_with(&db, &UNLIMITED).await;
    let (admin_email, admin_password) = ("bench-admin@example.com", "admin-password");
    let (ok, _, stderr) = db.cli(&[
        "admin",
        "create",
        "--email",
        admin_email,
        "--password",
        admin_password,
    ]);
    assert!(ok, "{stderr}");

    let mail_dir = db.mail_dir().display().to_string();
    let commands = bench(
        &db,
        &server,
        &[
            "commands",
            "--clients",
            "4",
            "--volunteers",
            "2",
            "--admin-email",
            admin_email,
            "--admin-password",
            admin_password,
            "--mail-dir",
            &mail_dir,
        ],
    );
    for kind in [
        "chat.message.send",
        "schedule.create",
        "schedule.cancel",
        "topup.session",
        "topup.pay",
    ] {
        assert!(
            commands["extra"][kind]["count"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{kind} in the mix: {commands}"
        );
    }

    let chat = bench(&db, &server, &["chat", "--sockets", "10", "--rate", "50"]);
    assert_eq!(chat["extra"]["lost"], 0, "{chat}");
    assert!(
        chat["latencyMs"]["samples"]
            .as_u64()
            .is_some_and(|n| n > 50),
        "{chat}"
    );

    if backend == Backend::Postgres {
        let second = Server::start_with(&db, &UNLIMITED).await;
        let across = bench(
            &db,
            &server,
            &[
                "chat",
                "--sockets",
                "10",
                "--rate",
                "50",
                "--url2",
                &second.base,
            ],
        );
        assert_eq!(across["params"]["instances"], 2, "{across}");
        assert_eq!(across["extra"]["lost"], 0, "{across}");

        // The write mix with every other client on the second instance.
        let split = bench(
            &db,
            &server,
            &[
                "commands",
                "--clients",
                "2",
                "--messages-percent",
                "100",
                "--url2",
                &second.base,
            ],
        );
        assert_eq!(split["params"]["url2"], second.base.as_str(), "{split}");
        assert_eq!(split["errors"], 0, "{split}");
        assert!(
            split["extra"]["chat.message.send"]["count"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{split}"
        );
        second.stop().await;
    }

    let pid = server.pid().to_string();
    let sockets = bench(
        &db,
        &server,
        &[
            "sockets",
            "--sockets",
            "100",
            "--users",
            "5",
            "--server-pid",
            &pid,
            "--ping-rate",
            "50",
        ],
    );
    assert_eq!(sockets["extra"]["opened"], 100, "{sockets}");
    assert!(
        sockets["extra"]["serverKibPerSocket"].is_number(),
        "{sockets}"
    );

    let rpc = bench(&db, &server, &["rpc", "--sockets", "4"]);
    assert!(rpc["operations"].as_u64().is_some_and(|n| n > 100), "{rpc}");

    let rebuild = bench(
        &db,
        &server,
        &["rebuild", "--events", "1500", "--writers", "4"],
    );
    assert!(
        rebuild["operations"].as_u64().is_some_and(|n| n >= 1500),
        "{rebuild}"
    );

    // The report turns a run's results into Markdown with the targets and the chart.
    let results = db.data_dir.path().join("results");
    let run = results.join("run-1");
    std::fs::create_dir_all(&run).expect("run dir");
    for (name, value) in [
        ("commands-sqlite", &commands),
        ("chat-rate-50", &chat),
        ("rpc", &rpc),
    ] {
        std::fs::write(run.join(format!("{name}.json")), value.to_string()).expect("write");
    }
    let markdown = db.data_dir.path().join("BENCHMARKS.md");
    let charts = db.data_dir.path().join("charts");
    let output = Command::new(env!("CARGO_BIN_EXE_talkamie"))
        .args(["bench", "report", "--results"])
        .arg(&results)
        .arg("--out")
        .arg(&markdown)
        .arg("--charts")
        .arg(&charts)
        .output()
        .expect("run report");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&markdown).expect("markdown");
    assert!(text.contains("`rpc`"), "{text}");
    assert!(text.contains("chat-latency.svg"), "{text}");
    let svg = std::fs::read_to_string(charts.join("chat-latency.svg")).expect("svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    server.stop().await;
}
