//! The `swapcast` command: `serve` (the default), `migrate`, `create-admin`, `bench`.

use clap::{Parser, Subcommand};
use swapcast::config::{LogFormat, Settings};
use swapcast::startup::{self, Application};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "swapcast",
    version,
    about = "A realtime server for a network of battery-swap stations"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the WebSocket endpoints (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an admin user.
    CreateAdmin {
        #[arg(long)]
        email: String,
        /// Prefer the environment variable: command lines are visible to other local users.
        #[arg(long, env = "SWAPCAST_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "Administrator")]
        display_name: String,
    },
    /// Measure a swapcast server (started by the bench itself) under load.
    #[command(subcommand)]
    Bench(swapcast::bench::Workload),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // async-nats logs its server addresses, credentials included, at debug level and below: it is
    // held at info whatever RUST_LOG says, so no log level can print SWAPCAST_NATS_URL's secrets.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("async_nats=info".parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.settings.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.init(),
    }
    match cli.command.unwrap_or(Command::Serve) {
        // The bench runs its own multi-threaded runtime, apart from any server.
        Command::Bench(workload) => swapcast::bench::run(workload),
        command => actix_web::rt::System::new().block_on(run(cli.settings, command)),
    }
}

/// The commands that run inside the actix system.
async fn run(settings: Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => Application::build(settings).await?.run_until_stopped().await?,
        Command::Bench(_) => anyhow::bail!("the bench runs outside the server's runtime"),
        Command::Migrate => {
            startup::open_database(&settings).await?;
            tracing::info!("migrations applied");
        }
        Command::CreateAdmin {
            email,
            password,
            display_name,
        } => {
            let admin = startup::create_admin(&settings, &email, password, &display_name).await?;
            println!("created admin {} (id {})", admin.email, admin.id);
        }
    }
    Ok(())
}
