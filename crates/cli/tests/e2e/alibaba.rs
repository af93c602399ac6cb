//! The Alibaba RPC layer over real HTTP: requests signed here with the same
//! algorithms the official SDKs use (spec §4, §5), and the unusual or broken
//! requests an SDK never sends.

use crate::harness::Stowage;
use serde_json::Value;
use stowage_api::alibaba::signature as sig;
use stowage_core::time::format_rfc3339;

pub(crate) fn now() -> String {
    format_rfc3339(stowage_service::now_ms())
}

pub(crate) fn nonce() -> String {
    stowage_service::secrets::random_uuid()
}

pub(crate) fn call(
    s: &Stowage,
    method: &str,
    query: &str,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/?{query}", s.url);
    let mut resp = if method == "GET" {
        let mut r = agent.get(&url);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.call()
    } else {
        let mut r = agent.post(&url);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.send_empty()
    }
    .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(ct, "application/json;charset=utf-8");
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert!(
        body["RequestId"].as_str().is_some_and(|r| r.len() == 36),
        "{body}"
    );
    (status, body)
}

/// Builds an RPC v1 signed query string for `params` (plus the signing ones).
pub(crate) fn rpc_query(
    method: &str,
    id: &str,
    secret: &str,
    params: &[(&str, &str)],
    ts: &str,
    nonce: &str,
) -> String {
    sig::signed_rpc_query(method, id, secret, ts, nonce, params)
}

const RDS: [(&str, &str); 3] = [
    ("Action", "DescribeBackupTasks"),
    ("Version", "2014-08-15"),
    ("DBInstanceId", "rm-uf6wjk5xxxxxxx"),
];

#[test]
fn rpc_signatures_are_verified_with_the_clouds_errors() {
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let (id, secret) = s.credentials();

    // A correctly signed request passes authentication and reaches the
    // operation, which does not know this instance.
    for m in ["POST", "GET"] {
        let (st, b) = call(
            &s,
            m,
            &rpc_query(m, &id, &secret, &RDS, &now(), &nonce()),
            &[],
        );
        assert_eq!(
            (st, b["Code"].as_str()),
            (404, Some("InvalidDBInstanceId.NotFound")),
            "{b}"
        );
        assert_eq!(b["HostId"], "rds.aliyuncs.com");
        assert!(b["Recommend"].is_string() && b["Message"].is_string());
    }
    // Wrong secret: 400 SignatureDoesNotMatch with the server's string to sign after ':'.
    let ts = now();
    let n = nonce();
    let (st, b) = call(
        &s,
        "POST",
        &rpc_query("POST", &id, "wrong-secret", &RDS, &ts, &n),
        &[],
    );
    assert_eq!(
        (st, b["Code"].as_str()),
        (400, Some("SignatureDoesNotMatch")),
        "{b}"
    );
    let msg = b["Message"].as_str().unwrap();
    let server_sts = msg.split_once(':').unwrap().1;
    assert!(server_sts.starts_with("POST&%2F&AccessKeyId%3D"), "{msg}");
    assert!(!msg.contains(&secret), "the secret must never be echoed");
    // Unknown key.
    let (st, b) = call(
        &s,
        "POST",
        &rpc_query("POST", "STWKNOSUCHKEY", &secret, &RDS, &now(), &nonce()),
        &[],
    );
    assert_eq!(
        (st, b["Code"].as_str()),
        (404, Some("InvalidAccessKeyId.NotFound"))
    );
    // Stale timestamp (20 minutes old).
    let old = format_rfc3339(stowage_service::now_ms() - 20 * 60 * 1000);
    let (st, b) = call(
        &s,
        "POST",
        &rpc_query("POST", &id, &secret, &RDS, &old, &nonce()),
        &[],
    );
    assert_eq!(
        (st, b["Code"].as_str()),
        (400, Some("InvalidTimeStamp.Expired"))
    );
    // Replayed nonce.
    let q = rpc_query("POST", &id, &secret, &RDS, &now(), &nonce());
    assert_eq!(
        call(&s, "POST", &q, &[]).1["Code"],
        "InvalidDBInstanceId.NotFound"
    );
    let (st, b) = call(&s, "POST", &q, &[]);
    assert_eq!((st, b["Code"].as_str()), (400, Some("SignatureNonceUsed")));
    // Missing signing parameters, unknown version.
    let (st, b) = call(
        &s,
        "POST",
        "Action=DescribeBackupTasks&Version=2014-08-15",
        &[],
    );
    assert_eq!(
        (st, b["Code"].as_str()),
        (400, Some("MissingParameter")),
        "{b}"
    );
    let unknown_action = [("Action", "DescribeNothing"), ("Version", "2014-08-15")];
    let (st, b) = call(
        &s,
        "POST",
        &rpc_query("POST", &id, &secret, &unknown_action, &now(), &nonce()),
        &[],
    );
    assert_eq!(
        (st, b["Code"].as_str()),
        (404, Some("InvalidAction.NotFound"))
    );
    let bad_version = [("Action", "DescribeBackupTasks"), ("Version", "2099-01-01")];
    let (st, b) = call(
        &s,
        "POST",
        &rpc_query("POST", &id, &secret, &bad_version, &now(), &nonce()),
        &[],
    );
    assert_eq!((st, b["Code"].as_str()), (400, Some("InvalidVersion")));
}

