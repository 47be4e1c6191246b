//! The API's compatibility and its one definition: the committed `proto/api.lock` lists every field,
//! enum value and method of the API as released; the proto may only add to it (docs/api.md,
//! "Compatibility"). And the JSON socket's submission, derived from the proto, takes every field.

use std::collections::BTreeSet;
use trainerd_proto::descriptor::{api_lines, typed_fields_of};
use trainerd_proto::API_VERSION;

const LOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/api.lock");
const HEADER: &str = "# The API as released: every field, enum value and method of trainerd.proto, one per line.\n\
# A compatible change only adds lines (and bumps API_VERSION's minor in proto/src/lib.rs); a line that\n\
# changes or disappears breaks clients. After an addition: UPDATE_API_LOCK=1 cargo test -p trainerd-proto --test api\n";

fn locked() -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(LOCK).expect("proto/api.lock");
    let mut version = String::new();
    let mut lines = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        match line.strip_prefix("api_version ") {
            Some(v) => version = v.to_string(),
            None => {
                lines.insert(line.to_string());
            }
        }
    }
    (version, lines)
}

#[test]
fn the_api_only_grows_and_the_lock_is_current() {
    let now: BTreeSet<String> = api_lines().into_iter().collect();
    let (version, lock) = locked();
    let broken: Vec<_> = lock.difference(&now).collect();
    assert!(
        broken.is_empty(),
        "incompatible change: these released lines changed or disappeared (add new fields with new numbers \
         instead; never renumber, retype or remove):\n{broken:#?}"
    );
    let added: Vec<_> = now.difference(&lock).collect();
    if std::env::var_os("UPDATE_API_LOCK").is_some() && !added.is_empty() {
        assert_ne!(version, API_VERSION, "the API grew: bump API_VERSION's minor in proto/src/lib.rs first");
        let body: Vec<&str> = now.iter().map(String::as_str).collect();
        std::fs::write(LOCK, format!("{HEADER}api_version {API_VERSION}\n{}\n", body.join("\n"))).unwrap();
        return;
    }
    assert!(
        added.is_empty(),
        "the proto has lines proto/api.lock lacks; bump API_VERSION's minor and run \
         UPDATE_API_LOCK=1 cargo test -p trainerd-proto --test api:\n{added:#?}"
    );
    assert_eq!(version, API_VERSION, "proto/api.lock was written for another API_VERSION");
}

#[test]
fn the_json_socket_takes_every_submit_field_of_the_proto() {
    let fields = typed_fields_of("SubmitJobRequest");
    assert!(fields.len() >= 22, "{fields:?}");
    let mut object = serde_json::Map::new();
    for (name, kind) in &fields {
        let value = match kind.trim_start_matches("optional ") {
            "repeated string" => serde_json::json!(["/bin/true"]),
            "repeated .trainerd.v1.EnvVar" => serde_json::json!({"A": "1"}),
            "string" => serde_json::json!("x"),
            "bool" => serde_json::json!(true),
            "double" => serde_json::json!(2.5),
            "uint32" | "int32" => serde_json::json!(1),
            "uint64" => serde_json::json!(1000),
            ".trainerd.v1.SlurmOptions" => serde_json::json!({"partition": "gpu", "nodes": 2, "args": ["--qos=high"]}),
            other => panic!("the test does not know how to write a {other} ({name}); teach it"),
        };
        object.insert(name.clone(), value);
    }
    let request: trainerd_proto::v1::SubmitJobRequest =
        serde_json::from_value(serde_json::Value::Object(object.clone()))
            .unwrap_or_else(|e| panic!("the JSON form of SubmitJobRequest refuses a field of the proto: {e}"));
    assert_eq!(request.env, [trainerd_proto::v1::EnvVar { name: "A".into(), value: "1".into() }]);
    assert_eq!((request.backoff_max_ms, request.checkpoint_marker.as_str()), (Some(1000), "x"));
    let slurm = request.slurm.expect("the Slurm options");
    assert_eq!((slurm.partition.as_str(), slurm.nodes, slurm.args), ("gpu", 2, vec!["--qos=high".to_string()]));
    object.insert("colour".into(), "red".into());
    let refused = serde_json::from_value::<trainerd_proto::v1::SubmitJobRequest>(serde_json::Value::Object(object));
    assert!(refused.unwrap_err().to_string().contains("unknown field `colour`"));
}
