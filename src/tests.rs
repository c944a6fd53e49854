//! In-database tests (`cargo pgrx test`): the SQL functions inside one backend, as superuser.
//! Row-level security and concurrency are tested from outside, in tests/.

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn create_then_verify() {
        let key = Spi::get_one::<String>("SELECT key FROM api_key_create(reference_id => 'u1')").unwrap().unwrap();
        let code = Spi::get_one_with_args::<String>("SELECT code FROM api_key_verify($1)", &[key.as_str().into()]).unwrap();
        assert_eq!(code.as_deref(), Some("VALID"));
    }
}
