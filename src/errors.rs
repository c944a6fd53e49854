//! Raising errors the way Postgres users expect: a proper SQLSTATE, a message that names the
//! argument, and a hint where one helps. Never the key itself.

use pgrx::pg_sys::elog::PgLogLevel;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "api_key").report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn raise_with_hint(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    ErrorReport::new(code, message.into(), "api_key")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn raise_with_detail(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: impl Into<String>,
) -> ! {
    ErrorReport::new(code, message.into(), "api_key")
        .set_detail(detail)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
