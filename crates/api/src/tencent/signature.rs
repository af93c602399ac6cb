//! Both request signatures of Tencent Cloud API 3.0, server side
//! (`../shared/spec/tencent-tc3.md` §4–§5):
//!
//! * TC3-HMAC-SHA256: the SDK's and tccli's default. The signature is in
//!   the `Authorization` header; the canonical request covers the headers
//!   named in `SignedHeaders` (values as sent: tccli sends and signs
//!   `Host: http://127.0.0.1:PORT`), the raw query string of a GET as it
//!   arrived, and the SHA-256 of the body bytes as received.
//! * The legacy HmacSHA1/HmacSHA256 signature (`SignatureMethod`): the
//!   sorted, *unencoded* parameters after `METHOD` + host + `/?`.
//!
//! Pure functions, so the spec's worked examples are unit tests; the
//! timestamp window is the cloud's 5 minutes.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// How far a request's `X-TC-Timestamp`/`Timestamp` may be from the
/// server's clock (the cloud's rule).
pub const MAX_SKEW_SECS: i64 = 300;

/// A parsed `Authorization: TC3-HMAC-SHA256 Credential=…, SignedHeaders=…,
/// Signature=…` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tc3Authorization {
    pub secret_id: String,
    /// The credential scope's date (`YYYY-MM-DD`), service and terminator.
    pub date: String,
    pub service: String,
    /// Lower-case header names, in the order given.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses a TC3 `Authorization` header; `None` if it is not one.
pub fn parse_tc3_authorization(h: &str) -> Option<Tc3Authorization> {
    let rest = h.strip_prefix("TC3-HMAC-SHA256 ")?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => cred = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => return None,
        }
    }
    let mut scope = cred?.splitn(4, '/');
    let secret_id = scope.next()?.to_string();
    let date = scope.next()?.to_string();
    let service = scope.next()?.to_string();
    if scope.next()? != "tc3_request" || secret_id.is_empty() || service.is_empty() {
        return None;
    }
    let signed_headers: Vec<String> = signed?.split(';').map(|s| s.to_ascii_lowercase()).collect();
    let signature = sig?.to_string();
    if signed_headers.iter().any(|s| s.is_empty())
        || signature.len() != 64
        || !signature.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(Tc3Authorization {
        secret_id,
        date,
        service,
        signed_headers,
        signature,
    })
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The canonical request: `method`, `/`, the raw query string (GET) or
/// empty (POST), `name:value\n` for each signed header (`headers`: lower
/// case names and values as sent, in `SignedHeaders` order), the signed
/// header names, and the payload's hash.
pub fn tc3_canonical_request(
    method: &str,
    raw_query: &str,
    headers: &[(String, String)],
    payload_sha256: &str,
) -> String {
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    format!(
        "{method}\n/\n{raw_query}\n{canonical_headers}\n{}\n{payload_sha256}",
        signed.join(";")
    )
}

pub fn tc3_string_to_sign(timestamp: &str, date: &str, service: &str, canonical: &str) -> String {
    format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// `kSigning` of the spec: HMAC chain over the date, service and
/// `tc3_request`, keyed with `"TC3" + secret`.
pub fn tc3_signing_key(secret: &str, date: &str, service: &str) -> [u8; 32] {
    let k_date = hmac256(format!("TC3{secret}").as_bytes(), date.as_bytes());
    let k_service = hmac256(&k_date, service.as_bytes());
    hmac256(&k_service, b"tc3_request")
}

pub fn tc3_signature(secret: &str, date: &str, service: &str, string_to_sign: &str) -> String {
    hex::encode(hmac256(
        &tc3_signing_key(secret, date, service),
        string_to_sign.as_bytes(),
    ))
}

/// The UTC date (`YYYY-MM-DD`) of a Unix timestamp.
pub fn utc_date(unix_secs: i64) -> String {
    stowage_core::time::format_rfc3339(unix_secs * 1000)[..10].to_string()
}

/// Whether `ts` (Unix seconds, as sent) is within the window of `now_ms`.
pub fn timestamp_ok(ts: &str, now_ms: i64) -> bool {
    ts.parse::<i64>()
        .is_ok_and(|t| (t * 1000 - now_ms).abs() <= MAX_SKEW_SECS * 1000)
}

/// The legacy string to sign: `METHOD` + host + `/?` + the parameters
/// (decoded; `Signature` left out) sorted by name as `name=value` with the
/// raw values, joined with `&`. Names have `_` as `.` (the SDK's rule).
pub fn legacy_string_to_sign(method: &str, host: &str, params: &[(String, String)]) -> String {
    let mut p: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (k.replace('_', "."), v.as_str()))
        .collect();
    p.sort();
    let joined: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method}{host}/?{}", joined.join("&"))
}

