//! The store against real databases: an SQLite file (always) and a real PostgreSQL server when
//! `AIC_TEST_POSTGRES_URL` is set (`scripts/pg-test.sh` starts a throwaway cluster and sets it;
//! `scripts/test.sh` runs it). Without the URL the PostgreSQL test says loudly that it skipped.

use aic_control::Error;
use aic_control::meter::{Account, Usage};
use aic_control::policy::{Mode, Policy};
use aic_control::store::{Backend, Store, hour_of};

/// The same checks for every backend.
async fn exercise(store: &Store) {
    let tag = aic_control::key::random_hex(4);
    let now = 1_700_000_000_000i64;
    let t = store
        .create_tenant(&format!("acme-{tag}"), now)
        .await
        .unwrap();
    assert!(matches!(
        store.create_tenant(&format!("acme-{tag}"), now).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(store.list_tenants().await.unwrap().contains(&t));

    let p = Policy {
        aic_enabled: false,
        allowed_modes: vec![Mode::Conservative, Mode::Adaptive],
        max_level: 4,
        max_streams: 3,
    };
    let (k, full) = store
        .create_key(&t.tenant_id, "media", &p, now)
        .await
        .unwrap();
    // The secret is not stored, only its hash, and the full key parses back to the row.
    let parsed = aic_control::key::parse_key(&full).unwrap();
    assert_eq!(parsed.key_id, k.key_id);
    let got = store.get_key(&k.key_id).await.unwrap().unwrap();
    assert_eq!(got, k);
    assert_eq!(got.secret_sha256, parsed.secret_sha256);
    assert!(!full.contains(&got.secret_sha256));
    assert_eq!(got.policy, p);
    assert!(matches!(
        store.create_key("t_nope", "x", &p, now).await,
        Err(Error::NotFound(_))
    ));
    let (k2, _) = store
        .create_key(&t.tenant_id, "other", &Policy::default(), now + 1)
        .await
        .unwrap();
    let keys = store.list_keys(&t.tenant_id).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
        [k.key_id.as_str(), k2.key_id.as_str()]
    );

    let on = Policy {
        aic_enabled: true,
        ..p.clone()
    };
    assert_eq!(store.set_policy(&k.key_id, &on).await.unwrap().policy, on);
    assert!(matches!(
        store.set_policy("0000000000000000", &on).await,
        Err(Error::NotFound(_))
    ));
    let r = store.revoke_key(&k2.key_id, now + 5).await.unwrap();
    assert_eq!(r.revoked_ms, now + 5);
    // Revoking again keeps the first time.
    assert_eq!(
        store
            .revoke_key(&k2.key_id, now + 9)
            .await
            .unwrap()
            .revoked_ms,
        now + 5
    );

    // Usage adds up per key and hour across flushes.
    let a = Account {
        key_id: k.key_id.clone(),
        tenant_id: t.tenant_id.clone(),
    };
    let u = Usage {
        sessions: 1,
        media_ms_encoded: 2_000,
        media_ms_decoded: 1_000,
        media_ms_egress: 750,
        bytes_in: 64_000,
        bytes_out: 1_500,
        bytes_saved: 6_500,
    };
    store
        .add_usage(&[(a.clone(), u.clone())], now)
        .await
        .unwrap();
    store
        .add_usage(&[(a.clone(), u.clone())], now + 1000)
        .await
        .unwrap();
    store
        .add_usage(&[(a.clone(), u.clone())], now + 3_600_000)
        .await
        .unwrap();
    let rows = store.usage("", &k.key_id, 0).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].period_ms, hour_of(now));
    assert_eq!(rows[0].usage.sessions, 2);
    assert_eq!(rows[0].usage.media_ms_encoded, 4_000);
    assert_eq!(
        rows[0].usage.media_ms_egress, 1_500,
        "egress adds up across flushes"
    );
    assert_eq!(rows[0].usage.bytes_saved, 13_000);
    assert_eq!(rows[1].usage, u);

    // What a session's meter counts (egress included) goes through a flush into the store
    // and adds to the hour's row like every other counter.
    let meter = aic_control::meter::Meter::default();
    let s = meter.start(a.clone());
    s.counters.egress_ms(2_000);
    s.counters.encoded_ms(100);
    store
        .add_usage(&meter.take(), now + 3_600_000)
        .await
        .unwrap();
    s.counters.egress_ms(250);
    drop(s);
    store
        .add_usage(&meter.take(), now + 3_600_000 + 10)
        .await
        .unwrap();
    let rows = store.usage("", &k.key_id, now + 3_600_000).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].usage.media_ms_egress, 750 + 2_000 + 250);
    assert_eq!(rows[0].usage.media_ms_encoded, 2_000 + 100);
    assert_eq!(rows[0].usage.sessions, 1 + 1);
    assert_eq!(
        store
            .usage(&t.tenant_id, "", now + 3_600_000)
            .await
            .unwrap()
            .len(),
        1
    );

    store
        .audit(
            now,
            "ops (admin:abcd1234)",
            "CreateKey",
            &k.key_id,
            "127.0.0.1:5555",
            "x",
        )
        .await
        .unwrap();
    store
        .audit(
            now + 1,
            "ops (admin:abcd1234)",
            "RevokeKey",
            &k2.key_id,
            "127.0.0.1:5555",
            "",
        )
        .await
        .unwrap();
    let log = store.list_audit(2).await.unwrap();
    assert_eq!(log[0].action, "RevokeKey", "newest first");
    assert_eq!(log[1].peer, "127.0.0.1:5555");
}

