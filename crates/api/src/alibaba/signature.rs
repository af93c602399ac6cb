//! Both request signatures of Alibaba Cloud's RPC APIs, server side.
//!
//! * RPC HMAC-SHA1 ("signature v1", spec §4): the core SDK, and the Tea SDK
//!   with `signature_algorithm='v2'`. The signature is a query parameter.
//! * ACS3-HMAC-SHA256 ("signature v3", spec §5): the Tea SDK's default. The
//!   signature is in the `Authorization` header.
//!
//! Pure functions over decoded parameters and headers, so the worked
//! examples of the spec are unit tests, plus the two checks the real service
//! makes around them: a timestamp window and nonce replay.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};

/// RFC 3986: everything but `A-Z a-z 0-9 - _ . ~` is encoded.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping `/` (canonical URI).
const RFC3986_PATH: &AsciiSet = &RFC3986.remove(b'/');

/// SHA-256 of the empty body, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How far a request's time may be from the server's (the cloud's rule).
pub const MAX_SKEW_MS: i64 = 15 * 60 * 1000;

pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// Decodes an `application/x-www-form-urlencoded` string (`+` is a space).
/// `None` when a value is not valid UTF-8.
pub fn decode_form(s: &str) -> Option<Vec<(String, String)>> {
    let dec = |p: &str| -> Option<String> {
        let p = p.replace('+', " ");
        percent_decode_str(&p)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

/// Sorted `name=value` pairs, each part RFC 3986-encoded, joined with `&`.
fn canonical_query<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut p: Vec<(String, String)> = params.map(|(k, v)| (encode(k), encode(v))).collect();
    p.sort();
    p.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RPC v1 string to sign: `METHOD&%2F&encode(canonical query)`, over every
/// parameter but `Signature`.
pub fn rpc_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let q = canonical_query(
        params
            .iter()
            .filter(|(k, _)| k != "Signature")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    format!("{}&%2F&{}", method.to_ascii_uppercase(), encode(&q))
}

/// RPC v1 signature: Base64(HMAC-SHA1(secret + "&", string to sign)).
pub fn rpc_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A query string (or form body) as an RPC client sends it with `method`:
/// `params` with the common signature parameters (HMAC-SHA1, the given
/// timestamp and nonce, JSON) and the signature. For benchmarks and tests
/// that speak RPC without an SDK.
pub fn signed_rpc_query(
    method: &str,
    key_id: &str,
    secret: &str,
    timestamp: &str,
    nonce: &str,
    params: &[(&str, &str)],
) -> String {
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("AccessKeyId", key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
        ("Format", "JSON"),
    ] {
        all.push((k.into(), v.into()));
    }
    let s = rpc_signature(secret, &rpc_string_to_sign(method, &all));
    all.push(("Signature".into(), s));
    all.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The parts of an `Authorization: ACS3-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acs3Authorization {
    pub access_key_id: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_acs3_authorization(h: &str) -> Option<Acs3Authorization> {
    let rest = h.strip_prefix("ACS3-HMAC-SHA256 ")?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => cred = Some(v.to_string()),
            "SignedHeaders" => {
                signed = Some(v.split(';').map(|s| s.to_ascii_lowercase()).collect())
            }
            "Signature" => sig = Some(v.to_ascii_lowercase()),
            _ => return None,
        }
    }
    Some(Acs3Authorization {
        access_key_id: cred.filter(|c| !c.is_empty())?,
        signed_headers: signed?,
        signature: sig.filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))?,
    })
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The ACS3 canonical request. `headers` are (lower-case name, value) as
/// received; `None` when a signed header is missing.
pub fn acs3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    signed_headers: &[String],
    payload_hash: &str,
) -> Option<String> {
    let uri = utf8_percent_encode(path, RFC3986_PATH).to_string();
    let q = canonical_query(query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut canon = String::new();
    for name in signed_headers {
        let mut values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort();
        canon.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Some(format!(
        "{}\n{uri}\n{q}\n{canon}\n{}\n{payload_hash}",
        method.to_ascii_uppercase(),
        signed_headers.join(";")
    ))
}

pub fn acs3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// ACS3 signature: hex HMAC-SHA256(secret, string to sign).
pub fn acs3_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two signatures without leaking where they differ.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `Timestamp` / `x-acs-date` check: within [`MAX_SKEW_MS`] of `now_ms`.
pub fn timestamp_ok(ts: &str, now_ms: i64) -> bool {
    stowage_core::time::parse_rfc3339(ts).is_some_and(|t| (t - now_ms).abs() <= MAX_SKEW_MS)
}

/// Remembers nonces for the timestamp window, to refuse replays.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl NonceCache {
    /// Records `(key id, nonce)` at `now_ms`; false when it was seen within
    /// the window (a replay).
    pub fn check_and_insert(&mut self, key_id: &str, nonce: &str, now_ms: i64) -> bool {
        while let Some((t, _)) = self.order.front() {
            if now_ms - *t > 2 * MAX_SKEW_MS {
                let (_, k) = self.order.pop_front().expect("front exists");
                self.seen.remove(&k);
            } else {
                break;
            }
        }
        let k = format!("{key_id}\n{nonce}");
        if self.seen.contains_key(&k) {
            return false;
        }
        self.seen.insert(k.clone(), now_ms);
        self.order.push_back((now_ms, k));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    /// Spec §4, worked example.
    #[test]
    fn rpc_v1_worked_example() {
        let params = vec![
            p("AccessKeyId", "testid"),
            p("Action", "DescribeBackupTasks"),
            p("BackupJobId", "4762614"),
            p("ClientToken", "tok en/ü*~"),
            p("DBInstanceId", "rm-uf6wjk5xxxxxxx"),
            p("Format", "JSON"),
            p("RegionId", "cn-hangzhou"),
            p("SignatureMethod", "HMAC-SHA1"),
            p("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            p("SignatureType", ""),
            p("SignatureVersion", "1.0"),
            p("Timestamp", "2024-01-16T11:04:56Z"),
            p("Version", "2014-08-15"),
            p("Signature", "ignored in the string to sign"),
        ];
        let sts = rpc_string_to_sign("POST", &params);
        assert_eq!(
            sts,
            "POST&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeBackupTasks%26BackupJobId%3D4762614%26ClientToken%3Dtok%2520en%252F%25C3%25BC%252A~%26DBInstanceId%3Drm-uf6wjk5xxxxxxx%26Format%3DJSON%26RegionId%3Dcn-hangzhou%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureType%3D%26SignatureVersion%3D1.0%26Timestamp%3D2024-01-16T11%253A04%253A56Z%26Version%3D2014-08-15"
        );
        assert_eq!(
            rpc_signature("testsecret", &sts),
            "5DApkcbmlaEgyPbI3s5Zr7MsXvE="
        );
    }

    /// Spec §5, worked example.
    #[test]
    fn acs3_worked_example() {
        let query = vec![
            p("DBInstanceId", "rm-uf6wjk5xxxxxxx"),
            p("BackupJobId", "4762614"),
            p("ClientToken", "tok en/ü*~"),
        ];
        let headers = vec![
            p("host", "rds.aliyuncs.com"),
            p("x-acs-action", "DescribeBackupTasks"),
            p("x-acs-version", "2014-08-15"),
            p("x-acs-date", "2024-01-16T11:04:56Z"),
            p("x-acs-signature-nonce", "3ee8c1b883d344afa94f4e0ad82fd6cf"),
            p("accept", "application/json"),
            p("x-acs-content-sha256", EMPTY_SHA256),
            p("user-agent", "not signed"),
        ];
        let header = "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=accept;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=655de981ec5eb675ebea6464bd887783abda0445e1227fe19dcb2b9cb04950f8";
        let auth = parse_acs3_authorization(header).unwrap();
        assert_eq!(auth.access_key_id, "testid");
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
        let cr = acs3_canonical_request(
            "POST",
            "/",
            &query,
            &headers,
            &auth.signed_headers,
            EMPTY_SHA256,
        )
        .unwrap();
        assert_eq!(
            cr,
            "POST\n/\nBackupJobId=4762614&ClientToken=tok%20en%2F%C3%BC%2A~&DBInstanceId=rm-uf6wjk5xxxxxxx\n\
             accept:application/json\nhost:rds.aliyuncs.com\nx-acs-action:DescribeBackupTasks\n\
             x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-acs-date:2024-01-16T11:04:56Z\nx-acs-signature-nonce:3ee8c1b883d344afa94f4e0ad82fd6cf\n\
             x-acs-version:2014-08-15\n\n\
             accept;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = acs3_string_to_sign(&cr);
        assert_eq!(
            sts,
            "ACS3-HMAC-SHA256\n1ae715a38653644ec4c3bf58328cd58a423d832d9014194f88708a2f79e48f70"
        );
        assert!(signatures_equal(
            &acs3_signature("testsecret", &sts),
            &auth.signature
        ));
        // A missing signed header cannot verify.
        assert!(
            acs3_canonical_request(
                "POST",
                "/",
                &query,
                &headers[1..],
                &auth.signed_headers,
                EMPTY_SHA256
            )
            .is_none()
        );
    }

    #[test]
    fn malformed_authorization_headers() {
        for bad in [
            "",
            "ACS3-HMAC-SHA256",
            "ACS3-HMAC-SHA256 Credential=,SignedHeaders=host,Signature=00",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=zz",
            "HMAC-SHA1 Credential=a,SignedHeaders=host,Signature=655de981ec5eb675ebea6464bd887783abda0445e1227fe19dcb2b9cb04950f8",
            "ACS3-HMAC-SHA256 Credential=a,Bogus=1,Signature=655de981ec5eb675ebea6464bd887783abda0445e1227fe19dcb2b9cb04950f8",
        ] {
            assert!(parse_acs3_authorization(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            decode_form("a=b+c&ClientToken=tok%20en%2F%C3%BC%2A~&empty=&flag").unwrap(),
            vec![
                p("a", "b c"),
                p("ClientToken", "tok en/ü*~"),
                p("empty", ""),
                p("flag", "")
            ]
        );
        assert!(decode_form("a=%FF").is_none());
    }

    #[test]
    fn timestamps_and_replays() {
        let now = stowage_core::time::parse_rfc3339("2024-01-16T11:04:56Z").unwrap();
        assert!(timestamp_ok("2024-01-16T11:04:56Z", now));
        assert!(timestamp_ok("2024-01-16T11:19:56Z", now));
        assert!(!timestamp_ok("2024-01-16T11:20:57Z", now));
        assert!(!timestamp_ok("2024-01-16T10:49:55Z", now));
        assert!(!timestamp_ok("yesterday", now));
        let mut c = NonceCache::default();
        assert!(c.check_and_insert("k", "n1", now));
        assert!(!c.check_and_insert("k", "n1", now + 1000), "replay refused");
        assert!(c.check_and_insert("other", "n1", now), "nonces are per key");
        assert!(
            c.check_and_insert("k", "n1", now + 3 * MAX_SKEW_MS),
            "forgotten after the window"
        );
        assert_eq!(c.len(), 1);
    }

    fn param() -> impl Strategy<Value = (String, String)> {
        ("[A-Za-z][A-Za-z0-9.]{0,12}", "\\PC{0,20}").prop_map(|(k, v)| (k, v))
    }

    proptest! {
        /// Anything signed with these functions verifies, and any change to
        /// a value makes it fail (RPC v1), whatever the characters.
        #[test]
        fn rpc_sign_then_verify(params in proptest::collection::vec(param(), 1..8), secret in "[A-Za-z0-9]{8,40}") {
            let mut params = params;
            params.sort();
            params.dedup_by(|a, b| a.0 == b.0);
            let sig = rpc_signature(&secret, &rpc_string_to_sign("POST", &params));
            // Round trip through the wire form, as a server receives it.
            let wire: String = params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
            let received = decode_form(&format!("{wire}&Signature={}", encode(&sig))).unwrap();
            let got = received.iter().find(|(k, _)| k == "Signature").unwrap().1.clone();
            prop_assert!(signatures_equal(&got, &rpc_signature(&secret, &rpc_string_to_sign("POST", &received))));
            let mut tampered = received.clone();
            tampered[0].1.push('x');
            prop_assert!(!signatures_equal(&got, &rpc_signature(&secret, &rpc_string_to_sign("POST", &tampered))));
            prop_assert!(!signatures_equal(&got, &rpc_signature(&secret, &rpc_string_to_sign("GET", &received))));
        }

        /// The same for ACS3 over query and signed headers.
        #[test]
        fn acs3_sign_then_verify(query in proptest::collection::vec(param(), 0..6), secret in "[A-Za-z0-9]{8,40}", date in "[0-9]{4}") {
            let headers = vec![p("host", "127.0.0.1:8420"), p("x-acs-date", &date), p("x-acs-content-sha256", EMPTY_SHA256)];
            let signed: Vec<String> = vec!["host".into(), "x-acs-content-sha256".into(), "x-acs-date".into()];
            let cr = acs3_canonical_request("POST", "/", &query, &headers, &signed, EMPTY_SHA256).unwrap();
            let sig = acs3_signature(&secret, &acs3_string_to_sign(&cr));
            let header = format!("ACS3-HMAC-SHA256 Credential=id,SignedHeaders={},Signature={sig}", signed.join(";"));
            let auth = parse_acs3_authorization(&header).unwrap();
            let cr2 = acs3_canonical_request("POST", "/", &query, &headers, &auth.signed_headers, EMPTY_SHA256).unwrap();
            prop_assert!(signatures_equal(&auth.signature, &acs3_signature(&secret, &acs3_string_to_sign(&cr2))));
            let mut h2 = headers.clone();
            h2[1].1.push('1');
            let cr3 = acs3_canonical_request("POST", "/", &query, &h2, &auth.signed_headers, EMPTY_SHA256).unwrap();
            prop_assert!(!signatures_equal(&auth.signature, &acs3_signature(&secret, &acs3_string_to_sign(&cr3))));
        }
    }
}
