//! The catalog contract, run against the SQLite implementation. A future
//! PostgreSQL catalog runs the same `contract` function.

use stowage_catalog::sql::SqlCatalog;
use stowage_catalog::*;
use stowage_core::{Progress, TaskKind, TaskMode, TaskState};
use stowage_testkit::{PgOptions, PgServer};

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
    // Settings: the first value stays until set explicitly.
    assert_eq!(c.setting("k").await.unwrap(), None);
    assert_eq!(c.setting_or_insert("k", "v1").await.unwrap(), "v1");
    assert_eq!(c.setting("k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(c.setting_or_insert("k", "v2").await.unwrap(), "v1");
    c.set_setting("k", "v3").await.unwrap();
    assert_eq!(c.setting_or_insert("k", "v4").await.unwrap(), "v3");
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
        node: Some("n1".into()),
        ..NewTask::backup(&a.id, "rm-aaaaaaaaaaaaaaaa", TaskMode::Manual, "physical")
    };
    let t = c.create_task(&nt, 10).await.unwrap();
    assert_eq!(t.state, TaskState::Pending);
    // One active task per instance.
    assert!(matches!(
        c.create_task(&nt, 11).await,
        Err(CatalogError::InstanceBusy(_))
    ));
    assert!(matches!(
        c.delete_instance(&a.id, "rm-aaaaaaaaaaaaaaaa").await,
        Err(CatalogError::InstanceBusy(_))
    ));
    // Illegal transitions are refused.
    assert!(
        c.set_task_state(t.id, TaskState::Finished, StateUpdate::default(), 12)
            .await
            .is_err()
    );
    for s in [
        TaskState::Checking,
        TaskState::Preparing,
        TaskState::Running,
    ] {
        c.set_task_state(t.id, s, StateUpdate::default(), 12)
            .await
            .unwrap();
    }
    c.set_task_progress(
        t.id,
        Progress {
            bytes_done: 50,
            bytes_total: 100,
            bytes_stored: 5,
        },
        13,
        None,
    )
    .await
    .unwrap();
    let got = c.task(&a.id, t.id).await.unwrap().unwrap();
    assert_eq!(
        (got.bytes_done, got.bytes_total, got.state),
        (50, 100, TaskState::Running)
    );
    assert!(c.task(&b.id, t.id).await.unwrap().is_none());
    c.set_task_state(t.id, TaskState::Finishing, StateUpdate::default(), 14)
        .await
        .unwrap();
    let set = NewSet {
        snapshot_id: "ab".repeat(32),
        engine: "postgresql".into(),
        engine_version: Some("16.4".into()),
        method: "physical".into(),
        started_ms: 12,
        finished_ms: 15,
        bytes_logical: 100,
        bytes_stored: 10,
        consistent_point: Some(stowage_core::ConsistentPoint::Wal {
            start_lsn: "0/3000028".into(),
            stop_lsn: "0/3000100".into(),
            timeline: 1,
        }),
        meta: serde_json::json!({}),
        expires_ms: None,
        lease_epoch: None,
    };
    let (t2, s) = c.finish_backup_task(t.id, &set, 15).await.unwrap();
    assert_eq!(t2.state, TaskState::Finished);
    assert_eq!(t2.set_id, Some(s.id));
    assert_eq!(s.id, t.id, "a set's id is its task's id");
    assert_eq!(
        s.consistent_point.unwrap().to_string(),
        "LSN 0/3000100 (timeline 1)"
    );
    assert_eq!(s.engine_version.as_deref(), Some("16.4"));
    // Instance free again; a second task can start and is failed by a restart.
    let t3 = c.create_task(&nt, 20).await.unwrap();
    c.set_task_state(t3.id, TaskState::Checking, StateUpdate::default(), 21)
        .await
        .unwrap();
    assert_eq!(
        c.fail_interrupted("n1", "server restarted", 22)
            .await
            .unwrap(),
        1
    );
    let t3 = c.task(&a.id, t3.id).await.unwrap().unwrap();
    assert_eq!(t3.state, TaskState::Failed);
    assert_eq!(t3.error.as_deref(), Some("server restarted"));
    // Filters.
    let f = TaskFilter {
        states: vec![TaskState::Finished],
        ..Default::default()
    };
    assert_eq!(c.list_tasks(&a.id, &f).await.unwrap().len(), 1);
    assert_eq!(
        c.list_tasks(&b.id, &TaskFilter::default())
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
    let x = c.create_task(&tok, 30).await.unwrap();
    let y = c.create_task(&tok, 31).await.unwrap();
    assert_eq!(x.id, y.id);
    // Sets and jobs.
    assert_eq!(
        c.list_backup_sets(&a.id, &Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(c.delete_backup_set(&b.id, s.id).await.is_err());
    let j = c
        .create_task(
            &NewTask {
                params: serde_json::json!({"target": "/x"}),
                node: Some("n1".into()),
                ..NewTask::of_kind(&a.id, TaskKind::Restore, Some(s.id))
            },
            40,
        )
        .await
        .unwrap();
    assert_eq!((j.kind, j.set_id), (TaskKind::Restore, Some(s.id)));
    // A restore into a folder names no instance and takes no slot.
    c.set_task_state(j.id, TaskState::Checking, StateUpdate::default(), 41)
        .await
        .unwrap();
    c.set_task_progress(
        j.id,
        Progress {
            bytes_done: 1,
            bytes_total: 2,
            bytes_stored: 0,
        },
        42,
        None,
    )
    .await
    .unwrap();
    assert_eq!(c.task(&a.id, j.id).await.unwrap().unwrap().bytes_done, 1);
    assert!(c.task(&b.id, j.id).await.unwrap().is_none());
    let only = |kinds: Vec<TaskKind>| TaskFilter {
        kinds,
        ..Default::default()
    };
    let restores = c
        .list_tasks(&a.id, &only(vec![TaskKind::Restore]))
        .await
        .unwrap();
    assert_eq!(
        restores.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![j.id]
    );
    assert!(
        c.list_tasks(&a.id, &only(vec![TaskKind::Backup]))
            .await
            .unwrap()
            .iter()
            .all(|t| t.kind == TaskKind::Backup)
    );
    // Parts: created under a parent, never listed as top-level tasks,
    // never holding the instance's slot, failed by a restart like any task.
    c.set_task_state(x.id, TaskState::Cancelled, StateUpdate::default(), 43)
        .await
        .unwrap();
    let parent = c.create_task(&nt, 43).await.unwrap();
    let p1 = c
        .create_task(&NewTask::part_of(&parent, "rs0"), 44)
        .await
        .unwrap();
    let p2 = c
        .create_task(&NewTask::part_of(&parent, "cfg"), 44)
        .await
        .unwrap();
    assert_eq!(
        (p1.parent_id, p1.part.as_deref(), p1.instance_id.as_deref()),
        (Some(parent.id), Some("rs0"), Some("rm-aaaaaaaaaaaaaaaa"))
    );
    let parts = c.task_parts(parent.id).await.unwrap();
    assert_eq!(
        parts.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![p1.id, p2.id]
    );
    let top = c.list_tasks(&a.id, &TaskFilter::default()).await.unwrap();
    assert!(top.iter().all(|t| t.parent_id.is_none()), "{top:?}");
    let listed = c
        .list_tasks(
            &a.id,
            &TaskFilter {
                parent_id: Some(parent.id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    c.set_task_state(p1.id, TaskState::Checking, StateUpdate::default(), 45)
        .await
        .unwrap();
    c.set_task_state(p1.id, TaskState::Failed, StateUpdate::default(), 46)
        .await
        .unwrap();
    c.set_task_state(parent.id, TaskState::Failed, StateUpdate::default(), 46)
        .await
        .unwrap();
    // The job (restore) and the other part were interrupted.
    assert_eq!(c.fail_interrupted("n1", "restart", 47).await.unwrap(), 2);
    assert_eq!(
        c.task(&a.id, p2.id).await.unwrap().unwrap().state,
        TaskState::Failed
    );
    // A finished set's task is a backup; nothing else finishes one.
    assert!(c.finish_backup_task(j.id, &set, 48).await.is_err());
    c.delete_backup_set(&a.id, s.id).await.unwrap();
    // Keys: disable, delete; accounts listed.
    let k = AccessKey {
        id: "K1".into(),
        account_id: b.id.clone(),
        secret_enc: vec![1],
        status: "active".into(),
        description: String::new(),
        created_ms: 1,
        policy: None,
    };
    c.insert_access_key(&k).await.unwrap();
    let doc = serde_json::json!({"Version": "1", "Statement": []});
    c.set_access_key_policy("K1", Some(&doc)).await.unwrap();
    assert_eq!(c.access_key("K1").await.unwrap().unwrap().policy, Some(doc));
    c.set_access_key_policy("K1", None).await.unwrap();
    assert_eq!(c.access_key("K1").await.unwrap().unwrap().policy, None);
    assert!(c.set_access_key_policy("nope", None).await.is_err());
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

/// Policies, scheduled tasks and expiry.
async fn contract_schedule(c: &dyn Catalog) {
    let a = c.create_account("sched", 1).await.unwrap();
    let other = c.create_account("other", 1).await.unwrap();
    let inst = "rm-cccccccccccccccc";
    c.insert_instance(&instance(&a.id, inst, "pg-sched"))
        .await
        .unwrap();
    // No stored policy: the default applies.
    assert!(c.backup_policy(&a.id, inst).await.unwrap().is_none());
    let ip = c.instance_policies().await.unwrap();
    assert!(
        ip.iter()
            .any(|p| p.instance_id == inst && p.policy.is_none())
    );
    let mut extra = serde_json::Map::new();
    extra.insert("CompressType".into(), "4".into());
    let sp = StoredPolicy {
        policy: stowage_core::BackupPolicy {
            retention_days: 3,
            weekdays: stowage_core::Weekdays::parse("Monday,Friday").unwrap(),
            ..Default::default()
        },
        extra,
        updated_ms: 5,
    };
    // Another account cannot set it.
    assert!(matches!(
        c.put_backup_policy(&other.id, inst, &sp).await,
        Err(CatalogError::NotFound(_))
    ));
    c.put_backup_policy(&a.id, inst, &sp).await.unwrap();
    assert_eq!(
        c.backup_policy(&a.id, inst).await.unwrap(),
        Some(sp.clone())
    );
    assert!(c.backup_policy(&other.id, inst).await.unwrap().is_none());

    // A scheduled task does not hold the active slot until claimed.
    let sched = NewTask {
        node: Some("n1".into()),
        scheduled_ms: Some(1000),
        ..NewTask::backup(&a.id, inst, TaskMode::Automated, "physical")
    };
    let st = c.create_task(&sched, 900).await.unwrap();
    assert_eq!(
        (st.state, st.scheduled_ms),
        (TaskState::Pending, Some(1000))
    );
    assert!(matches!(
        c.create_task(&sched, 901).await,
        Err(CatalogError::Conflict(_))
    ));
    assert!(c.due_scheduled_tasks(999).await.unwrap().is_empty());
    let manual = NewTask {
        mode: TaskMode::Manual,
        scheduled_ms: None,
        ..sched.clone()
    };
    let m = c.create_task(&manual, 950).await.unwrap();
    assert_eq!(c.due_scheduled_tasks(1000).await.unwrap()[0].id, st.id);
    assert!(matches!(
        c.claim_scheduled_task(st.id, "n1", 1001, None).await,
        Err(CatalogError::InstanceBusy(_))
    ));
    c.set_task_state(m.id, TaskState::Cancelled, StateUpdate::default(), 1002)
        .await
        .unwrap();
    assert_eq!(c.active_automated_backups().await.unwrap(), 0);
    c.claim_scheduled_task(st.id, "n1", 1003, None)
        .await
        .unwrap();
    // Claimed: it counts for the limit of automated backups (on any node),
    // and can no longer be marked as waiting for it.
    assert_eq!(c.active_automated_backups().await.unwrap(), 1);
    assert!(!c.queue_scheduled_task(st.id, 1003).await.unwrap());
    assert!(c.due_scheduled_tasks(2000).await.unwrap().is_empty());
    assert!(matches!(
        c.create_task(&manual, 1004).await,
        Err(CatalogError::InstanceBusy(_))
    ));
    c.set_task_state(st.id, TaskState::Checking, StateUpdate::default(), 1005)
        .await
        .unwrap();
    // A restart does not touch unclaimed scheduled tasks, only claimed ones.
    let later = c
        .create_task(
            &NewTask {
                scheduled_ms: Some(5000),
                ..sched.clone()
            },
            1006,
        )
        .await
        .unwrap();
    assert_eq!(c.fail_interrupted("n1", "restart", 1007).await.unwrap(), 1);
    assert_eq!(c.active_automated_backups().await.unwrap(), 0);
    assert_eq!(
        c.task(&a.id, later.id).await.unwrap().unwrap().state,
        TaskState::Pending
    );
    // Held back by the limit: marked once, and the mark is what the next
    // scheduler (maybe another node) reads.
    assert!(c.queue_scheduled_task(later.id, 5001).await.unwrap());
    assert!(!c.queue_scheduled_task(later.id, 5002).await.unwrap());
    let due = c.due_scheduled_tasks(5003).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].result.as_ref().unwrap()["queued_ms"], 5001);
    // A scheduler's skip carries the epoch it read: after a claim (the
    // next epoch) it is refused and the claimed task stays; the claim
    // cleared the queued mark.
    let skip = |epoch| StateUpdate {
        error: Some("skipped".into()),
        lease_epoch: Some(epoch),
        ..Default::default()
    };
    let w2 = c
        .create_task(
            &NewTask {
                scheduled_ms: Some(7000),
                ..sched.clone()
            },
            5004,
        )
        .await
        .unwrap();
    assert!(c.queue_scheduled_task(w2.id, 7000).await.unwrap());
    c.claim_scheduled_task(w2.id, "n2", 7001, None)
        .await
        .unwrap();
    assert!(matches!(
        c.set_task_state(w2.id, TaskState::Cancelled, skip(w2.lease_epoch), 7002)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    let claimed = c.task(&a.id, w2.id).await.unwrap().unwrap();
    assert_eq!((claimed.state, claimed.result), (TaskState::Pending, None));
    // With the epoch it holds, the holder's own cancel goes through.
    c.set_task_state(w2.id, TaskState::Cancelled, skip(claimed.lease_epoch), 7003)
        .await
        .unwrap();
    // A policy change drops the tasks of other windows.
    assert_eq!(
        c.drop_scheduled_tasks(inst, Some(5000), "policy changed", 1008)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        c.drop_scheduled_tasks(inst, None, "policy changed", 1008)
            .await
            .unwrap(),
        1
    );
    let dropped = c.task(&a.id, later.id).await.unwrap().unwrap();
    assert_eq!(
        (dropped.state, dropped.scheduled_ms),
        (TaskState::Cancelled, None)
    );

    // Expiry: the policy's retention applies to unpinned sets.
    let mut ids = Vec::new();
    for (i, fin) in [(0i64, 10_000i64), (1, 20_000)] {
        let t = c
            .create_task(
                &NewTask {
                    scheduled_ms: None,
                    ..manual.clone()
                },
                fin,
            )
            .await
            .unwrap();
        for s in [
            TaskState::Checking,
            TaskState::Preparing,
            TaskState::Running,
            TaskState::Finishing,
        ] {
            c.set_task_state(t.id, s, StateUpdate::default(), fin)
                .await
                .unwrap();
        }
        let (_, set) = c
            .finish_backup_task(
                t.id,
                &NewSet {
                    snapshot_id: format!("{i:064}"),
                    engine: "postgresql".into(),
                    engine_version: Some("16.4".into()),
                    method: "physical".into(),
                    started_ms: fin - 1,
                    finished_ms: fin,
                    bytes_logical: 1,
                    bytes_stored: 1,
                    consistent_point: None,
                    meta: serde_json::json!({}),
                    expires_ms: Some(fin + 100),
                    lease_epoch: None,
                },
                fin,
            )
            .await
            .unwrap();
        ids.push(set.id);
    }
    assert!(
        c.sets_of_instances_with_expired(10_099)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.sets_of_instances_with_expired(10_100)
            .await
            .unwrap()
            .len(),
        2
    );
    let pinned = c.pin_backup_set_expiry(&a.id, ids[0], None).await.unwrap();
    assert_eq!(pinned.expires_ms, None);
    assert!(
        c.pin_backup_set_expiry(&other.id, ids[0], None)
            .await
            .is_err()
    );
    c.put_backup_policy(
        &a.id,
        inst,
        &StoredPolicy {
            policy: stowage_core::BackupPolicy {
                retention_days: 1,
                ..sp.policy
            },
            ..sp.clone()
        },
    )
    .await
    .unwrap();
    let day = stowage_core::time::MS_PER_DAY;
    assert_eq!(
        c.backup_set(&a.id, ids[0])
            .await
            .unwrap()
            .unwrap()
            .expires_ms,
        None
    );
    assert_eq!(
        c.backup_set(&a.id, ids[1])
            .await
            .unwrap()
            .unwrap()
            .expires_ms,
        Some(20_000 + day)
    );
    // A retention asked for one backup pins its set's expiry.
    let t = c
        .create_task(
            &NewTask {
                retention_days: Some(2),
                ..manual.clone()
            },
            30_000,
        )
        .await
        .unwrap();
    assert_eq!(t.retention_days, Some(2));
    for st in [
        TaskState::Checking,
        TaskState::Preparing,
        TaskState::Running,
        TaskState::Finishing,
    ] {
        c.set_task_state(t.id, st, StateUpdate::default(), 30_000)
            .await
            .unwrap();
    }
    let (_, kept) = c
        .finish_backup_task(
            t.id,
            &NewSet {
                snapshot_id: format!("{:064}", 9),
                engine: "postgresql".into(),
                engine_version: Some("16.4".into()),
                method: "physical".into(),
                started_ms: 29_000,
                finished_ms: 30_000,
                bytes_logical: 1,
                bytes_stored: 1,
                consistent_point: None,
                meta: serde_json::json!({}),
                expires_ms: Some(1),
                lease_epoch: None,
            },
            30_000,
        )
        .await
        .unwrap();
    assert_eq!(kept.expires_ms, Some(30_000 + 2 * day));
    c.put_backup_policy(&a.id, inst, &sp).await.unwrap();
    assert_eq!(
        c.backup_set(&a.id, kept.id)
            .await
            .unwrap()
            .unwrap()
            .expires_ms,
        Some(30_000 + 2 * day)
    );
    c.delete_backup_set(&a.id, kept.id).await.unwrap();
    // Removing the instance drops its policy.
    c.delete_backup_set(&a.id, ids[0]).await.unwrap();
    c.delete_backup_set(&a.id, ids[1]).await.unwrap();
    c.delete_instance(&a.id, inst).await.unwrap();
    assert!(
        !c.instance_policies()
            .await
            .unwrap()
            .iter()
            .any(|p| p.instance_id == inst)
    );
}

fn a_set(lease_epoch: Option<i64>) -> NewSet {
    NewSet {
        snapshot_id: "cd".repeat(32),
        engine: "postgresql".into(),
        engine_version: None,
        method: "physical".into(),
        started_ms: 1,
        finished_ms: 2,
        bytes_logical: 10,
        bytes_stored: 1,
        consistent_point: None,
        meta: serde_json::json!({}),
        expires_ms: None,
        lease_epoch,
    }
}

fn state(epoch: i64) -> StateUpdate {
    StateUpdate {
        lease_epoch: Some(epoch),
        ..Default::default()
    }
}

/// Leases: a task run under a lease is taken over once it expires, by
/// exactly one node, as a new attempt; the old holder's writes are refused
/// from then on; a cancel asked elsewhere reaches the holder; roles are
/// held by one node at a time.
async fn contract_leases(c: &dyn Catalog) {
    let a = c.create_account("leases", 1).await.unwrap();
    let inst = "rm-leaseleaseleas1";
    c.insert_instance(&instance(&a.id, inst, "l1"))
        .await
        .unwrap();
    let t = c
        .create_task(
            &NewTask {
                node: Some("n1".into()),
                lease_until_ms: Some(10_000),
                ..NewTask::backup(&a.id, inst, TaskMode::Manual, "physical")
            },
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(
        (t.lease_epoch, t.attempts, t.cancel_requested),
        (1, 1, false)
    );
    assert_eq!(c.renew_lease(t.id, 1, 20_000).await.unwrap(), Some(false));
    assert!(
        c.claim_expired_task("n2", 60_000, 15_000, &[])
            .await
            .unwrap()
            .is_none(),
        "renewed"
    );
    for s in [
        TaskState::Checking,
        TaskState::Preparing,
        TaskState::Running,
    ] {
        c.set_task_state(t.id, s, state(1), 2_000).await.unwrap();
    }
    let part = c
        .create_task(&NewTask::part_of(&t, "p0"), 2_000)
        .await
        .unwrap();
    c.set_task_progress(
        t.id,
        Progress {
            bytes_done: 7,
            bytes_total: 10,
            bytes_stored: 1,
        },
        2_500,
        Some(1),
    )
    .await
    .unwrap();

    // Expired: n2 takes it over, and nobody else.
    let got = c
        .claim_expired_task("n2", 60_000, 21_000, &[])
        .await
        .unwrap()
        .expect("expired lease taken over");
    assert_eq!(
        (got.id, got.lease_epoch, got.attempts, got.node.as_deref()),
        (t.id, 2, 2, Some("n2"))
    );
    assert_eq!((got.state, got.bytes_done), (TaskState::Running, 0));
    assert!(
        c.claim_expired_task("n3", 90_000, 21_000, &[])
            .await
            .unwrap()
            .is_none()
    );
    let parts = c.task_parts(t.id).await.unwrap();
    assert_eq!(parts[0].id, part.id);
    assert_eq!(parts[0].state, TaskState::Failed);
    assert!(parts[0].error.as_deref().unwrap().contains("n2"));
    // Still the instance's one active task.
    assert!(matches!(
        c.create_task(
            &NewTask::backup(&a.id, inst, TaskMode::Manual, "physical"),
            21_500
        )
        .await,
        Err(CatalogError::InstanceBusy(_))
    ));

    // n1's writes are refused from now on.
    assert_eq!(c.renew_lease(t.id, 1, 90_000).await.unwrap(), None);
    assert!(matches!(
        c.set_task_state(t.id, TaskState::Failed, state(1), 22_000)
            .await,
        Err(CatalogError::LeaseLost(_))
    ));
    c.set_task_progress(t.id, Progress::default(), 22_000, Some(1))
        .await
        .unwrap();
    c.set_task_progress(
        t.id,
        Progress {
            bytes_done: 99,
            bytes_total: 100,
            bytes_stored: 9,
        },
        22_000,
        Some(1),
    )
    .await
    .unwrap();
    let now = c.task(&a.id, t.id).await.unwrap().unwrap();
    assert_eq!(now.bytes_done, 0, "a stale holder's progress is dropped");
    assert!(matches!(
        c.finish_backup_task(t.id, &a_set(Some(1)), 22_000).await,
        Err(CatalogError::LeaseLost(_))
    ));
    assert!(c.backup_set(&a.id, t.id).await.unwrap().is_none());

    // A cancel asked through another node reaches the holder.
    assert!(c.request_cancel(&a.id, t.id).await.unwrap());
    assert_eq!(c.renew_lease(t.id, 2, 90_000).await.unwrap(), Some(true));

    // n2 finishes: one set, the lease gone, never taken over again.
    c.set_task_state(t.id, TaskState::Finishing, state(2), 23_000)
        .await
        .unwrap();
    let (done, set) = c
        .finish_backup_task(t.id, &a_set(Some(2)), 24_000)
        .await
        .unwrap();
    assert_eq!((done.state, set.id), (TaskState::Finished, t.id));
    assert!(
        c.claim_expired_task("n3", 2_000_000, 1_000_000, &[])
            .await
            .unwrap()
            .is_none()
    );
    assert!(!c.request_cancel(&a.id, t.id).await.unwrap());
    assert_eq!(c.renew_lease(t.id, 2, 2_000_000).await.unwrap(), None);

    // A task that failed ends its lease too.
    let v = c
        .create_task(
            &NewTask {
                node: Some("n1".into()),
                lease_until_ms: Some(30_000),
                ..NewTask::of_kind(&a.id, TaskKind::Verify, None)
            },
            25_000,
        )
        .await
        .unwrap();
    c.set_task_state(v.id, TaskState::Failed, state(1), 26_000)
        .await
        .unwrap();
    assert!(
        c.claim_expired_task("n3", 2_000_000, 1_000_000, &[])
            .await
            .unwrap()
            .is_none()
    );

    // A node's own task whose lease expired (its final write was lost):
    // not taken while the node still runs it, taken once it does not.
    let own = c
        .create_task(
            &NewTask {
                node: Some("n1".into()),
                lease_until_ms: Some(30_000),
                ..NewTask::of_kind(&a.id, TaskKind::Verify, None)
            },
            25_000,
        )
        .await
        .unwrap();
    assert!(
        c.claim_expired_task("n1", 2_000_000, 1_000_000, &[own.id])
            .await
            .unwrap()
            .is_none(),
        "still running on n1"
    );
    let again = c
        .claim_expired_task("n1", 2_000_000, 1_000_000, &[own.id + 1000])
        .await
        .unwrap()
        .expect("n1's own expired task, not running");
    assert_eq!((again.id, again.attempts), (own.id, 2));
    c.set_task_state(
        own.id,
        TaskState::Failed,
        state(again.lease_epoch),
        1_000_001,
    )
    .await
    .unwrap();

    // Roles: one holder until its lease expires.
    assert!(
        c.acquire_role("scheduler", "n1", 10_000, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !c.acquire_role("scheduler", "n2", 12_000, 2_000)
            .await
            .unwrap()
    );
    assert!(
        c.acquire_role("scheduler", "n1", 20_000, 9_000)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(
        !c.acquire_role("scheduler", "n2", 30_000, 19_000)
            .await
            .unwrap()
    );
    assert!(
        c.acquire_role("scheduler", "n2", 40_000, 20_001)
            .await
            .unwrap(),
        "expired"
    );
    assert!(
        !c.acquire_role("scheduler", "n1", 50_000, 21_000)
            .await
            .unwrap()
    );
    c.release_role("scheduler", "n1").await.unwrap();
    assert!(
        !c.acquire_role("scheduler", "n1", 50_000, 21_000)
            .await
            .unwrap()
    );
    c.release_role("scheduler", "n2").await.unwrap();
    assert!(
        c.acquire_role("scheduler", "n1", 50_000, 21_000)
            .await
            .unwrap()
    );
}

/// Nonces: one use each while recorded, per key; usable again once expired
/// and forgotten (or expired and not yet forgotten).
async fn contract_nonces(c: &dyn Catalog) {
    // The catalog's clock (here on the same machine) reads about now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = c.clock_ms().await.unwrap();
    assert!((clock - now).abs() < 5_000, "{clock} vs {now}");
    assert!(c.remember_nonce("k1", "n", 1_000, 2_000).await.unwrap());
    assert!(
        !c.remember_nonce("k1", "n", 1_500, 2_500).await.unwrap(),
        "a replay"
    );
    assert!(
        c.remember_nonce("k2", "n", 1_500, 2_500).await.unwrap(),
        "per key"
    );
    // Expired at 2,000: taken again (and recorded anew until 4,000).
    assert!(c.remember_nonce("k1", "n", 2_001, 4_000).await.unwrap());
    assert!(!c.remember_nonce("k1", "n", 3_999, 5_000).await.unwrap());
    assert_eq!(c.forget_nonces(3_000).await.unwrap(), 1, "k2's");
    assert_eq!(c.forget_nonces(4_001).await.unwrap(), 1, "k1's");
    assert!(c.remember_nonce("k2", "n", 4_001, 6_000).await.unwrap());
}

async fn sqlite() -> (tempfile::TempDir, SqlCatalog) {
    let d = tempfile::tempdir().unwrap();
    let c = SqlCatalog::open(&d.path().join("catalog.db"))
        .await
        .unwrap();
    (d, c)
}

/// A fresh database `db` on a test PostgreSQL server, as a catalog.
async fn postgres(pg: &PgServer, db: &str) -> SqlCatalog {
    pg.psql(&format!("CREATE DATABASE {db}"));
    SqlCatalog::open_postgres(&pg_url(pg, db)).await.unwrap()
}

fn pg_url(pg: &PgServer, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port)
}

#[tokio::test]
async fn sqlite_catalog_schedule_contract() {
    let (_d, c) = sqlite().await;
    contract_schedule(&c).await;
}

#[tokio::test]
async fn sqlite_catalog_contract() {
    let (d, c) = sqlite().await;
    contract(&c).await;
    // Reopening keeps data and does not re-run migrations.
    drop(c);
    let c = SqlCatalog::open(&d.path().join("catalog.db"))
        .await
        .unwrap();
    assert!(c.account_by_name("alpha").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_leases() {
    let (_d, c) = sqlite().await;
    contract_leases(&c).await;
}

#[tokio::test]
async fn sqlite_nonces() {
    let (_d, c) = sqlite().await;
    contract_nonces(&c).await;
}

#[tokio::test]
async fn sqlite_download_listing() {
    let (_d, c) = sqlite().await;
    download_listing(&c).await;
}

/// The same contract on PostgreSQL: every test above, one database each
/// on one server; reopening keeps the data; three nodes opening one empty
/// database at once migrate it once.
#[tokio::test]
async fn postgres_catalog_contracts() {
    let pg = PgServer::start(PgOptions::default());
    let c = postgres(&pg, "contract").await;
    contract(&c).await;
    drop(c);
    let c = SqlCatalog::open_postgres(&pg_url(&pg, "contract"))
        .await
        .unwrap();
    assert!(c.account_by_name("alpha").await.unwrap().is_some());
    contract_schedule(&postgres(&pg, "schedule").await).await;
    contract_leases(&postgres(&pg, "leases").await).await;
    contract_nonces(&postgres(&pg, "nonces").await).await;
    download_listing(&postgres(&pg, "downloads").await).await;

    pg.psql("CREATE DATABASE racing");
    let url = pg_url(&pg, "racing");
    let nodes = futures_join3(
        SqlCatalog::open_postgres(&url),
        SqlCatalog::open_postgres(&url),
        SqlCatalog::open_postgres(&url),
    )
    .await;
    assert!(nodes.iter().all(|n| n.is_ok()));
    // Each migration applied once (9: the schema, 10: settings, 11: leases,
    // 12: an index, 13: nonces).
    assert_eq!(
        pg.psql_db(
            "racing",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
        ),
        "9,10,11,12,13"
    );
    // Two nodes racing to take over 20 expired tasks: each task once.
    let (n1, n2, n3) = (
        &nodes[0].as_ref().unwrap(),
        &nodes[1].as_ref().unwrap(),
        &nodes[2].as_ref().unwrap(),
    );
    let acc = n1.create_account("race", 1).await.unwrap();
    for _ in 0..20 {
        n1.create_task(
            &NewTask {
                node: Some("dead".into()),
                lease_until_ms: Some(1_000),
                ..NewTask::of_kind(&acc.id, TaskKind::Verify, None)
            },
            1,
        )
        .await
        .unwrap();
    }
    let (a, b) = tokio::join!(
        async {
            let mut got = Vec::new();
            while let Some(t) = n1
                .claim_expired_task("n1", 9_000_000, 2_000, &[])
                .await
                .unwrap()
            {
                got.push(t.id);
            }
            got
        },
        async {
            let mut got = Vec::new();
            while let Some(t) = n2
                .claim_expired_task("n2", 9_000_000, 2_000, &[])
                .await
                .unwrap()
            {
                got.push(t.id);
            }
            got
        }
    );
    let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!((all.len(), a.len() + b.len()), (20, 20), "{a:?} {b:?}");
    // And for a role: exactly one.
    let (r1, r2) = tokio::join!(
        n1.acquire_role("race", "n1", 10_000, 1_000),
        n2.acquire_role("race", "n2", 10_000, 1_000)
    );
    assert!(r1.unwrap() ^ r2.unwrap());
    // And for a nonce: 50 nonces, each sent to both nodes at once: every
    // one admitted by exactly one.
    for i in 0..50 {
        let n = format!("nonce-{i}");
        let (r1, r2) = tokio::join!(
            n1.remember_nonce("k", &n, 1_000, 5_000),
            n2.remember_nonce("k", &n, 1_000, 5_000)
        );
        assert!(r1.unwrap() ^ r2.unwrap(), "{n}");
    }

    // A running node (joined) keeps a key rotation out; its session's end
    // lets it in; a node cannot join while a rotation runs (its lock is the
    // rotation transaction's, taken here by hand).
    n1.join_as_node().await.unwrap();
    n1.join_as_node().await.unwrap();
    let e = n2
        .reseal_secrets(&|s| Some(s.to_vec()), "check")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CatalogError::Conflict(m) if m.contains("stop every node")),
        "{e}"
    );
    // Nothing changed.
    assert_eq!(
        n2.setting_or_insert("server_key_check", "none")
            .await
            .unwrap(),
        "none"
    );
    // The node's lock ends with its session (a crashed node's too).
    pg.psql_db(
        "racing",
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 8421",
    );
    let mut rotated = None;
    for _ in 0..50 {
        match n2.reseal_secrets(&|s| Some(s.to_vec()), "check").await {
            Ok(n) => {
                rotated = Some(n);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(
        rotated.is_some(),
        "rotation still refused after the node's session ended"
    );
    // n1 notices its session ended and joins again.
    n1.join_as_node().await.unwrap();
    assert!(
        n2.reseal_secrets(&|s| Some(s.to_vec()), "check")
            .await
            .is_err()
    );
    use sqlx::Connection;
    let mut rotation = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    pg.psql_db(
        "racing",
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 8421",
    );
    sqlx::query("SELECT pg_advisory_lock(8421)")
        .execute(&mut rotation)
        .await
        .unwrap();
    let e = n3.join_as_node().await.unwrap_err();
    assert!(e.to_string().contains("rotation is running"), "{e}");

    // A wrong password is refused without echoing it.
    let e = SqlCatalog::open_postgres(&format!(
        "postgres://nobody:hunter2secret@127.0.0.1:{}/racing",
        pg.port
    ))
    .await
    .err()
    .expect("unknown role refused")
    .to_string();
    assert!(!e.contains("hunter2secret"), "{e}");
}

async fn futures_join3<T>(
    a: impl std::future::Future<Output = T>,
    b: impl std::future::Future<Output = T>,
    c: impl std::future::Future<Output = T>,
) -> Vec<T> {
    let (a, b, c) = tokio::join!(a, b, c);
    vec![a, b, c]
}

/// The hot task queries use an index, never a scan of the table.
#[tokio::test]
async fn task_queries_use_an_index() {
    let d = tempfile::tempdir().unwrap();
    let c = SqlCatalog::open(&d.path().join("catalog.db"))
        .await
        .unwrap();
    for (shape, plan) in c.task_query_plans().await.unwrap() {
        println!("{shape}: {plan}");
        assert!(plan.contains("USING"), "{shape}: {plan}");
        if shape.starts_with("unfinished") {
            assert!(plan.contains("tasks_instance_state"), "{plan}");
        }
        assert!(
            !plan.contains("SCAN tasks") || plan.contains("USING INDEX"),
            "{shape}: {plan}"
        );
    }
}

/// Download tasks name their instance without taking its slot, and the
/// listing filters (sets, period in whole seconds, states), orders (by
/// creation or end, unfinished last) and pages (offset, limit, count) in
/// the catalog.
async fn download_listing(c: &dyn Catalog) {
    let a = c.create_account("alpha", 1).await.unwrap();
    let inst = "cmgo-aaaaaaaa";
    c.insert_instance(&instance(&a.id, inst, "m"))
        .await
        .unwrap();
    // A backup holds the slot; downloads of the same instance still start.
    let backup = NewTask::backup(&a.id, inst, TaskMode::Manual, "logical");
    c.create_task(&backup, 1_000).await.unwrap();
    let dl = |set: i64| NewTask {
        instance_id: Some(inst.into()),
        ..NewTask::of_kind(&a.id, TaskKind::Download, Some(set))
    };
    // Created at 10.5 s, 11.5 s, 12.5 s, 13.5 s; ended 20.9 s (task 0),
    // 15.2 s (task 2); task 1 failed at 14.0 s; task 3 unfinished.
    let mut ids = Vec::new();
    for i in 0..4 {
        let t = c
            .create_task(&dl(if i % 2 == 0 { 7 } else { 8 }), 10_500 + i * 1_000)
            .await
            .unwrap();
        ids.push(t.id);
    }
    let run = |id: i64, at: i64| {
        let c = &c;
        async move {
            for s in [
                TaskState::Checking,
                TaskState::Preparing,
                TaskState::Running,
            ] {
                c.set_task_state(id, s, StateUpdate::default(), at)
                    .await
                    .unwrap();
            }
        }
    };
    for (i, end) in [(0, 20_900), (2, 15_200)] {
        run(ids[i], end - 100).await;
        c.set_task_state(ids[i], TaskState::Finishing, StateUpdate::default(), end)
            .await
            .unwrap();
        c.set_task_state(ids[i], TaskState::Finished, StateUpdate::default(), end)
            .await
            .unwrap();
    }
    run(ids[1], 13_000).await;
    c.set_task_state(ids[1], TaskState::Failed, StateUpdate::default(), 14_000)
        .await
        .unwrap();
    let base = TaskFilter {
        kinds: vec![TaskKind::Download],
        instance_id: Some(inst.into()),
        ..Default::default()
    };
    let list = |f: TaskFilter| {
        let c = &c;
        let acc = a.id.clone();
        async move {
            let n = c.count_tasks(&acc, &f).await.unwrap();
            let got: Vec<i64> = c
                .list_tasks(&acc, &f)
                .await
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect();
            (n, got)
        }
    };
    let pos = |v: &[usize]| v.iter().map(|i| ids[*i]).collect::<Vec<_>>();
    assert_eq!(list(base.clone()).await, (4, pos(&[3, 2, 1, 0])));
    let f = TaskFilter {
        order: TaskOrder::OldestFirst,
        offset: Some(1),
        limit: Some(2),
        ..base.clone()
    };
    assert_eq!(list(f).await, (4, pos(&[1, 2])));
    let by_end = |o| TaskFilter {
        order: o,
        ..base.clone()
    };
    assert_eq!(
        list(by_end(TaskOrder::FinishedAsc)).await.1,
        pos(&[1, 2, 0, 3])
    );
    assert_eq!(
        list(by_end(TaskOrder::FinishedDesc)).await.1,
        pos(&[3, 0, 2, 1])
    );
    let f = TaskFilter {
        set_ids: vec![8],
        ..base.clone()
    };
    assert_eq!(list(f).await, (2, pos(&[3, 1])));
    // Whole seconds: created at 11.5 s is in the second 11.
    for from in [11_000, 11_900] {
        let f = TaskFilter {
            created_from_ms: Some(from),
            ..base.clone()
        };
        assert_eq!(list(f).await.1, pos(&[3, 2, 1]), "{from}");
    }
    // Ended in the second 15 or before (15.2 s is in it); the unfinished
    // one ends "now".
    for by in [15_000, 15_100] {
        let f = TaskFilter {
            ended_by_ms: Some((by, 99_000)),
            ..base.clone()
        };
        assert_eq!(list(f).await.1, pos(&[2, 1]), "{by}");
    }
    let f = TaskFilter {
        ended_by_ms: Some((14_999, 99_000)),
        ..base.clone()
    };
    assert_eq!(list(f).await.1, pos(&[1]));
    let f = TaskFilter {
        ended_by_ms: Some((99_000, 50_000)),
        ..base.clone()
    };
    assert_eq!(list(f).await.1, pos(&[3, 2, 1, 0]));
    let f = TaskFilter {
        states: vec![TaskState::Finished],
        order: TaskOrder::FinishedAsc,
        ..base.clone()
    };
    assert_eq!(list(f).await, (2, pos(&[2, 0])));
}
