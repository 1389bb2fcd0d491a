//! The compatibility mode a type's `contract.toml` names: read with the schema set
//! (`set`), applied by the check (`compat`). Its own module so neither needs the other for it.

use serde::{Deserialize, Serialize};

/// How the versions of a type must relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Compatibility {
    /// Each version accepts every payload the previous one accepts.
    Backward,
    /// Each version accepts every payload any earlier one accepts (the default).
    #[default]
    BackwardTransitive,
    /// The previous version accepts every payload the new one accepts.
    Forward,
    /// Every earlier version accepts every payload the new one accepts.
    ForwardTransitive,
    /// Backward and forward against the previous version.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
    /// Nothing is checked.
    None,
}

impl Compatibility {
    /// Checked against every earlier version, not only the previous one.
    pub fn transitive(self) -> bool {
        matches!(self, Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive)
    }
    /// The new version must accept what earlier ones accept.
    pub fn backward(self) -> bool {
        matches!(self, Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive)
    }
    /// Earlier versions must accept what the new one accepts.
    pub fn forward(self) -> bool {
        matches!(self, Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive)
    }
    /// The mode's name as written in `contract.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "backward",
            Self::BackwardTransitive => "backward-transitive",
            Self::Forward => "forward",
            Self::ForwardTransitive => "forward-transitive",
            Self::Full => "full",
            Self::FullTransitive => "full-transitive",
            Self::None => "none",
        }
    }
}
