//! How a user learns of a mistake: a SQLSTATE, a message that names the argument, a hint where
//! one helps. Never a key, never a panic text, never a backtrace.
//!
//! Functions return `Result<T, Error>`; the `#[pg_extern]` layer raises at the very end, after
//! every switch of user or setting has been undone.

use pgrx::pg_sys::elog::PgLogLevel;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

#[derive(Debug, Clone)]
pub struct Error {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// 22023: a value that is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }

    /// 22004: NULL where a value is required.
    pub fn null(argument: &str) -> Self {
        Error::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{argument} must not be null"),
        )
    }

    /// 22004: a configuration that requires a name, and none given.
    pub fn name_required(config_id: &str) -> Self {
        Error::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("name is required by configuration \"{config_id}\""),
        )
    }

    /// 42501: not allowed.
    pub fn denied(message: impl Into<String>) -> Self {
        Error::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message)
    }

    /// P0002: a key that does not exist, or that the caller may not see (the two are not told
    /// apart, so that an id reveals nothing).
    pub fn no_such_key(id: &pgrx::Uuid) -> Self {
        Error::new(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("API key {id} does not exist"),
        )
    }

    /// 42704: an unknown configuration.
    pub fn no_such_config(id: &str) -> Self {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("configuration \"{}\" does not exist", shorten(id, 64)),
        )
        .hint("SELECT id FROM api_key.configs; lists them.")
    }

    pub fn not_installed() -> Self {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "the api_key extension is not installed in this database",
        )
    }

    pub fn owner_not_superuser() -> Self {
        Error::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "the owner of the api_key extension is no longer a superuser",
        )
        .hint("The extension's functions run their own SQL as the role that ran CREATE EXTENSION, which must stay a superuser.")
    }

    /// Raises this error; does not return. The server log's LOCATION is the caller's.
    #[track_caller]
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "api_key");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// Raises on `Err`: the last step of every `#[pg_extern]` function.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(e) => e.raise(),
        }
    }
}

/// A message from PostgreSQL with every quoted value longer than 40 characters shortened, so
/// that the reason it gives survives (`value "1000…" is out of range for type integer`).
pub fn shorten_quoted(message: &str) -> String {
    let mut out = String::new();
    for (i, part) in message.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        out.push_str(&if i % 2 == 1 {
            shorten(part, 40)
        } else {
            part.to_string()
        });
    }
    out
}

/// At most `chars` characters of a value quoted in a message, so that a 1 MB argument does
/// not become a 1 MB message.
pub fn shorten(value: &str, chars: usize) -> String {
    let mut out: String = value.chars().take(chars).collect();
    if value.chars().nth(chars).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shortened_in_messages() {
        assert_eq!(shorten("abc", 2), "ab…");
        assert_eq!(shorten("ab", 2), "ab");
        let long = format!(
            "value \"{}\" is out of range for type integer",
            "1".repeat(400)
        );
        let short = shorten_quoted(&long);
        assert!(
            short.ends_with("…\" is out of range for type integer"),
            "{short}"
        );
        assert!(short.len() < 100);
    }
}
