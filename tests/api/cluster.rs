#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The self-managed cluster: crash recovery of `cloudlens serve`, and a database restart
//! under a running server.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

fn serve(data_dir: &std::path::Path, port: u16) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_cloudlens"))
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("CLOUDLENS_DATA_DIR", data_dir)
            .env("CLOUDLENS_LISTEN", format!("127.0.0.1:{port}"))
            .env("CLOUDLENS_PG_PORT", "5432")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

async fn wait_ready(client: &awc::Client, port: u16) -> bool {
    eventually(Duration::from_secs(90), || async {
        let r = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await
    .is_some()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[actix_web::test]
async fn serve_recovers_after_sigkill_and_stops_cleanly_on_sigterm() {
    let data = test_root().join(format!("serve-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();

    let mut server = serve(&data, port);
    assert!(
        wait_ready(&client, port).await,
        "first start never became ready"
    );
    let mut res = client
        .post(format!("http://127.0.0.1:{port}/api/v1/budgets"))
        .send_json(&budget_body("survivor"))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created = res.json::<Value>().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let pos = created["position"].as_i64().unwrap();
    let budget_url = format!("http://127.0.0.1:{port}/api/v1/budgets/{id}?min_position={pos}");

    // SIGKILL: the cluster keeps running without its server; the next start reuses it.
    signal(server.0.id(), "-KILL");
    server.0.wait().unwrap();
    let cluster = cloudlens::db::cluster::LocalCluster::new(&data, 5432).unwrap();
    assert!(
        cluster.is_running().unwrap(),
        "cluster should outlive a SIGKILLed server"
    );
    let mut server = serve(&data, port);
    assert!(
        wait_ready(&client, port).await,
        "restart after SIGKILL never became ready"
    );
    let res = client.get(&budget_url).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // SIGKILL of server and postmaster: a stale postmaster.pid is left behind.
    let postmaster = cluster.live_postmaster_pid().unwrap().unwrap();
    signal(server.0.id(), "-KILL");
    server.0.wait().unwrap();
    signal(postmaster, "-KILL");
    let gone = eventually(Duration::from_secs(20), || async {
        (!cluster.is_running().unwrap()).then_some(())
    })
    .await;
    assert!(gone.is_some());
    assert!(
        data.join("pgdata/postmaster.pid").exists(),
        "expected a stale pid file"
    );
    let mut server = serve(&data, port);
    assert!(
        wait_ready(&client, port).await,
        "restart after a crashed cluster never became ready"
    );
    let res = client.get(&budget_url).send().await.unwrap();
    assert_eq!(res.status(), 200, "acknowledged data lost after crash");

    // Ctrl-C (SIGINT) and SIGTERM: server and cluster stop cleanly, and data survives.
    signal(server.0.id(), "-INT");
    let status = server.0.wait().unwrap();
    assert!(status.success(), "serve exited with {status} on SIGINT");
    assert!(
        !cluster.is_running().unwrap(),
        "cluster still running after SIGINT"
    );
    let mut server = serve(&data, port);
    assert!(
        wait_ready(&client, port).await,
        "restart after SIGINT never became ready"
    );
    let res = client.get(&budget_url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // An open SSE stream ends with a `shutdown` event when the stop begins (the stop does
    // not wait for it); a stream cut off at the stop's time limit would not say so.
    let mut sse = client
        .get(format!("http://127.0.0.1:{port}/api/v1/feed"))
        .insert_header(("Accept", "text/event-stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut text = String::new();
    let mut signalled = false;
    while let Some(chunk) = futures::StreamExt::next(&mut sse).await {
        let chunk = chunk.unwrap_or_else(|e| panic!("SSE stream broke off: {e}; read {text:?}"));
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        // Once the stream has delivered the budget's event, stop the server.
        if !signalled && text.contains(&format!("\"stream_id\":\"{id}\"")) {
            signal(server.0.id(), "-TERM");
            signalled = true;
        }
    }
    assert!(signalled, "the budget's event never came: {text}");
    assert!(text.ends_with("event: shutdown\ndata: {\"detail\":\"the server is stopping; reconnect with Last-Event-ID\"}\n\n"), "{text}");
    let status = server.0.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    assert!(
        !cluster.is_running().unwrap(),
        "cluster still running after SIGTERM"
    );
}

#[actix_web::test]
async fn database_restart_under_a_running_server() {
    let cluster = tokio::task::spawn_blocking(|| own_cluster("restart"))
        .await
        .unwrap();
    let conn = fresh_database_in(&cluster).await;
    let app = spawn_app_on(conn, test_settings()).await;
    let res = app
        .post_json("/api/v1/budgets", &budget_body("before"))
        .await;
    assert_eq!(res.status(), 201);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .unwrap()
        .unwrap();
    let mut res = app.post_json("/api/v1/budgets", &budget_body("down")).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(body["code"], "database_unavailable");
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 503);
    assert_eq!(app.get("/healthz").await.status(), 200);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.ensure_running())
        .await
        .unwrap()
        .unwrap();
    // Commands recover by themselves, and so does the projector.
    let created = eventually(Duration::from_secs(30), || async {
        let mut r = app
            .client
            .post(app.url("/api/v1/budgets"))
            .send_json(&budget_body("after"))
            .await
            .ok()?;
        if r.status() != 201 {
            return None;
        }
        r.json::<Value>().await.ok()
    })
    .await
    .expect("commands did not recover after the database came back");
    let pos = created["position"].as_i64().unwrap();
    let mut res = app
        .get(&format!("/api/v1/budgets?min_position={pos}&limit=10"))
        .await;
    assert_eq!(res.status(), 200, "projector did not recover");
    let items = res.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(items, 2);
    let ready = eventually(Duration::from_secs(30), || async {
        let r = app.client.get(app.url("/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "readyz did not recover");
    app.handle.stop(true).await;
    let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
}
