//! `deploy/kubernetes/`: every object parses into its typed Kubernetes API struct (k8s-openapi,
//! v1.33) and survives the round trip unchanged, so a misspelt or misplaced field (which a plain
//! parse would drop silently) fails here; the RBAC rules are exactly what the backend uses; the
//! broker configuration in the ConfigMap is valid; the example template renders.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::Value;

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Parses `doc` as `T` and checks that serialising it gives `doc` back.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: a field was lost in the typed round trip (misspelt or misplaced?)"
    );
    t
}

#[test]
fn every_manifest_is_a_valid_typed_object() {
    let mut kinds = Vec::new();
    let mut role = None;
    let mut config = None;
    for entry in std::fs::read_dir(deploy()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for doc in docs {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no kind"))
                .to_string();
            match kind.as_str() {
                "Namespace" => drop(typed::<Namespace>(&name, &doc)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(&name, &doc)),
                "Role" => role = Some(typed::<Role>(&name, &doc)),
                "RoleBinding" => {
                    let rb = typed::<RoleBinding>(&name, &doc);
                    assert_eq!(rb.role_ref.kind, "Role", "namespaced binding");
                    let s = &rb.subjects.unwrap()[0];
                    assert_eq!(
                        (s.kind.as_str(), s.name.as_str()),
                        ("ServiceAccount", "switchboard-broker")
                    );
                }
                "ConfigMap" => {
                    let cm = typed::<ConfigMap>(&name, &doc);
                    if let Some(toml) = cm.data.as_ref().and_then(|d| d.get("broker.toml")) {
                        config = Some(toml.clone());
                    }
                    if let Some(tpl) = cm.data.as_ref().and_then(|d| d.get("xfce.yaml")) {
                        switchboard_k8s::template::parse_template(tpl).unwrap();
                    }
                }
                "PersistentVolumeClaim" => drop(typed::<PersistentVolumeClaim>(&name, &doc)),
                "Deployment" => {
                    let d = typed::<Deployment>(&name, &doc);
                    let spec = d.spec.unwrap().template.spec.unwrap();
                    assert_eq!(
                        spec.service_account_name.as_deref(),
                        Some("switchboard-broker")
                    );
                    let sc = spec.containers[0].security_context.as_ref().unwrap();
                    assert_eq!(sc.allow_privilege_escalation, Some(false));
                }
                "Service" => drop(typed::<Service>(&name, &doc)),
                "NetworkPolicy" => {
                    let np = typed::<NetworkPolicy>(&name, &doc);
                    let spec = np.spec.unwrap();
                    assert_eq!(
                        spec.policy_types.as_deref(),
                        Some(&["Ingress".to_string()][..])
                    );
                    let sel = spec.pod_selector.unwrap().match_labels.unwrap();
                    assert_eq!(
                        sel["app.kubernetes.io/managed-by"], "switchboard",
                        "selects the session pods"
                    );
                }
                other => panic!("{name}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in deploy/kubernetes");
    }
    // The Role grants what the backend calls and nothing more (no exec, no secrets, no logs).
    let mut rules: Vec<(String, Vec<String>)> = role
        .unwrap()
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| {
            let verbs = r.verbs.clone();
            r.resources
                .unwrap_or_default()
                .into_iter()
                .map(move |res| (res, verbs.clone()))
        })
        .collect();
    rules.sort();
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        vec![
            ("events".to_string(), want(&["get", "list", "watch"])),
            (
                "persistentvolumeclaims".to_string(),
                want(&["create", "get", "list", "watch", "delete"])
            ),
            (
                "pods".to_string(),
                want(&["create", "get", "list", "watch", "delete"])
            ),
            ("pods/status".to_string(), want(&["get"])),
        ]
    );
    // The broker configuration in the ConfigMap is one the broker accepts.
    let c =
        switchboard_broker::config::Config::parse(&config.unwrap(), "configmap.yaml broker.toml")
            .unwrap();
    assert_eq!(c.kube_pools.len(), 1);
    assert_eq!(c.kube_pools[0].render.namespace, "switchboard-sessions");
    assert_eq!(
        c.gateway.as_ref().unwrap().pool.as_deref(),
        Some("desktops")
    );
}

#[test]
fn the_example_template_renders_restricted() {
    let path = deploy().join("session-types/default/xfce.yaml");
    let pod = switchboard_k8s::template::parse_template(&std::fs::read_to_string(&path).unwrap())
        .unwrap();
    let owner = switchboard_k8s::Owner {
        user: "alice".into(),
        groups: vec![],
        uid: Some(1000),
        gid: Some(1000),
    };
    let opts = switchboard_k8s::RenderOptions {
        namespace: "switchboard-sessions".into(),
        pool: "desktops".into(),
        default_port: 14500,
        home: switchboard_k8s::Home::None,
        allow_host_path: false,
    };
    let r = switchboard_k8s::template::render(&pod, &path, &owner, "xfce", &opts).unwrap();
    assert_eq!(r.port, 14500);
    let spec = r.pod.spec.unwrap();
    assert!(
        spec.containers[0].readiness_probe.is_some(),
        "readiness comes from the probe"
    );
    assert_eq!(spec.security_context.unwrap().run_as_user, Some(1000));
}
