//! [`Exit`]: the exit codes scripts can rely on, and [`CtlError`], an error that carries one.
//! Any other error ends the program with [`Exit::Failed`].

use std::fmt;

/// The exit codes of `ledgerctl` (documented in `--help` and docs/LEDGERCTL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked (a verification passed, every line was imported).
    Ok = 0,
    /// It did not: a verification failed, an import line was rejected, or the cluster refused
    /// the request (400, 409, 410, 413, any other error status).
    Failed = 1,
    /// Bad usage or configuration: unknown flags, no URL configured, an unreadable config or
    /// input file.
    Usage = 2,
    /// The thing asked for does not exist (404).
    NotFound = 3,
    /// The key is missing, unknown, revoked (401) or lacks the permission (403).
    Denied = 4,
    /// No node could be reached, or the cluster could not serve the request now (503, 429,
    /// a timeout): retrying later may succeed.
    Unavailable = 5,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The exit code for an HTTP error status.
    pub fn of_status(status: u16) -> Exit {
        match status {
            200..=299 => Exit::Ok,
            401 | 403 => Exit::Denied,
            404 => Exit::NotFound,
            429 | 502 | 503 | 504 => Exit::Unavailable,
            _ => Exit::Failed,
        }
    }
}

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  failed: verification failed, an import line was rejected, or the cluster refused the request
  2  usage or configuration error (bad flags, no URL, unreadable config or input file)
  3  not found (404)
  4  unauthorized or forbidden (401, 403)
  5  unavailable: no node reachable, 503/429, timeout (retrying may succeed)";

/// An error answer of the API: its status and `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The `Retry-After` header (seconds) of a 429 or 503, if any.
    pub retry_after_secs: Option<u64>,
}

/// An error with the exit code it ends the program with.
#[derive(Debug)]
pub struct CtlError {
    pub exit: Exit,
    pub message: String,
    /// Set when the cluster answered with an error.
    pub api: Option<ApiFailure>,
}

impl CtlError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            api: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

/// The exit code of any error: the first [`CtlError`] in its chain, else [`Exit::Failed`].
pub fn exit_of(error: &anyhow::Error) -> Exit {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<CtlError>())
        .map_or(Exit::Failed, |e| e.exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_codes() {
        assert_eq!(Exit::of_status(201), Exit::Ok);
        assert_eq!(Exit::of_status(400), Exit::Failed);
        assert_eq!(Exit::of_status(401), Exit::Denied);
        assert_eq!(Exit::of_status(403), Exit::Denied);
        assert_eq!(Exit::of_status(404), Exit::NotFound);
        assert_eq!(Exit::of_status(409), Exit::Failed);
        assert_eq!(Exit::of_status(410), Exit::Failed);
        assert_eq!(Exit::of_status(429), Exit::Unavailable);
        assert_eq!(Exit::of_status(503), Exit::Unavailable);
        assert_eq!(Exit::Unavailable.code(), 5);
    }

    #[test]
    fn the_code_survives_context() {
        let error = anyhow::Error::new(CtlError::new(Exit::NotFound, "no agent"))
            .context("activity of ASN-…");
        assert_eq!(exit_of(&error), Exit::NotFound);
        assert_eq!(exit_of(&anyhow::anyhow!("plain")), Exit::Failed);
    }
}