/// Base64 of HMAC-SHA1 or HMAC-SHA256 (`method`) of the string to sign,
/// keyed with the plain secret; `None` for another method.
pub fn legacy_signature(method: &str, secret: &str, string_to_sign: &str) -> Option<String> {
    let mac = match method {
        "HmacSHA256" => hmac256(secret.as_bytes(), string_to_sign.as_bytes()).to_vec(),
        "HmacSHA1" => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key");
            m.update(string_to_sign.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(mac))
}

/// Constant-time comparison of two signatures.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    crate::alibaba::signature::signatures_equal(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §4, worked example: every intermediate value.
    #[test]
    fn tc3_worked_example() {
        let body = br#"{"InstanceId": "cmgo-dygv1rnp", "Status": [2]}"#;
        assert_eq!(body.len(), 46);
        let payload = sha256_hex(body);
        assert_eq!(
            payload,
            "59f4a6199a8db19a11a99bad357505e354afe92e1ac003aa4d469338ad925900"
        );
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "host".to_string(),
                "mongodb.tencentcloudapi.com".to_string(),
            ),
        ];
        let canonical = tc3_canonical_request("POST", "", &headers, &payload);
        assert_eq!(
            canonical,
            "POST\n/\n\ncontent-type:application/json\nhost:mongodb.tencentcloudapi.com\n\ncontent-type;host\n59f4a6199a8db19a11a99bad357505e354afe92e1ac003aa4d469338ad925900"
        );
        let date = utc_date(1705403096);
        assert_eq!(date, "2024-01-16");
        let sts = tc3_string_to_sign("1705403096", &date, "mongodb", &canonical);
        assert_eq!(
            sts,
            "TC3-HMAC-SHA256\n1705403096\n2024-01-16/mongodb/tc3_request\na70365cd19f567ed6f34ed20ca96a156c216be0e71cacf75ddcc2f2196a48ab0"
        );
        let k_date = hmac256(b"TC3testsecret", b"2024-01-16");
        assert_eq!(
            hex::encode(k_date),
            "a9301cf535c495a4a3f855e96c25c413d963ba55dcf66edacaf7d0f45aa48213"
        );
        let k_service = hmac256(&k_date, b"mongodb");
        assert_eq!(
            hex::encode(k_service),
            "5efa4a969e676aae2318bb1207a552894ef5fe4c47c0a098c6537a38bfa981fd"
        );
        assert_eq!(
            hex::encode(tc3_signing_key("testsecret", "2024-01-16", "mongodb")),
            "c55fe984c4edaef385d7266fb73131d23c4cf7b58cbc6b8b635a028060878fcb"
        );
        let sig = tc3_signature("testsecret", &date, "mongodb", &sts);
        assert_eq!(
            sig,
            "2271c6b95141f8811f4cde63515b84b2fd7c164bb83ffa01189ac259d8510b9b"
        );
        let a = parse_tc3_authorization(&format!(
            "TC3-HMAC-SHA256 Credential=testid/2024-01-16/mongodb/tc3_request, SignedHeaders=content-type;host, Signature={sig}"
        ))
        .unwrap();
        assert_eq!(
            a,
            Tc3Authorization {
                secret_id: "testid".into(),
                date: "2024-01-16".into(),
                service: "mongodb".into(),
                signed_headers: vec!["content-type".into(), "host".into()],
                signature: sig.clone(),
            }
        );
        assert!(signatures_equal(&a.signature, &sig));
        assert!(!signatures_equal(&a.signature, &sig.replace('2', "3")));
    }

    /// A GET signs the raw query as it arrived (its `+` and its order), and
    /// tccli's `Host: http://127.0.0.1:PORT` as sent.
    #[test]
    fn tc3_get_keeps_the_raw_query_and_host() {
        let q = "InstanceId=cmgo-dygv1rnp&BackupName=cmgo-dygv1rnp_2021-03-26+10%3A44&Limit=20&Status.0=2&Status.1=3";
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("host".to_string(), "http://127.0.0.1:8080".to_string()),
        ];
        let c = tc3_canonical_request("GET", q, &headers, &sha256_hex(b""));
        assert!(c.starts_with(&format!("GET\n/\n{q}\n")), "{c}");
        assert!(c.contains("host:http://127.0.0.1:8080\n"), "{c}");
        // A different order is a different request.
        let other = tc3_canonical_request(
            "GET",
            "Limit=20&InstanceId=cmgo-dygv1rnp&BackupName=cmgo-dygv1rnp_2021-03-26+10%3A44&Status.0=2&Status.1=3",
            &headers,
            &sha256_hex(b""),
        );
        assert_ne!(c, other);
    }

    #[test]
    fn malformed_authorizations_are_refused() {
        let ok = "TC3-HMAC-SHA256 Credential=id/2024-01-16/mongodb/tc3_request, SignedHeaders=content-type;host, Signature=2271c6b95141f8811f4cde63515b84b2fd7c164bb83ffa01189ac259d8510b9b";
        assert!(parse_tc3_authorization(ok).is_some());
        for bad in [
            "",
            "TC3-HMAC-SHA1 Credential=id/2024-01-16/mongodb/tc3_request, SignedHeaders=host, Signature=00",
            "TC3-HMAC-SHA256 Credential=id/2024-01-16/mongodb/other, SignedHeaders=host, Signature=2271c6b95141f8811f4cde63515b84b2fd7c164bb83ffa01189ac259d8510b9b",
            "TC3-HMAC-SHA256 Credential=/2024-01-16/mongodb/tc3_request, SignedHeaders=host, Signature=2271c6b95141f8811f4cde63515b84b2fd7c164bb83ffa01189ac259d8510b9b",
            "TC3-HMAC-SHA256 Credential=id/2024-01-16/mongodb/tc3_request, SignedHeaders=host, Signature=xyz",
            "TC3-HMAC-SHA256 Credential=id/2024-01-16/mongodb/tc3_request, SignedHeaders=, Signature=2271c6b95141f8811f4cde63515b84b2fd7c164bb83ffa01189ac259d8510b9b",
            "TC3-HMAC-SHA256 Credential=id/2024-01-16/mongodb/tc3_request, Extra=1, SignedHeaders=host, Signature=2271c6b95141f8811f4cde63515b84b2fd7c164bb83ffa01189ac259d8510b9b",
        ] {
            assert!(parse_tc3_authorization(bad).is_none(), "{bad}");
        }
    }

    /// Spec §5, worked example.
    #[test]
    fn legacy_worked_example() {
        let params: Vec<(String, String)> = [
            ("Action", "DescribeBackupDownloadTask"),
            ("InstanceId", "cmgo-dygv1rnp"),
            ("Nonce", "11886"),
            ("Region", "ap-guangzhou"),
            ("SecretId", "testid"),
            ("SignatureMethod", "HmacSHA256"),
            ("Timestamp", "1705403096"),
            ("Version", "2019-07-25"),
            ("Signature", "ignored"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .rev()
        .collect();
        let sts = legacy_string_to_sign("POST", "mongodb.tencentcloudapi.com", &params);
        assert_eq!(
            sts,
            "POSTmongodb.tencentcloudapi.com/?Action=DescribeBackupDownloadTask&InstanceId=cmgo-dygv1rnp&Nonce=11886&Region=ap-guangzhou&SecretId=testid&SignatureMethod=HmacSHA256&Timestamp=1705403096&Version=2019-07-25"
        );
        assert_eq!(
            legacy_signature("HmacSHA256", "testsecret", &sts).unwrap(),
            "wsSyCbfcmkqjnx+ego3Zof14BvMp+65+A6V+M8Mtbbc="
        );
        assert_eq!(
            legacy_signature("HmacSHA1", "testsecret", &sts)
                .unwrap()
                .len(),
            28
        );
        assert!(legacy_signature("MD5", "testsecret", &sts).is_none());
    }

    #[test]
    fn the_timestamp_window_is_five_minutes() {
        let now = 1_705_403_096_000;
        assert!(timestamp_ok("1705403096", now));
        assert!(timestamp_ok("1705402796", now));
        assert!(!timestamp_ok("1705402795", now));
        assert!(!timestamp_ok("1705403397", now));
        assert!(!timestamp_ok("soon", now));
    }
}
