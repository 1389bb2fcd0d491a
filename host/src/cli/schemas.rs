//! `ferry schemas check` (the registry's compatibility check, for CI) and `ferry schemas docs`
//! (the AsyncAPI document and the catalog, generated from the registry).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use ferry::config::{Config, SubscriptionConfig};
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
}

/// Run `ferry schemas ...`.
pub async fn run(cmd: SchemasCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SchemasCommand::Check { file, dir, base } => {
            let config = file.load()?;
            check(&config, &schema_dir(&config, dir), base.as_deref())
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
    for (subscriber, subscription) in stale_subscriptions(config, &set) {
        let versions: Vec<String> = subscription.versions.iter().map(u32::to_string).collect();
        println!(
            "warning: subscriber `{subscriber}` accepts {} versions {} and no schema has any of them",
            subscription.event_type,
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

/// Subscriptions (from the host file and the plugins' own files) to a type that has schemas,
/// accepting only versions none of which has one: no producer can publish them any more.
fn stale_subscriptions(config: &Config, set: &Set) -> Vec<(String, SubscriptionConfig)> {
    let mut named: Vec<(String, Vec<SubscriptionConfig>)> = Vec::new();
    named.extend(config.subscribers.iter().filter_map(|(n, s)| Some((n.clone(), s.subscriptions.clone()?))));
    if let Ok(entries) = std::fs::read_dir(&config.plugins) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            if let Ok(file) = ferry::config::load_plugin_file(&config.plugins, &path)
                && let Some(subscriptions) = file.subscriptions
                && config.subscribers.get(&name).is_none_or(|s| s.subscriptions.is_none())
            {
                named.push((name, subscriptions));
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (subscriber, subscriptions) in named {
        for s in subscriptions {
            let Some(t) = set.get(&s.event_type) else { continue };
            if !s.versions.is_empty()
                && !s.versions.iter().any(|v| t.versions.contains_key(v))
                && seen.insert((subscriber.clone(), s.event_type.clone()))
            {
                out.push((subscriber.clone(), s));
            }
        }
    }
    out
}
