//! `ferry plugins check` (validate a file before deploying it) and `ferry plugins list` (ask a
//! running host through its admin endpoint).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::table::{header, table};
use super::{ConfigFile, invoke};

/// `ferry plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Compile and validate a plugin file and print its subscriptions.
    /// The compiled artifact goes into the same cache the host uses, so the host's start
    /// after a check is fast; a plugin that sleeps or loops in `subscriptions()` is refused
    /// after the default deadline.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Compiled-artifact cache directory, "" to turn it off (default: the host's default
        /// cache).
        #[arg(long, env = "FERRY_CACHE_DIR", value_parser = super::path_or_empty)]
        cache_dir: Option<PathBuf>,
    },
    /// Run a plugin's handler on one event, with no Redis and no host, and print what it
    /// did: the disposition (ack, retry or dead-letter, and why) and the follow-ups it
    /// published. Its log lines go to stderr. The plugin author's inner loop.
    Invoke(invoke::InvokeArgs),
    /// List the plugins of a running host (through its admin endpoint).
    List {
        #[command(flatten)]
        file: ConfigFile,
        /// Admin endpoint of the running host (overrides the file's `admin.listen`; default
        /// 127.0.0.1:9464).
        #[arg(long, env = "FERRY_ADMIN")]
        admin: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run `ferry plugins ...`.
pub async fn run(cmd: PluginsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginsCommand::Check { file, cache_dir } => check(&file, cache_dir).await,
        PluginsCommand::Invoke(args) => invoke::run(args).await,
        PluginsCommand::List { file, admin, json } => {
            let admin = match admin {
                Some(admin) => admin,
                None => file.load()?.admin.listen,
            };
            if admin.is_empty() {
                anyhow::bail!("the admin endpoint is off (admin.listen = \"\"); pass --admin ADDR of a running host");
            }
            list(&admin, json).await
        }
    }
}

/// Load `file` as the host would: through the compiled-artifact cache and with its
/// `subscriptions` export under the default deadline.
async fn check(file: &Path, cache_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = ferry::config::Config { cache_dir, ..Default::default() };
    let engine = ferry::plugin::Engine::new(&config.engine)?;
    let cache = ferry::plugin::cache::Cache::from_config(&config);
    let limits = ferry::config::LimitsConfig::default();
    match ferry::plugin::Plugin::load(&engine, file, cache.as_ref(), &limits).await {
        Ok(plugin) => {
            println!("{}: ok (version {})", file.display(), plugin.version);
            if plugin.declared.is_empty() {
                println!("  declares no subscriptions (configure them in the host config)");
            }
            for s in &plugin.declared {
                let versions = if s.versions.is_empty() {
                    "all versions".to_string()
                } else {
                    format!("versions {:?}", s.versions)
                };
                let stream = s.stream.as_deref().unwrap_or("(default stream)");
                println!(
                    "  subscribes to {} ({versions}) on {}",
                    ferry::redact::printable(&s.event_type),
                    ferry::redact::printable(stream)
                );
                if s.stream.is_some() {
                    println!("    reading another stream than the host's needs it in `read_streams`");
                }
            }
            for line in grants_needed(&engine, &plugin) {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {}", file.display(), ferry::redact::printable(&e.to_string()));
            Ok(ExitCode::from(1))
        }
    }
}

async fn list(admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    let body = ferry::status::http_get(admin, "/api/plugins")
        .await
        .with_context(|| format!("asking the running host at {admin} (is `ferry run` up with its admin endpoint?)"))?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let plugins: Vec<ferry::host::PluginStatus> = serde_json::from_str(&body).context("reading the host's answer")?;
    let mut rows = vec![header(&["PLUGIN", "VERSION", "STATE", "SUBSCRIPTIONS"])];
    for p in plugins {
        let subs: Vec<String> = p.subscriptions.iter().map(|s| format!("{}:{}", s.stream, s.event_type)).collect();
        let state = match &p.error {
            Some(e) => format!("{} ({e})", p.state),
            None => p.state.clone(),
        };
        rows.push(vec![p.name, p.version.unwrap_or_else(|| "-".into()), state, subs.join(", ")]);
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// What the plugin imports from ferry, and which grant (configuration key) each import needs
/// before it can do anything: a plugin that publishes without `publish_streams` has every
/// event retried until the operator grants it.
fn grants_needed(engine: &ferry::plugin::Engine, plugin: &ferry::plugin::Plugin) -> Vec<String> {
    let component = plugin.pre.component();
    let mut lines = Vec::new();
    let mut wasi = 0;
    for (name, _) in component.component_type().imports(&engine.engine) {
        let interface = name.split('@').next().unwrap_or(name);
        let provided = interface
            .strip_prefix("ferry:plugin/")
            .and_then(|i| ferry::plugin::capability::imports().find(|(provided, _)| *provided == i));
        let needs = match (interface, provided) {
            (_, Some((_, needs))) => needs,
            ("ferry:plugin/types", None) => continue,
            ("wasi:http/outgoing-handler", None) => {
                "makes outbound HTTP requests: needs a `[subscribers.NAME.http]` table with `allow = [...]` (refused at load without it)"
            }
            (other, None) if other.starts_with("wasi:http/") => continue,
            (other, None) if other.starts_with("wasi:") => {
                wasi += 1;
                continue;
            }
            _ => "not provided by this host: the plugin is refused",
        };
        lines.push(format!("imports {}: {needs}", ferry::redact::printable(name)));
    }
    if wasi > 0 {
        lines.push(format!(
            "imports {wasi} WASI interfaces: linked inert (nothing granted: no files, environment or sockets)"
        ));
    }
    lines
}
