//! `ferry publish`: add one event to a stream from the command line (tests, demos, manual
//! replays of a fact).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use ferry::event::Event;

use super::RedisArgs;

/// `ferry publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Event type.
    #[arg(long = "type")]
    pub event_type: String,
    /// Payload (JSON unless --content-type says otherwise).
    #[arg(long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read the payload from a file.
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// Stream to add the event to (default: the configuration's `stream`, `events`).
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: Option<String>,
    /// The emitting module.
    #[arg(long, default_value = "ferry-cli")]
    pub source: String,
    /// Partition key.
    #[arg(long)]
    pub key: Option<String>,
    /// Correlation id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Causation id.
    #[arg(long)]
    pub causation_id: Option<String>,
    /// Subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Payload schema version.
    #[arg(long, default_value_t = 1)]
    pub schema_version: u32,
    /// Media type of the payload.
    #[arg(long, default_value = ferry::event::JSON)]
    pub content_type: String,
    /// Schema directory to check the event against (overrides the file's `schemas`).
    #[arg(long, env = "FERRY_SCHEMAS")]
    pub schemas: Option<PathBuf>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Run `ferry publish`.
pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.redis.config()?;
    config.schemas = args.schemas.clone().or(config.schemas);
    let stream = args.stream.unwrap_or_else(|| config.stream.clone());
    let data = match (&args.data, &args.data_file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => b"{}".to_vec(),
    };
    ferry::keys::check_name("stream", &stream).map_err(anyhow::Error::msg)?;
    let mut event = Event::new(args.event_type, args.source, data);
    event.partitionkey = args.key;
    event.correlationid = args.correlation_id;
    event.causationid = args.causation_id;
    event.subject = args.subject;
    event.schemaversion = args.schema_version;
    event.datacontenttype = args.content_type;
    if ferry::event::is_json(&event.datacontenttype) {
        serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
            .context("--data is not valid JSON (pass --content-type for other payloads)")?;
    }
    // Checked before connecting: an event its contract refuses is never written (`schemas`).
    let contracts = ferry::contract::Registry::from_config(&config).context("loading the schema registry")?;
    if let Some(registry) = &contracts {
        registry.prepare(&mut event).context("the event does not meet its contract")?;
    }
    let (_, mut conn) = ferry::connection::connect(&config.target()).await?;
    // A partitioned stream (`[streams.NAME] partitions = N` in the config): its partition.
    let partitions = config.streams.get(&stream).map_or(1, |s| s.partitions);
    let key = ferry::keys::route(&stream, partitions, event.partitionkey.as_deref(), &event.id);
    let entry = match ferry::outbox::publish_with(&mut conn, &key, &event, config.replication()).await {
        // `durability_on_missing_replica = "continue"`: the event is on the primary; say it
        // was not confirmed and go on (under "wait" the error stands: publish again).
        Err(e @ ferry::outbox::PublishError::NotReplicated { .. })
            if config.durability_on_missing_replica == ferry::connection::OnMissingReplica::Continue =>
        {
            eprintln!("warning: {e} (durability_on_missing_replica = \"continue\": not published again)");
            match e {
                ferry::outbox::PublishError::NotReplicated { entry_id, .. } => entry_id,
                _ => String::new(),
            }
        }
        result => result.context("adding the event to the stream")?,
    };
    // The id on stdout (scripts read it); where it went on stderr, so nobody publishes to
    // whatever Redis happened to answer on the default port without seeing it.
    println!("{}", event.id);
    eprintln!(
        "published {} `{}` to stream `{key}` (entry {entry}) on {}",
        event.id,
        event.event_type,
        super::status::without_password(&config.redis)
    );
    Ok(ExitCode::SUCCESS)
}
