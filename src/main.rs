//! The `cloudlens` binary: parses the command line and hands over to the library.

use clap::{Parser, Subcommand};
use cloudlens::{app, config::Settings, telemetry};

/// mimalloc instead of glibc's allocator: bill imports allocate and free millions of small
/// strings, and glibc's `malloc`/`free` were a fifth of the server's CPU while projecting
/// (loadtest/RESULTS.md, "Costs").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cloudlens",
    version,
    about = "Event-sourced data server on PostgreSQL + TimescaleDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server, the projectors and (without DATABASE_URL) the local cluster.
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Inspect or rebuild projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Assess the database: sizes, rows, dead rows, index use, chunks, events per type and
    /// day, growth, top statements.
    Assess {
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Archive streams that ended (deleted budgets) at least DAYS days ago: their events
    /// leave the live log (and every replay) for the archive, still readable per stream.
    Archive {
        #[arg(long, value_name = "DAYS")]
        ended_days_ago: u32,
        /// Count what would move, move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Back up the database into the directory DEST: pg_dump (custom format) and a
    /// manifest (events, last position, rows and checksum per table), one snapshot.
    Backup { dest: std::path::PathBuf },
    /// Restore a backup: `--verify` restores into a scratch database, checks it against
    /// the manifest and rebuilds every projection (exit 1 on any difference); `--into`
    /// restores into a new database on the same server.
    Restore {
        src: std::path::PathBuf,
        #[arg(long, required_unless_present = "into", conflicts_with = "into")]
        verify: bool,
        /// Keep the scratch database of `--verify`.
        #[arg(long, requires = "verify")]
        keep: bool,
        #[arg(long)]
        into: Option<String>,
    },
    /// API keys.
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// Issue a key and print it (shown only this once).
    Create {
        #[arg(long, value_parser = ["admin", "writer", "reader"])]
        role: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Print a new key without issuing it (for CLOUDLENS_ADMIN_KEY in a Secret).
    Generate,
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Name, position, lag and state of every projector.
    Status,
    /// Replay all events into a shadow copy of NAME's read model, then swap it in.
    Rebuild { name: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env().and_then(Settings::with_local_master_key) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cloudlens: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init_tracing(settings.log_json, settings.otlp_endpoint.as_deref());
    let result = match cli.command {
        Command::Serve => app::serve(settings),
        Command::Migrate => app::migrate(settings),
        Command::Projections {
            command: ProjectionsCommand::Status,
        } => app::projections_status(settings),
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        } => app::projections_rebuild(settings, name),
        Command::Assess { json } => app::assess(settings, json),
        Command::Backup { dest } => app::backup(settings, dest),
        Command::Archive {
            ended_days_ago,
            dry_run,
        } => app::archive(settings, ended_days_ago, dry_run),
        Command::Restore {
            src,
            verify,
            keep,
            into,
        } => app::restore(settings, src, verify, keep, into),
        Command::ApiKeys {
            command: ApiKeysCommand::Create { role, tenant, name },
        } => match cloudlens::access::events::Role::parse(&role) {
            Some(role) => app::api_key_create(settings, name, role, tenant),
            None => Err(anyhow::anyhow!("unknown role {role:?}")),
        },
        Command::ApiKeys {
            command: ApiKeysCommand::Generate,
        } => {
            println!("{}", cloudlens::access::keys::generate().key);
            Ok(())
        }
    };
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cloudlens failed");
            eprintln!("cloudlens: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Flushes the spans still queued for export.
    drop(telemetry);
    code
}
