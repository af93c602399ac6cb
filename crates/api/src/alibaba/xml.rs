//! `Format=XML` (spec §6): the same tree as the JSON answer, root element
//! `<Action>Response` (or `<Error>`), one element per field (in name order), an array written
//! as its element repeated in place (`<Items><BackupJob>…</BackupJob>
//! <BackupJob>…</BackupJob></Items>`), nulls left out.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde_json::Value;

fn element(w: &mut Writer<Vec<u8>>, name: &str, v: &Value) {
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                element(w, name, item);
            }
        }
        Value::Object(m) => {
            w.write_event(Event::Start(BytesStart::new(name)))
                .expect("write to memory");
            for (k, v) in m {
                element(w, k, v);
            }
            w.write_event(Event::End(BytesEnd::new(name)))
                .expect("write to memory");
        }
        scalar => {
            let text = match scalar {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            w.write_event(Event::Start(BytesStart::new(name)))
                .expect("write to memory");
            w.write_event(Event::Text(BytesText::new(&text)))
                .expect("write to memory");
            w.write_event(Event::End(BytesEnd::new(name)))
                .expect("write to memory");
        }
    }
}

/// The document for `body` (an object) under `root`.
pub fn document(root: &str, body: &Value) -> String {
    let mut w = Writer::new(Vec::new());
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .expect("write to memory");
    match body {
        Value::Object(_) => element(&mut w, root, body),
        other => element(&mut w, root, &serde_json::json!({ "Value": other })),
    }
    String::from_utf8(w.into_inner()).expect("XML from UTF-8 strings")
}

/// Whether the request asked for XML (`Format`, any case; JSON by default).
pub fn wants_xml(params: &[(String, String)]) -> bool {
    params
        .iter()
        .any(|(k, v)| k == "Format" && v.eq_ignore_ascii_case("xml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arrays_repeat_their_element_and_text_is_escaped() {
        let body = json!({
            "Items": {"BackupJob": [{"BackupJobId": 1, "Process": "25"}, {"BackupJobId": 2, "Process": "0"}]},
            "Note": "a<b & \"c\"",
            "Empty": {"BackupJob": []},
            "Gone": null,
            "Ok": true,
            "RequestId": "r-1",
        });
        let x = document("DescribeBackupTasksResponse", &body);
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeBackupTasksResponse>\
             <Empty></Empty><Items><BackupJob><BackupJobId>1</BackupJobId><Process>25</Process></BackupJob>\
             <BackupJob><BackupJobId>2</BackupJobId><Process>0</Process></BackupJob></Items>\
             <Note>a&lt;b &amp; &quot;c&quot;</Note><Ok>true</Ok>\
             <RequestId>r-1</RequestId></DescribeBackupTasksResponse>"
        );
        // A flat array (dds) repeats at the top level.
        let dds = document("R", &json!({"BackupJobs": [{"A": 1}, {"A": 2}]}));
        assert!(dds.ends_with(
            "<R><BackupJobs><A>1</A></BackupJobs><BackupJobs><A>2</A></BackupJobs></R>"
        ));
        assert!(wants_xml(&[("Format".into(), "xml".into())]));
        assert!(!wants_xml(&[("Format".into(), "JSON".into())]));
        assert!(!wants_xml(&[]));
    }
}
