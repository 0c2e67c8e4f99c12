//! A value a person gave (a flag, an argument, a file they point at) that cannot be used:
//! which value, and why, in one line. The parsers of every layer return it (clap prints it
//! after the flag's name), so a bad value reads the same wherever it is caught.

/// `what` cannot be used: `why` says what would be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct Invalid {
    /// The value as the person wrote it, or what it names (`--max-attempts 0`).
    pub what: String,
    /// What is wrong, or what would be accepted.
    pub why: String,
}

impl Invalid {
    pub fn new(what: impl Into<String>, why: impl Into<String>) -> Self {
        Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
}