#[tokio::test]
async fn sqlite_store_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::sqlite_url(dir.path());
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.backend, Backend::Sqlite);
    exercise(&store).await;
    store.close().await;
    // Reopening runs the migrations again as a no-op and keeps the data.
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.list_tenants().await.unwrap().len(), 1);
    assert!(dir.path().join("control.db").exists());
}

/// A store made before the egress column (only 0001 applied, with usage in it) upgrades at
/// open: old rows read 0 egress, and new flushes add to them.
#[tokio::test]
async fn sqlite_store_upgrades_from_0001() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::sqlite_url(dir.path());
    let only_0001 = dir.path().join("migrations");
    std::fs::create_dir(&only_0001).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/0001_init.sql"),
        only_0001.join("0001_init.sql"),
    )
    .unwrap();
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(only_0001.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO usage_hourly (key_id, tenant_id, period_ms, sessions, media_ms_encoded, \
             media_ms_decoded, bytes_in, bytes_out, bytes_saved) \
             VALUES ('k1', 't1', $1, 3, 100, 200, 300, 400, 500)",
        )
        .bind(hour_of(1_700_000_000_000))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::open(&url).await.unwrap();
    let old = Usage {
        sessions: 3,
        media_ms_encoded: 100,
        media_ms_decoded: 200,
        media_ms_egress: 0,
        bytes_in: 300,
        bytes_out: 400,
        bytes_saved: 500,
    };
    let rows = store.usage("", "k1", 0).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].usage, old);
    let a = Account {
        key_id: "k1".into(),
        tenant_id: "t1".into(),
    };
    let more = Usage {
        media_ms_egress: 9_000,
        ..Usage::default()
    };
    store
        .add_usage(&[(a, more)], 1_700_000_000_000)
        .await
        .unwrap();
    let rows = store.usage("", "k1", 0).await.unwrap();
    assert_eq!(
        rows[0].usage,
        Usage {
            media_ms_egress: 9_000,
            ..old
        }
    );
    store.close().await;
}

#[tokio::test]
async fn postgres_store() {
    let Ok(url) = std::env::var("AIC_TEST_POSTGRES_URL") else {
        eprintln!(
            "\n*** SKIPPED postgres_store: AIC_TEST_POSTGRES_URL is not set. \
             Run scripts/pg-test.sh (scripts/test.sh does) to test against a real PostgreSQL. ***\n"
        );
        return;
    };
    let store = Store::open(&url).await.expect("connect to PostgreSQL");
    assert_eq!(store.backend, Backend::Postgres);
    exercise(&store).await;
    store.close().await;
    // Migrations are idempotent on PostgreSQL too.
    Store::open(&url).await.unwrap().close().await;
    eprintln!("postgres_store: ran against a real PostgreSQL");
}
