//! `ferry state`: list, show and repair a subscriber's handler state from the command line
//! (`ferry::plugin::capability::state::stored` does the reading and writing).

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ferry::plugin::capability::state::stored;

use super::RedisArgs;
use super::table::{header, table};

/// `ferry state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List the subscriber's keys with the size and version of each value.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON (an array of `{key, bytes, version}`).
        #[arg(long)]
        json: bool,
    },
    /// Print the value of one key (control characters escaped unless --raw).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
        /// Write the value's bytes as they are, with no newline.
        #[arg(long)]
        raw: bool,
    },
    /// Set one key. Its version is bumped: an event that read the key meanwhile runs again
    /// on the new value instead of overwriting it.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete one key (its version bumped, as for set).
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Whose state, on which stream, in which Redis.
#[derive(Debug, Args)]
pub struct Target {
    /// The subscriber.
    #[arg(long, env = "FERRY_SUBSCRIBER")]
    pub subscriber: String,
    /// The stream (a partition by its own name, `events#0`; default: the config's stream).
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

impl Target {
    /// The stream, and a connection to the Redis holding its state.
    async fn open(&self) -> anyhow::Result<(String, ferry::connection::Conn)> {
        let stream = match &self.stream {
            Some(s) => s.clone(),
            None => self.redis.config()?.stream,
        };
        Ok((stream, self.redis.connect().await?))
    }

    fn describe(&self, stream: &str) -> String {
        format!(
            "the state of subscriber `{}` on stream `{}`",
            ferry::redact::printable(&self.subscriber),
            ferry::redact::printable(stream)
        )
    }
}

/// Run `ferry state ...`.
pub async fn run(cmd: StateCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StateCommand::List { target, json } => {
            let (stream, mut conn) = target.open().await?;
            let entries = stored::list(&mut conn, &stream, &target.subscriber)
                .await
                .with_context(|| format!("listing {}", target.describe(&stream)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                let mut rows = vec![header(&["KEY", "BYTES", "VERSION"])];
                let total: u64 = entries.iter().map(|e| e.bytes + e.key.len() as u64).sum();
                for e in &entries {
                    rows.push(vec![e.key.clone(), e.bytes.to_string(), e.version.to_string()]);
                }
                print!("{}", table(&rows));
                println!("{} key(s), {total} bytes of keys and values", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Get { key, target, raw } => {
            let (stream, mut conn) = target.open().await?;
            let value = stored::get(&mut conn, &stream, &target.subscriber, &key)
                .await
                .with_context(|| format!("reading {}", target.describe(&stream)))?;
            let Some(value) = value else {
                eprintln!("no key {:?} in {}", ferry::redact::printable(&key), target.describe(&stream));
                return Ok(ExitCode::from(1));
            };
            if raw {
                std::io::stdout().write_all(&value).context("writing the value")?;
            } else {
                println!("{}", ferry::redact::printable(&String::from_utf8_lossy(&value)));
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Set { key, value, target } => {
            let (stream, mut conn) = target.open().await?;
            stored::set(&mut conn, &stream, &target.subscriber, &key, value.into_bytes())
                .await
                .with_context(|| format!("setting {:?} in {}", key, target.describe(&stream)))?;
            eprintln!("set {:?} in {}", ferry::redact::printable(&key), target.describe(&stream));
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Delete { key, target } => {
            let (stream, mut conn) = target.open().await?;
            let had = stored::delete(&mut conn, &stream, &target.subscriber, &key)
                .await
                .with_context(|| format!("deleting {:?} in {}", key, target.describe(&stream)))?;
            let what = if had { "deleted" } else { "no value to delete for" };
            eprintln!("{what} {:?} in {}", ferry::redact::printable(&key), target.describe(&stream));
            Ok(ExitCode::SUCCESS)
        }
    }
}
