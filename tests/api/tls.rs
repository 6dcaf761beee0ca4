#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS to the database (ADR 0017): a cluster that accepts TCP only with TLS, a
//! certificate made here by a CA made here, and each `sslmode` as libpq defines it.

use std::path::Path;
use std::process::Command;

use cloudlens::db::cluster::{LocalCluster, DB_USER};

use crate::helpers::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` signed by it, and an unrelated CA.
fn certificates(dir: &Path) {
    for ca in ["ca", "other"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=cloudlens test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// A cluster listening on 127.0.0.1 that refuses TCP without TLS.
fn tls_cluster() -> (LocalCluster, std::path::PathBuf, u16) {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let port = free_port();
    let dir = test_root().join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
    let cluster = LocalCluster::new(&dir, port).unwrap();
    cluster.ensure_running().unwrap();
    let pgdata = cluster.data_dir();
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let owner = std::fs::metadata(&pgdata).unwrap();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(f), pgdata.join(f)).unwrap();
        chown(pgdata.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(pgdata.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut conf = std::fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
    conf.push_str("\nlisten_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(pgdata.join("postgresql.conf"), conf).unwrap();
    let mut hba = std::fs::read_to_string(pgdata.join("pg_hba.conf")).unwrap();
    hba =
        format!("hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n{hba}");
    std::fs::write(pgdata.join("pg_hba.conf"), hba).unwrap();
    cluster.stop().unwrap();
    cluster.ensure_running().unwrap();
    (cluster, certs, port)
}

#[actix_web::test]
async fn the_database_is_reached_over_tls_with_each_sslmode() {
    let (cluster, certs, port) = tokio::task::spawn_blocking(tls_cluster).await.unwrap();
    cloudlens::db::ensure_database(&cluster.connection_string_for("postgres"), "tls")
        .await
        .unwrap();
    let ca = certs.join("ca.pem");
    let other = certs.join("other.pem");
    let tcp = |host: &str, rest: &str| {
        format!("host={host} port={port} user={DB_USER} dbname=tls {rest}")
    };
    let encrypted = |conn: String| async move {
        let c = cloudlens::db::connect(&conn).await?;
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        Ok::<bool, tokio_postgres::Error>(ssl)
    };

    // Without TLS the server refuses; require encrypts without checking the certificate.
    assert!(encrypted(tcp("127.0.0.1", "sslmode=disable"))
        .await
        .is_err());
    assert!(encrypted(tcp("127.0.0.1", "sslmode=require"))
        .await
        .unwrap());
    // verify-ca checks the chain only: any host name, but only our CA.
    let verify_ca = format!("sslmode=verify-ca sslrootcert={}", ca.display());
    assert!(encrypted(tcp("127.0.0.1", &verify_ca)).await.unwrap());
    let wrong_ca = format!("sslmode=verify-ca sslrootcert={}", other.display());
    assert!(encrypted(tcp("127.0.0.1", &wrong_ca)).await.is_err());
    // verify-full checks the host name too: the certificate is for localhost.
    let verify_full = format!("sslmode=verify-full sslrootcert={}", ca.display());
    assert!(encrypted(tcp("localhost", &verify_full)).await.unwrap());
    assert!(encrypted(tcp("127.0.0.1", &verify_full)).await.is_err());
    // A bundle of CAs (as RDS ships) is read whole; require with a root certificate
    // checks the chain, as libpq does.
    let bundle = certs.join("bundle.pem");
    let mut pem = std::fs::read(&other).unwrap();
    pem.extend(std::fs::read(&ca).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let in_bundle = format!("sslmode=verify-full sslrootcert={}", bundle.display());
    assert!(encrypted(tcp("localhost", &in_bundle)).await.unwrap());
    let require_other = format!("sslmode=require sslrootcert={}", other.display());
    assert!(encrypted(tcp("localhost", &require_other)).await.is_err());
    // The URI form.
    let uri = format!(
        "postgresql://{DB_USER}@localhost:{port}/tls?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    assert!(encrypted(uri.clone()).await.unwrap());

    // The whole server over verify-full: migrations, the pool, the read side, LISTEN.
    cloudlens::app::prepare(&uri, None).await.unwrap();
    let app = spawn_app_on(uri.clone(), test_settings()).await;
    let mut res = app
        .post_json("/api/v1/budgets", &budget_body("over tls"))
        .await;
    assert_eq!(res.status(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    let res = app.read_own_write(&created).await;
    assert_eq!(res.status(), 200);
    let c = cloudlens::db::connect(&uri).await.unwrap();
    let plain: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'tls' AND a.client_addr IS NOT NULL AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "a TCP connection without TLS");
    app.handle.stop(true).await;
    app.background.stop_background().await;

    // A bad option stops the start with a clear message.
    let settings = cloudlens::config::Settings {
        database_url: Some(format!("{} sslmode=verify-all", tcp("localhost", ""))),
        ..test_settings()
    };
    let err = cloudlens::app::database(&settings).unwrap_err();
    assert!(
        format!("{err:#}").contains("sslmode=\"verify-all\" is not valid"),
        "{err:#}"
    );
    let settings = cloudlens::config::Settings {
        database_url: Some(tcp(
            "localhost",
            "sslmode=verify-full sslrootcert=/nonexistent.pem",
        )),
        ..test_settings()
    };
    let err = cloudlens::app::database(&settings).unwrap_err();
    assert!(
        format!("{err:#}").contains("cannot read sslrootcert"),
        "{err:#}"
    );
    cluster.stop().unwrap();
}
