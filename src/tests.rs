//! In-database tests (`cargo pgrx test`): the SQL functions inside one backend, as the
//! superuser (who acts as the service). Row-level security, roles, concurrency and crashes
//! are tested from outside over real connections, in tests/.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn create(args: &str) -> (String, String) {
        let sql = format!("SELECT id::text || ' ' || key FROM api_key_create({args})");
        let row = Spi::get_one::<String>(&sql).unwrap().unwrap();
        let (id, key) = row.split_once(' ').unwrap();
        (id.to_string(), key.to_string())
    }

    fn verify(sql_args: &str, key: &str) -> String {
        let sql = format!("SELECT code FROM api_key_verify($1{sql_args})");
        Spi::get_one_with_args::<String>(&sql, &[key.into()])
            .unwrap()
            .unwrap()
    }

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap()
    }

    #[pg_test]
    fn a_created_key_verifies() {
        let (id, key) =
            create("reference_id => 'u1', name => 'n', permissions => '{\"files\": [\"read\"]}'");
        assert_eq!(verify("", &key), "VALID");
        assert_eq!(
            verify(", permissions => '{\"files\": [\"read\"]}'", &key),
            "VALID"
        );
        let owner = Spi::get_one_with_args::<String>(
            "SELECT reference_type || ':' || reference_id || ':' || key_id FROM api_key_verify($1)",
            &[key.as_str().into()],
        );
        assert_eq!(owner.unwrap().unwrap(), format!("user:u1:{id}"));
    }

    #[pg_test]
    fn every_bad_key_gets_one_not_found_row() {
        let (_, key) = create("reference_id => 'u1'");
        let mut typo = key.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        let huge = "k".repeat(1 << 20);
        for bad in [
            "",
            "garbage",
            "sk_' OR 1=1 --",
            typo.as_str(),
            huge.as_str(),
        ] {
            let rows = Spi::get_one_with_args::<i64>(
                "SELECT count(*) FROM api_key_verify($1) WHERE NOT valid AND code = 'NOT_FOUND' AND key_id IS NULL",
                &[bad.into()],
            );
            assert_eq!(rows.unwrap(), Some(1), "{bad:.20}");
        }
        assert_eq!(
            one::<String>("SELECT code FROM api_key_verify(NULL)").as_deref(),
            Some("NOT_FOUND")
        );
    }

    #[pg_test]
    fn checks_come_in_the_documented_order() {
        let (id, key) = create("reference_id => 'u1', permissions => '{\"a\": [\"x\"]}'");
        // An expiry in the past cannot be set through api_key_update: write the row directly.
        Spi::run(&format!(
            "UPDATE api_key.keys SET expires_at = now() - interval '1 s' WHERE id = '{id}'"
        ))
        .unwrap();
        Spi::run(&format!("SELECT api_key_update('{id}', enabled => false)")).unwrap();
        assert_eq!(
            verify(", permissions => '{\"b\": [\"y\"]}'", &key),
            "DISABLED"
        );
        Spi::run(&format!("SELECT api_key_update('{id}', enabled => true)")).unwrap();
        assert_eq!(
            verify(", permissions => '{\"b\": [\"y\"]}'", &key),
            "EXPIRED"
        );
        Spi::run(&format!(
            "SELECT api_key_update('{id}', clear => '{{expires_at}}')"
        ))
        .unwrap();
        assert_eq!(
            verify(", permissions => '{\"b\": [\"y\"]}'", &key),
            "INSUFFICIENT_PERMISSIONS"
        );
    }

    #[pg_test]
    fn rate_limit_then_credits_and_refusals_cost_nothing() {
        let (id, key) = create("reference_id => 'u1', remaining => 3, rate_limit_max => 2, rate_limit_window => '1 hour'");
        assert_eq!(verify("", &key), "VALID");
        assert_eq!(verify("", &key), "VALID");
        assert_eq!(verify("", &key), "RATE_LIMITED");
        let left = one::<i64>(&format!(
            "SELECT remaining FROM api_key.keys WHERE id = '{id}'"
        ));
        assert_eq!(left, Some(1), "the refused call spent no credit");
        let retry = Spi::get_one_with_args::<i64>(
            "SELECT retry_after_ms FROM api_key_verify($1)",
            &[key.as_str().into()],
        );
        let retry = retry.unwrap().unwrap();
        assert!(retry > 3_500_000 && retry <= 3_600_000, "{retry}");
    }

    #[pg_test]
    fn credits_run_out_exactly() {
        let (_, key) = create("reference_id => 'u1', remaining => 5");
        assert_eq!(verify(", cost => 3", &key), "VALID");
        assert_eq!(verify(", cost => 3", &key), "USAGE_EXCEEDED");
        assert_eq!(verify(", cost => 2", &key), "VALID");
        assert_eq!(verify(", cost => 0", &key), "USAGE_EXCEEDED");
        assert_eq!(verify("", &key), "USAGE_EXCEEDED");
    }

    #[pg_test]
    fn credits_refill_when_the_interval_has_passed() {
        let (id, key) = create(
            "reference_id => 'u1', remaining => 1, refill_amount => 10, refill_interval => '1 day'",
        );
        assert_eq!(verify("", &key), "VALID");
        assert_eq!(verify("", &key), "USAGE_EXCEEDED");
        Spi::run(&format!(
            "UPDATE api_key.keys SET last_refill_at = now() - interval '2 days' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(verify("", &key), "VALID");
        assert_eq!(
            one::<i64>(&format!(
                "SELECT remaining FROM api_key.keys WHERE id = '{id}'"
            )),
            Some(9)
        );
    }

    #[pg_test(error = "cost must not be negative")]
    fn negative_cost_is_an_error() {
        let (_, key) = create("reference_id => 'u1'");
        verify(", cost => -1", &key);
    }

    #[pg_test]
    fn rotation_keeps_the_key_and_retires_the_old_secret() {
        let (id, old) = create("reference_id => 'u1', remaining => 10");
        let new = one::<String>(&format!(
            "SELECT key FROM api_key_rotate('{id}', interval '1 hour')"
        ))
        .unwrap();
        assert_ne!(old, new);
        assert_eq!(verify("", &old), "VALID");
        assert_eq!(verify("", &new), "VALID");
        let new2 = one::<String>(&format!("SELECT key FROM api_key_rotate('{id}')")).unwrap();
        assert_eq!(verify("", &old), "EXPIRED");
        assert_eq!(verify("", &new), "EXPIRED");
        assert_eq!(verify("", &new2), "VALID");
        assert_eq!(
            one::<i64>(&format!(
                "SELECT remaining FROM api_key.keys WHERE id = '{id}'"
            )),
            Some(7),
            "one key, one balance"
        );
    }

    #[pg_test]
    fn revoked_keys_are_not_found() {
        let (id, key) = create("reference_id => 'u1'");
        Spi::run(&format!("SELECT api_key_revoke('{id}')")).unwrap();
        assert_eq!(verify("", &key), "NOT_FOUND");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM api_key.key_secrets"),
            Some(0)
        );
    }

    #[pg_test]
    fn argon2id_keys_verify() {
        Spi::run("SELECT api_key_config_create('slow', hash_algorithm => 'argon2id', body_length => 40, prefix => 'pk_')").unwrap();
        let (_, key) = create("reference_id => 'u1', config_id => 'slow'");
        assert!(key.starts_with("pk_"));
        assert_eq!(verify("", &key), "VALID");
        assert_eq!(verify(", config_id => 'default'", &key), "NOT_FOUND");
        let hash = one::<String>("SELECT argon2_hash FROM api_key.key_secrets").unwrap();
        assert!(hash.starts_with("$argon2id$") && !hash.contains(&key));
    }

    #[pg_test]
    fn authenticate_binds_the_transaction() {
        assert_eq!(one::<String>("SELECT api_key_current_reference_id()"), None);
        let (id, key) = create("reference_id => 'org_1', reference_type => 'organization', permissions => '{\"docs\": [\"read\"]}'");
        Spi::run_with_args("SELECT api_key_authenticate($1)", &[key.as_str().into()]).unwrap();
        assert_eq!(
            one::<String>("SELECT api_key_current_reference_id()").as_deref(),
            Some("org_1")
        );
        assert_eq!(
            one::<String>("SELECT api_key_current_reference_type()").as_deref(),
            Some("organization")
        );
        assert_eq!(
            one::<String>("SELECT api_key_current_key_id()::text"),
            Some(id)
        );
        assert_eq!(
            one::<bool>("SELECT api_key_has_permission('docs', 'read')"),
            Some(true)
        );
        assert_eq!(
            one::<bool>("SELECT api_key_has_permission('docs', 'write')"),
            Some(false)
        );
        Spi::run("SELECT set_config('api_key.current_reference_id', 'org_2', true)").unwrap();
        assert_eq!(
            one::<String>("SELECT api_key_current_reference_id()").as_deref(),
            Some("org_1")
        );
    }

    #[pg_test(error = "API key not accepted: NOT_FOUND")]
    fn authenticate_refuses_a_bad_key() {
        Spi::run("SELECT api_key_authenticate('nope')").unwrap();
    }

    #[pg_test]
    fn the_service_creates_organization_keys_without_a_user() {
        let (id, _) = create("reference_type => 'organization', reference_id => 'org_9'");
        let by = one::<String>(&format!(
            "SELECT coalesce(created_by, '-') FROM api_key.keys WHERE id = '{id}'"
        ));
        assert_eq!(by.as_deref(), Some("-"));
    }

    #[pg_test(error = "actor \"bob\" is not a member of organization \"org_1\"")]
    fn non_members_are_refused() {
        Spi::run("SET LOCAL api_key.actor = 'bob'").unwrap();
        create("reference_type => 'organization', reference_id => 'org_1'");
    }

    #[pg_test(
        error = "actor \"carol\" (role \"member\") lacks permission api_key:create in organization \"org_1\""
    )]
    fn members_without_the_permission_are_refused() {
        Spi::run("INSERT INTO api_key.organizations (id) VALUES ('org_1')").unwrap();
        Spi::run("INSERT INTO api_key.members VALUES ('org_1', 'carol', 'member')").unwrap();
        Spi::run("SET LOCAL api_key.actor = 'carol'").unwrap();
        create("reference_type => 'organization', reference_id => 'org_1'");
    }

    #[pg_test(error = "metadata must be a JSON object or NULL, not an array")]
    fn metadata_must_be_an_object() {
        create("reference_id => 'u1', metadata => '[1]'");
    }

    #[pg_test(
        error = "permissions resource \"files\" must map to an array of strings, not a string"
    )]
    fn permissions_must_be_string_arrays() {
        create("reference_id => 'u1', permissions => '{\"files\": \"read\"}'");
    }

    #[pg_test(error = "configuration \"nope\" does not exist")]
    fn unknown_configs_are_named() {
        create("reference_id => 'u1', config_id => 'nope'");
    }

    #[pg_test]
    fn nothing_is_written_by_a_refused_create() {
        let before = one::<i64>("SELECT count(*) FROM api_key.keys");
        let failed = PgTryBuilder::new(|| {
            Spi::run("SELECT api_key_create(reference_id => 'u1', prefix => 'has space')").is_ok()
        })
        .catch_others(|_| false)
        .execute();
        assert!(!failed);
        assert_eq!(one::<i64>("SELECT count(*) FROM api_key.keys"), before);
    }

    #[pg_test]
    fn delete_expired_removes_only_expired_keys() {
        let (id, _) = create("reference_id => 'u1'");
        create("reference_id => 'u1'");
        Spi::run(&format!(
            "UPDATE api_key.keys SET expires_at = now() - interval '1 s' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(one::<i64>("SELECT api_key_delete_expired()"), Some(1));
        assert_eq!(one::<i64>("SELECT count(*) FROM api_key.keys"), Some(1));
    }

    #[pg_test]
    fn list_pages_newest_first() {
        for n in 0..5 {
            create(&format!("reference_id => 'pager', name => 'k{n}'"));
        }
        let first = one::<String>(
            "SELECT string_agg(name, ',') FROM api_key_list_for_reference('pager', page_size => 2)",
        );
        assert_eq!(first.as_deref(), Some("k4,k3"));
        let last_id = one::<String>("SELECT id::text FROM api_key.keys WHERE name = 'k3'").unwrap();
        let next = one::<String>(&format!(
            "SELECT string_agg(name, ',') FROM api_key_list_for_reference('pager', page_size => 2, after_id => '{last_id}')"
        ));
        assert_eq!(next.as_deref(), Some("k2,k1"));
    }

    /// `calendar::add` is PostgreSQL's `timestamp + interval`, to the microsecond.
    #[pg_test]
    fn calendar_arithmetic_is_postgresqls() {
        use crate::calendar::{self, Interval};
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |range: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % (2 * range as u64 + 1)) as i64 - range
        };
        for _ in 0..3000 {
            let ts = next(200 * 366 * calendar::MICROS_PER_DAY);
            let iv = Interval::new(
                next(2400) as i32,
                next(100_000) as i32,
                next(10_000_000_000_000),
            );
            let args = [
                // SAFETY: a timestamp is an int8 by value; the interval datum is palloc'd.
                unsafe { pgrx::datum::DatumWithOid::new(ts, pg_sys::TIMESTAMPOID) },
                crate::pg::clock::interval_arg(Some(iv)),
            ];
            let pg = Spi::get_one_with_args::<pgrx::datum::Timestamp>("SELECT $1 + $2", &args)
                .unwrap()
                .map(i64::from);
            assert_eq!(calendar::add(ts, iv), pg, "{ts} + {iv:?}");
        }
    }

    #[pg_test]
    fn key_ids_carry_their_creation_time() {
        let (id, _) = create("reference_id => 'u1'");
        let same = one::<bool>(&format!(
            "SELECT created_at = updated_at AND substr(id::text, 15, 1) = '7' FROM api_key.keys WHERE id = '{id}'"
        ));
        assert_eq!(same, Some(true));
    }

    #[pg_test(error = "api_key.actor must not contain control characters")]
    fn actors_with_control_characters_are_refused() {
        Spi::run("SET LOCAL api_key.actor = E'bob\\n'").unwrap();
        create("reference_id => 'bob'");
    }
}
