//! The `swapcast` command: `serve` (the default), `migrate`, `create-admin`, `import`,
//! `generate-network`, `bench`.

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
    /// Load a network from CSV files (`name,address,status`; `station,serial,model,soc,soh`),
    /// each file all or nothing.
    Import {
        #[arg(long)]
        stations: Option<std::path::PathBuf>,
        #[arg(long)]
        batteries: Option<std::path::PathBuf>,
    },
    /// Write the CSV files of a made-up network of a given size (Gogoro's by default), for
    /// `import` and the bench.
    GenerateNetwork {
        #[arg(long, default_value_t = 12_000)]
        stations: usize,
        #[arg(long, default_value_t = 1_100_000)]
        batteries: usize,
        /// The directory to write stations.csv and batteries.csv into.
        #[arg(long)]
        out: std::path::PathBuf,
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
        Command::GenerateNetwork {
            stations,
            batteries,
            out,
        } => {
            let (s, b) = swapcast::bench::network::generate(&out, stations, batteries)?;
            println!("wrote {} and {}", s.display(), b.display());
            Ok(())
        }
        command => actix_web::rt::System::new().block_on(run(cli.settings, command)),
    }
}

/// The commands that run inside the actix system.
async fn run(settings: Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => Application::build(settings).await?.run_until_stopped().await?,
        Command::Bench(_) | Command::GenerateNetwork { .. } => anyhow::bail!("runs outside the server's runtime"),
        Command::Import { stations, batteries } => {
            if stations.is_none() && batteries.is_none() {
                anyhow::bail!("give --stations FILE, --batteries FILE, or both");
            }
            for line in startup::import(&settings, stations, batteries).await? {
                println!("{line}");
            }
        }
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
