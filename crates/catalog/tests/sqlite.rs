//! The catalog contract, run against the SQLite implementation. A future
//! PostgreSQL catalog runs the same `contract` function.

use stowage_catalog::sqlite::SqliteCatalog;
use stowage_catalog::*;
use stowage_core::{Progress, TaskKind, TaskMode, TaskState};

fn instance(account: &str, id: &str, name: &str) -> Instance {
    Instance {
        id: id.into(),
        account_id: account.into(),
        name: name.into(),
        engine: "postgresql".into(),
        topology: "standalone".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        username: "postgres".into(),
        password_enc: Some(vec![1, 2, 3]),
        dbname: None,
        options: serde_json::json!({}),
        created_ms: 1,
    }
}

async fn contract(c: &dyn Catalog) {
    let a = c.create_account("alpha", 1).await.unwrap();
    let b = c.create_account("beta", 1).await.unwrap();
    assert!(matches!(
        c.create_account("alpha", 1).await,
        Err(CatalogError::Conflict(_))
    ));
    c.insert_instance(&instance(&a.id, "rm-aaaaaaaaaaaaaaaa", "pg1"))
        .await
        .unwrap();
    assert!(matches!(
        c.insert_instance(&instance(&a.id, "rm-bbbbbbbbbbbbbbbb", "pg1"))
            .await,
        Err(CatalogError::Conflict(_))
    ));
    // Isolation: beta does not see alpha's instance.
    assert!(
        c.instance(&b.id, "rm-aaaaaaaaaaaaaaaa")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        c.instance(&a.id, "pg1").await.unwrap().unwrap().id,
        "rm-aaaaaaaaaaaaaaaa"
    );

    let nt = NewTask {
        account_id: a.id.clone(),
        instance_id: "rm-aaaaaaaaaaaaaaaa".into(),
        mode: TaskMode::Manual,
        method: "physical".into(),
        client_token: None,
        node: Some("n1".into()),
    };
    let t = c.create_backup_task(&nt, 10).await.unwrap();
    assert_eq!(t.state, TaskState::Pending);
    // One active task per instance.
    assert!(matches!(
        c.create_backup_task(&nt, 11).await,
        Err(CatalogError::InstanceBusy(_))
    ));
    assert!(matches!(
        c.delete_instance(&a.id, "rm-aaaaaaaaaaaaaaaa").await,
        Err(CatalogError::InstanceBusy(_))
    ));
    // Illegal transitions are refused.
    assert!(
        c.set_backup_task_state(t.id, TaskState::Finished, StateUpdate::default(), 12)
            .await
            .is_err()
    );
    for s in [
        TaskState::Checking,
        TaskState::Preparing,
        TaskState::Running,
    ] {
        c.set_backup_task_state(t.id, s, StateUpdate::default(), 12)
            .await
            .unwrap();
    }
    c.set_backup_task_progress(
        t.id,
        Progress {
            bytes_done: 50,
            bytes_total: 100,
            bytes_stored: 5,
        },
        13,
    )
    .await
    .unwrap();
    let got = c.backup_task(&a.id, t.id).await.unwrap().unwrap();
    assert_eq!(
        (got.bytes_done, got.bytes_total, got.state),
        (50, 100, TaskState::Running)
    );
    assert!(c.backup_task(&b.id, t.id).await.unwrap().is_none());
    c.set_backup_task_state(t.id, TaskState::Finishing, StateUpdate::default(), 14)
        .await
        .unwrap();
    let set = NewSet {
        snapshot_id: "ab".repeat(32),
        engine: "postgresql".into(),
        method: "physical".into(),
        started_ms: 12,
        finished_ms: 15,
        bytes_logical: 100,
        bytes_stored: 10,
        consistent_point: Some(serde_json::json!({"stop_lsn": "0/3000100"})),
        meta: serde_json::json!({}),
        expires_ms: None,
    };
    let (t2, s) = c.finish_backup_task(t.id, &set, 15).await.unwrap();
    assert_eq!(t2.state, TaskState::Finished);
    assert_eq!(t2.set_id, Some(s.id));
    assert_eq!(s.id, t.id, "a set's id is its task's id");
    assert_eq!(s.consistent_point.unwrap()["stop_lsn"], "0/3000100");
    // Instance free again; a second task can start and is failed by a restart.
    let t3 = c.create_backup_task(&nt, 20).await.unwrap();
    c.set_backup_task_state(t3.id, TaskState::Checking, StateUpdate::default(), 21)
        .await
        .unwrap();
    assert_eq!(
        c.fail_interrupted("n1", "server restarted", 22)
            .await
            .unwrap(),
        1
    );
    let t3 = c.backup_task(&a.id, t3.id).await.unwrap().unwrap();
    assert_eq!(t3.state, TaskState::Failed);
    assert_eq!(t3.error.as_deref(), Some("server restarted"));
    // Filters.
    let f = TaskFilter {
        states: vec![TaskState::Finished],
        ..Default::default()
    };
    assert_eq!(c.list_backup_tasks(&a.id, &f).await.unwrap().len(), 1);
    assert_eq!(
        c.list_backup_tasks(&b.id, &TaskFilter::default())
            .await
            .unwrap()
            .len(),
        0
    );
    // Idempotency token.
    let tok = NewTask {
        client_token: Some("tok".into()),
        ..nt.clone()
    };
    let x = c.create_backup_task(&tok, 30).await.unwrap();
    let y = c.create_backup_task(&tok, 31).await.unwrap();
    assert_eq!(x.id, y.id);
    // Sets and jobs.
    assert_eq!(c.list_backup_sets(&a.id, None).await.unwrap().len(), 1);
    assert!(c.delete_backup_set(&b.id, s.id).await.is_err());
    let j = c
        .create_job(
            &a.id,
            TaskKind::Restore,
            Some(s.id),
            serde_json::json!({"target": "/x"}),
            "n1",
            40,
        )
        .await
        .unwrap();
    c.set_job_state(j.id, TaskState::Checking, StateUpdate::default(), 41)
        .await
        .unwrap();
    c.set_job_progress(
        j.id,
        Progress {
            bytes_done: 1,
            bytes_total: 2,
            bytes_stored: 0,
        },
        42,
    )
    .await
    .unwrap();
    assert_eq!(c.job(&a.id, j.id).await.unwrap().unwrap().bytes_done, 1);
    c.delete_backup_set(&a.id, s.id).await.unwrap();
    // Keys: disable, delete; accounts listed.
    let k = AccessKey {
        id: "K1".into(),
        account_id: b.id.clone(),
        secret_enc: vec![1],
        status: "active".into(),
        description: String::new(),
        created_ms: 1,
    };
    c.insert_access_key(&k).await.unwrap();
    c.set_access_key_status("K1", "disabled").await.unwrap();
    assert_eq!(
        c.access_key("K1").await.unwrap().unwrap().status,
        "disabled"
    );
    c.delete_access_key("K1").await.unwrap();
    assert!(c.access_key("K1").await.unwrap().is_none());
    assert!(matches!(
        c.delete_access_key("K1").await,
        Err(CatalogError::NotFound(_))
    ));
    assert_eq!(c.list_accounts().await.unwrap().len(), 2);
}

#[tokio::test]
async fn sqlite_catalog_contract() {
    let d = tempfile::tempdir().unwrap();
    let c = SqliteCatalog::open(&d.path().join("catalog.db"))
        .await
        .unwrap();
    contract(&c).await;
    // Reopening keeps data and does not re-run migrations.
    drop(c);
    let c = SqliteCatalog::open(&d.path().join("catalog.db"))
        .await
        .unwrap();
    assert!(c.account_by_name("alpha").await.unwrap().is_some());
}