#[test]
fn acs3_signatures_are_verified() {
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let (id, secret) = s.credentials();
    let host = s.url.trim_start_matches("http://").to_string();
    let signed_request = |secret: &str, date: String| -> (String, Vec<(&'static str, String)>) {
        let query = vec![
            ("DBInstanceId".to_string(), "rm-uf6wjk5xxxxxxx".to_string()),
            ("ClientToken".to_string(), "tok en/ü*~".to_string()),
        ];
        let headers: Vec<(&'static str, String)> = vec![
            ("host", host.clone()),
            ("x-acs-action", "DescribeBackupTasks".into()),
            ("x-acs-version", "2014-08-15".into()),
            ("x-acs-date", date),
            ("x-acs-signature-nonce", nonce()),
            ("accept", "application/json".into()),
            ("x-acs-content-sha256", sig::EMPTY_SHA256.into()),
        ];
        let mut signed: Vec<String> = headers.iter().map(|(k, _)| k.to_string()).collect();
        signed.sort();
        let hs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let cr = sig::acs3_canonical_request("POST", "/", &query, &hs, &signed, sig::EMPTY_SHA256)
            .unwrap();
        let signature = sig::acs3_signature(secret, &sig::acs3_string_to_sign(&cr));
        let mut headers = headers;
        headers.push((
            "authorization",
            format!(
                "ACS3-HMAC-SHA256 Credential={id},SignedHeaders={},Signature={signature}",
                signed.join(";")
            ),
        ));
        let q = query
            .iter()
            .map(|(k, v)| format!("{}={}", sig::encode(k), sig::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        (
            q,
            headers.into_iter().filter(|(k, _)| *k != "host").collect(),
        )
    };
    let (q, h) = signed_request(&secret, now());
    let (st, b) = call(&s, "POST", &q, &h);
    assert_eq!(
        (st, b["Code"].as_str()),
        (404, Some("InvalidDBInstanceId.NotFound")),
        "{b}"
    );
    let (q, h) = signed_request("wrong", now());
    let (st, b) = call(&s, "POST", &q, &h);
    assert_eq!(
        (st, b["Code"].as_str()),
        (400, Some("SignatureDoesNotMatch")),
        "{b}"
    );
    assert!(
        b["Message"]
            .as_str()
            .unwrap()
            .contains(":ACS3-HMAC-SHA256\n")
    );
    let (q, h) = signed_request(
        &secret,
        format_rfc3339(stowage_service::now_ms() + 16 * 60 * 1000),
    );
    assert_eq!(
        call(&s, "POST", &q, &h).1["Code"],
        "InvalidTimeStamp.Expired"
    );
    let (q, mut h) = signed_request(&secret, now());
    h.retain(|(k, _)| *k != "authorization");
    h.push(("authorization", "ACS3-HMAC-SHA256 garbage".into()));
    let (st, b) = call(&s, "POST", &q, &h);
    assert_eq!((st, b["Code"].as_str()), (400, Some("IncompleteSignature")));
}

/// Two accounts on one server: each key sees only its own account's
/// instances, through the REST API and through the cloud dialect; key
/// lifecycle (disable, enable, delete) and admin-only operations.
#[test]
fn accounts_are_isolated_and_keys_can_be_managed() {
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let (admin_id, admin_secret) = s.credentials();
    s.ok(&["account", "add", "team-b"]);
    let kb = s.json(&[
        "key",
        "create",
        "--account",
        "team-b",
        "--description",
        "ci",
    ]);
    let (b_id, b_secret) = (
        kb["access_key_id"].as_str().unwrap().to_string(),
        kb["access_key_secret"].as_str().unwrap().to_string(),
    );
    let a1 = s.json(&[
        "instance",
        "add",
        "--name",
        "a1",
        "--port",
        "5432",
        "--no-check",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = s.cli_as(
        &b_id,
        &b_secret,
        &[
            "instance",
            "add",
            "--name",
            "b1",
            "--port",
            "5432",
            "--no-check",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b1 = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // REST: B sees only b1; A's instance does not exist for B.
    let (st, v) = s.http_as(&b_id, &b_secret, "GET", "/v1/instances", None);
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b1.as_str()]);
    assert_eq!(
        s.http_as(
            &b_id,
            &b_secret,
            "GET",
            &format!("/v1/instances/{a1}"),
            None
        )
        .0,
        404
    );
    assert_eq!(
        s.http_as(
            &b_id,
            &b_secret,
            "POST",
            &format!("/v1/instances/{a1}/backups"),
            None
        )
        .0,
        404
    );
    // Admin-only operations.
    let (st, v) = s.http_as(
        &b_id,
        &b_secret,
        "POST",
        "/v1/accounts",
        Some(r#"{"name":"evil"}"#),
    );
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("Forbidden")));
    assert_eq!(
        s.http_as(&b_id, &b_secret, "GET", "/v1/accounts/default/keys", None)
            .0,
        403
    );
    let (st, v) = s.http_as(&b_id, &b_secret, "GET", "/v1/keys", None);
    assert_eq!((st, v["keys"].as_array().unwrap().len()), (200, 1));
    assert!(
        !v.to_string().contains(&b_secret),
        "a listing must never show secrets"
    );

    // Cloud dialect: the same isolation.
    let rpc = |id: &str, secret: &str, inst: &str| {
        let p = [
            ("Action", "DescribeBackupTasks"),
            ("Version", "2014-08-15"),
            ("DBInstanceId", inst),
        ];
        call(
            &s,
            "POST",
            &rpc_query("POST", id, secret, &p, &now(), &nonce()),
            &[],
        )
    };
    let (st, v) = rpc(&b_id, &b_secret, &b1);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["Items"]["BackupJob"], serde_json::json!([]));
    assert_eq!(
        rpc(&b_id, &b_secret, &a1).1["Code"],
        "InvalidDBInstanceId.NotFound"
    );
    assert_eq!(
        rpc(&admin_id, &admin_secret, &b1).1["Code"],
        "InvalidDBInstanceId.NotFound"
    );

    // Disable, enable, delete.
    s.ok(&["key", "disable", &b_id]);
    let (st, v) = s.http_as(&b_id, &b_secret, "GET", "/v1/instances", None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("KeyDisabled"))
    );
    let (st, v) = rpc(&b_id, &b_secret, &b1);
    assert_eq!(
        (st, v["Code"].as_str()),
        (400, Some("InvalidAccessKeyId.Inactive"))
    );
    s.ok(&["key", "enable", &b_id]);
    assert_eq!(rpc(&b_id, &b_secret, &b1).0, 200);
    let own = s.cli(&["key", "delete", &admin_id]);
    assert_eq!(
        own.status.code(),
        Some(2),
        "deleting the key in use is refused"
    );
    s.ok(&["key", "delete", &b_id]);
    assert_eq!(
        s.http_as(&b_id, &b_secret, "GET", "/v1/instances", None).0,
        401
    );
    assert_eq!(
        rpc(&b_id, &b_secret, &b1).1["Code"],
        "InvalidAccessKeyId.NotFound"
    );
    assert!(!s.log().contains(&b_secret), "secret in the server log");
}

#[test]
fn per_key_throttling() {
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start_with(&work.path().join("stowage"), &["--rate-per-key", "5"]);
    let (id, secret) = s.credentials();
    let p = [("Action", "DescribeNothing"), ("Version", "2014-08-15")];
    let codes: Vec<String> = (0..12)
        .map(|_| {
            call(
                &s,
                "POST",
                &rpc_query("POST", &id, &secret, &p, &now(), &nonce()),
                &[],
            )
            .1["Code"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        codes.iter().any(|c| c == "InvalidAction.NotFound"),
        "{codes:?}"
    );
    assert!(codes.iter().any(|c| c == "Throttling.User"), "{codes:?}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let q = rpc_query("POST", &id, &secret, &p, &now(), &nonce());
    let r = agent.post(&format!("{}/?{q}", s.url)).send_empty().unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("x-acs-retry-after").is_some());
}

/// A key limited by a RAM-style policy: allowed calls pass, others get
/// 403 `Forbidden.RAM` with an `AccessDeniedDetail`; an explicit deny wins;
/// the REST API refuses such a key; bad documents are refused.
#[test]
fn ram_policy_limits_a_key() {
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let inst = |name: &str| {
        s.json(&[
            "instance",
            "add",
            "--name",
            name,
            "--port",
            "5432",
            "--dialect",
            "rds",
            "--no-check",
        ])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (inst("a"), inst("b"));
    let k = s.json(&["key", "create", "--description", "read-only a"]);
    let (id, secret) = (
        k["access_key_id"].as_str().unwrap().to_string(),
        k["access_key_secret"].as_str().unwrap().to_string(),
    );
    let doc = serde_json::json!({"Version": "1", "Statement": [
        {"Effect": "Allow", "Action": ["rds:Describe*", "rds:CreateBackup"], "Resource": format!("acs:rds:*:*:dbinstance/{a}")},
        {"Effect": "Allow", "Action": "rds:DescribeDBInstances", "Resource": "*"},
        {"Effect": "Deny", "Action": "rds:CreateBackup", "Resource": "*"},
    ]});
    let f = work.path().join("policy.json");
    std::fs::write(&f, doc.to_string()).unwrap();
    s.ok(&["key", "policy", &id, "--file", f.to_str().unwrap()]);
    let listed = s.json(&["key", "list"]);
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["access_key_id"] == id.as_str() && x["policy"] == doc),
        "{listed}"
    );
    let rpc = |action: &str, instance: &str| {
        let q = rpc_query(
            "GET",
            &id,
            &secret,
            &[
                ("Action", action),
                ("Version", "2014-08-15"),
                ("DBInstanceId", instance),
            ],
            &now(),
            &nonce(),
        );
        call(&s, "GET", &q, &[])
    };
    let (st, v) = rpc("DescribeBackupTasks", &a);
    assert_eq!(st, 200, "{v}");
    let (st, v) = rpc("DescribeDBInstances", "");
    assert_eq!((st, v["TotalRecordCount"].as_u64()), (200, Some(2)), "{v}");
    // Not allowed on b: an implicit deny, the same whether b exists or not.
    for other in [b.as_str(), "rm-doesnotexist0000"] {
        let (st, v) = rpc("DescribeBackupTasks", other);
        assert_eq!(
            (st, v["Code"].as_str()),
            (403, Some("Forbidden.RAM")),
            "{v}"
        );
        let d = &v["AccessDeniedDetail"];
        assert_eq!(d["NoPermissionType"], "ImplicitDeny", "{v}");
        assert_eq!(d["AuthAction"], "rds:DescribeBackupTasks");
        assert_eq!(d["AuthPrincipalDisplayName"], id.as_str());
    }
    // Allowed by one statement, denied by another: the deny wins.
    let (st, v) = rpc("CreateBackup", &a);
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["AccessDeniedDetail"]["NoPermissionType"], "ExplicitDeny");
    // The REST API refuses a limited key outright.
    let o = s.cli_as(&id, &secret, &["instance", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("RAM policy"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Bad documents are refused with the reason; the key keeps its policy.
    for bad in [
        "not json",
        r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Condition":{}}]}"#,
        r#"{"Version":"2","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
    ] {
        std::fs::write(&f, bad).unwrap();
        let o = s.cli(&["key", "policy", &id, "--file", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
    }
    assert_eq!(rpc("DescribeBackupTasks", &b).0, 403);
    // Lifted: everything the account may do.
    s.ok(&["key", "policy", &id, "--clear"]);
    assert_eq!(rpc("DescribeBackupTasks", &b).0, 200);
    assert!(!s.log().contains(&secret));
}
