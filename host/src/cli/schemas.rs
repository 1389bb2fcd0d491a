//! `ferry schemas check` (the registry's compatibility check, for CI) and `ferry schemas docs`
//! (the AsyncAPI document and the catalog, generated from the registry).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use ferry::config::{Config, SubscriptionConfig};
use ferry::contract::docs::Party;
use ferry::contract::{Set, compat};

use super::ConfigFile;

/// `ferry schemas ...`.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Compile every schema and check each type's compatibility mode, as the host does on
    /// load; with --base, also against the schemas already published (a directory or a git
    /// ref): a version removed or changed in place is a violation. Prints each violation
    /// with its path and exits 1 if there is one. Lists subscribers whose accepted versions
    /// no schema has any more.
    Check {
        #[command(flatten)]
        file: ConfigFile,
        /// Schema directory (default: the file's `schemas`, else `schemas`).
        #[arg(long, env = "FERRY_SCHEMAS")]
        dir: Option<PathBuf>,
        /// What is already published: a directory, or a git ref (`main`, `origin/main`,
        /// `v1.2`) whose copy of the schema directory is read with `git show`.
        #[arg(long)]
        base: Option<String>,
    },
    /// Write the AsyncAPI 3.0 document (`OUT/asyncapi.json`) and a catalog page per type
    /// (`OUT/catalog/TYPE.md`) from the registry and the configured subscribers.
    Docs {
        #[command(flatten)]
        file: ConfigFile,
        /// Schema directory (default: the file's `schemas`, else `schemas`).
        #[arg(long, env = "FERRY_SCHEMAS")]
        dir: Option<PathBuf>,
        /// Where to write.
        #[arg(long, default_value = "docs/generated")]
        out: PathBuf,
    },
}

/// Run `ferry schemas ...`.
pub async fn run(cmd: SchemasCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SchemasCommand::Check { file, dir, base } => {
            let config = file.load()?;
            check(&config, &schema_dir(&config, dir), base.as_deref())
        }
        SchemasCommand::Docs { file, dir, out } => {
            let config = file.load()?;
            docs(&config, &schema_dir(&config, dir), &out)
        }
    }
}

fn schema_dir(config: &Config, dir: Option<PathBuf>) -> PathBuf {
    dir.or_else(|| config.schemas.clone()).unwrap_or_else(|| PathBuf::from("schemas"))
}

fn check(config: &Config, dir: &Path, base: Option<&str>) -> anyhow::Result<ExitCode> {
    let set = match Set::load(dir) {
        Ok(set) => set,
        Err(e) => {
            println!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut report = compat::report(&set);
    if let Some(base) = base {
        let (base_set, _keep) = load_base(dir, base)?;
        let found = compat::against_base(&base_set, &set);
        report.violations.extend(found.violations);
        report.structural.extend(found.structural);
    }
    for (t, contract) in set.types() {
        let versions: Vec<String> = contract.versions.keys().map(u32::to_string).collect();
        println!("{t}: versions {} ({})", versions.join(", "), contract.contract.compatibility.as_str());
    }
    for (t, accepted, by) in &report.structural {
        println!("note: {t}@{by} over {t}@{accepted} was decided by structural rules (the sets could not be compared)");
    }
    for (subscriber, event_type, versions) in stale_subscriptions(&parties(config), &set) {
        let versions: Vec<String> = versions.iter().map(u32::to_string).collect();
        println!(
            "warning: subscriber `{subscriber}` accepts {event_type} versions {} and no schema has any of them",
            versions.join(", ")
        );
    }
    for v in &report.violations {
        println!("violation: {v}");
    }
    if report.violations.is_empty() {
        println!("ok: {} schema(s) in {}", set.len(), dir.display());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} violation(s)", report.violations.len());
        Ok(ExitCode::FAILURE)
    }
}

/// The base set: a directory, or `dir` as it is at git ref `base` (written to a temporary
/// directory, returned so it lives as long as the set is read).
fn load_base(dir: &Path, base: &str) -> anyhow::Result<(Set, Option<tempfile::TempDir>)> {
    let path = Path::new(base);
    if path.is_dir() {
        return Ok((Set::load(path).with_context(|| format!("the base {base}"))?, None));
    }
    let git = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().context("running git")?;
        anyhow::ensure!(
            out.status.success(),
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out.stdout)
    };
    let listing = git(&["ls-tree", "-r", "--name-only", base, "--", "."])?;
    let copy = tempfile::Builder::new().prefix("ferry-schemas-base-").tempdir()?;
    for name in String::from_utf8_lossy(&listing).lines() {
        let target = copy.path().join(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, git(&["show", &format!("{base}:./{name}")])?)?;
    }
    let set = Set::load(copy.path()).with_context(|| format!("the schemas at {base}"))?;
    Ok((set, Some(copy)))
}

/// The subscribers the configuration knows (the host file's `[subscribers.NAME]` and the
/// plugins' own `NAME.toml`), as the documents show them. Subscriptions a plugin declares
/// only in its component are not read here (that needs loading it: a running host's admin
/// endpoint shows them).
fn parties(config: &Config) -> Vec<Party> {
    let mut names: BTreeSet<String> = config.subscribers.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(&config.plugins) {
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_some_and(|e| e == "toml" || e == "wasm")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                names.insert(stem.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for name in names {
        let path = config.plugins.join(format!("{name}.toml"));
        let file = if path.exists() { ferry::config::load_plugin_file(&config.plugins, &path).ok() } else { None };
        let Ok(effective) = config.subscriber(&name, file.as_ref()) else { continue };
        let receives = effective
            .subscriptions
            .unwrap_or_default()
            .into_iter()
            .map(|s: SubscriptionConfig| (s.stream.unwrap_or_else(|| config.stream.clone()), s.event_type, s.versions))
            .collect();
        out.push(Party { name, receives, sends: effective.publish_streams });
    }
    out
}

/// Subscriptions to a type that has schemas, accepting only versions none of which has one:
/// no producer can publish them any more.
fn stale_subscriptions(parties: &[Party], set: &Set) -> Vec<(String, String, Vec<u32>)> {
    let mut out = Vec::new();
    for p in parties {
        for (_, event_type, versions) in &p.receives {
            let Some(t) = set.get(event_type) else { continue };
            if !versions.is_empty() && !versions.iter().any(|v| t.versions.contains_key(v)) {
                out.push((p.name.clone(), event_type.clone(), versions.clone()));
            }
        }
    }
    out
}

/// Write the AsyncAPI document and the catalog under `out`.
fn docs(config: &Config, dir: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let set = Set::load(dir).with_context(|| format!("loading the schemas in {}", dir.display()))?;
    let parties = parties(config);
    let catalog = out.join("catalog");
    std::fs::create_dir_all(&catalog).with_context(|| format!("creating {}", catalog.display()))?;
    let document = ferry::contract::docs::asyncapi(&set, &parties, &config.stream);
    let file = out.join("asyncapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document)?)
        .with_context(|| format!("writing {}", file.display()))?;
    std::fs::write(catalog.join("index.md"), ferry::contract::docs::index(&set))?;
    for (t, _) in set.types() {
        if let Some(page) = ferry::contract::docs::catalog(&set, &parties, t) {
            std::fs::write(catalog.join(ferry::contract::docs::page_name(t)), page)?;
        }
    }
    println!("wrote {} and {} catalog page(s) in {}", file.display(), set.types().count(), catalog.display());
    Ok(ExitCode::SUCCESS)
}
