//! Request parameters of Tencent Cloud API 3.0 in one shape: a JSON body
//! (POST, the SDK's default) as is, and the flattened query or form
//! (`Status.0=2&Status.1=3`, `BackupSets.0.ReplicaSetId=…`, 0-based) turned
//! into the same JSON (spec §3). Flattened values stay strings: operations
//! take numbers written either way (spec §7).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

/// Turns decoded `name=value` pairs into a JSON object; `Err` names the
/// parameter whose shape is contradictory or whose list has a gap.
pub fn unflatten(pairs: &[(String, String)]) -> Result<Value, String> {
    let mut root: BTreeMap<String, Node> = BTreeMap::new();
    for (name, value) in pairs {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{name}: not a parameter name"));
        }
        let mut level = &mut root;
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if last {
                if level.contains_key(*p) {
                    return Err(format!("{name}: given twice, or as a list and a value"));
                }
                level.insert(p.to_string(), Node::Leaf(value.clone()));
            } else {
                let next = level
                    .entry(p.to_string())
                    .or_insert_with(|| Node::Branch(BTreeMap::new()));
                match next {
                    Node::Branch(m) => level = m,
                    Node::Leaf(_) => {
                        return Err(format!("{name}: given as a value and as a list or object"));
                    }
                }
            }
        }
    }
    let mut out = Map::new();
    for (k, n) in root {
        out.insert(k.clone(), to_json(&k, n)?);
    }
    Ok(Value::Object(out))
}

fn to_json(path: &str, n: Node) -> Result<Value, String> {
    match n {
        Node::Leaf(s) => Ok(Value::String(s)),
        Node::Branch(m) => {
            // All keys numbers: a list, 0, 1, 2 … without gaps.
            if m.keys().all(|k| k.bytes().all(|b| b.is_ascii_digit())) {
                let mut items: Vec<(usize, Node)> = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let i = k
                        .parse::<usize>()
                        .map_err(|_| format!("{path}.{k}: not a list index"))?;
                    items.push((i, v));
                }
                items.sort_by_key(|(i, _)| *i);
                let mut out = Vec::with_capacity(items.len());
                for (want, (i, v)) in items.into_iter().enumerate() {
                    if i != want {
                        return Err(format!("{path}: list item {want} is missing"));
                    }
                    out.push(to_json(&format!("{path}.{i}"), v)?);
                }
                return Ok(Value::Array(out));
            }
            let mut out = Map::new();
            for (k, v) in m {
                let sub = to_json(&format!("{path}.{k}"), v)?;
                out.insert(k, sub);
            }
            Ok(Value::Object(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flattened_lists_and_objects_become_json() {
        let v = unflatten(&pairs(&[
            ("InstanceId", "cmgo-dygv1rnp"),
            ("Status.1", "3"),
            ("Status.0", "2"),
            ("BackupSets.0.ReplicaSetId", "cmgo-x_0"),
            ("BackupSets.1.ReplicaSetId", "cmgo-x_1"),
            ("Limit", "20"),
        ]))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "InstanceId": "cmgo-dygv1rnp",
                "Status": ["2", "3"],
                "BackupSets": [{"ReplicaSetId": "cmgo-x_0"}, {"ReplicaSetId": "cmgo-x_1"}],
                "Limit": "20",
            })
        );
        // Ten items and more sort as numbers.
        let many: Vec<(String, String)> = (0..12)
            .map(|i| (format!("Status.{i}"), i.to_string()))
            .collect();
        assert_eq!(unflatten(&many).unwrap()["Status"][10], "10");
    }

    #[test]
    fn contradictory_shapes_are_refused_by_name() {
        for (bad, says) in [
            (vec![("Status", "1"), ("Status.0", "2")], "Status"),
            (vec![("Status.0", "1"), ("Status", "2")], "Status"),
            (vec![("Status.1", "2")], "list item 0"),
            (vec![("Limit", "1"), ("Limit", "2")], "twice"),
            (vec![("Status..0", "1")], "not a parameter name"),
        ] {
            let e = unflatten(&pairs(&bad)).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
