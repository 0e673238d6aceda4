//! What a pod's status means for a start: pure functions of the `Pod` object.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// Where a starting pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for a node.
    Scheduling,
    /// On a node, containers not yet running (image pull, volume mounts).
    Pulling,
    /// Containers running, the Ready condition (readinessProbe) not yet true.
    Starting,
}

impl Stage {
    /// Name for messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Scheduling => "scheduling",
            Stage::Pulling => "pulling",
            Stage::Starting => "starting",
        }
    }
}

/// The verdict on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Ready: the session port answers its readinessProbe.
    Ready {
        /// The pod's IP.
        ip: IpAddr,
    },
    /// On its way.
    Waiting {
        /// Which budget is running.
        stage: Stage,
        /// The latest reason Kubernetes gave (`ContainerCreating`, …), for progress messages.
        detail: Option<String>,
    },
    /// It will not become ready by waiting: fail the start now.
    Broken {
        /// The Kubernetes reason (`ImagePullBackOff`, `Unschedulable`, …).
        reason: String,
        /// Kubernetes' message, if any.
        message: String,
    },
    /// Finished, failed, evicted or being deleted: delete (if needed) and create a new one.
    Replace {
        /// Why (`Succeeded`, `Failed`, `Evicted`, `Terminating`).
        reason: String,
    },
}

/// Container waiting reasons that end a start at once.
pub const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Classifies `pod`.
pub fn classify(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Replace {
            reason: "Terminating".into(),
        };
    }
    let Some(status) = pod.status.as_ref() else {
        return PodState::Waiting {
            stage: Stage::Scheduling,
            detail: None,
        };
    };
    match status.phase.as_deref() {
        Some("Succeeded") => {
            return PodState::Replace {
                reason: "Succeeded".into(),
            };
        }
        Some("Failed") => {
            let reason = status.reason.clone().unwrap_or_else(|| "Failed".into());
            return PodState::Replace { reason };
        }
        _ => {}
    }
    let condition = |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t);
    if let Some(c) = condition("PodScheduled")
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
    {
        return PodState::Broken {
            reason: "Unschedulable".into(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let mut detail = None;
    let mut any_waiting = false;
    for cs in statuses.clone() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            any_waiting = true;
            let reason = w.reason.clone().unwrap_or_default();
            if FATAL_WAITING.contains(&reason.as_str()) {
                return PodState::Broken {
                    reason,
                    message: w.message.clone().unwrap_or_default(),
                };
            }
            detail.get_or_insert(reason);
        }
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref())
            && t.exit_code != 0
            && cs.restart_count > 2
        {
            return PodState::Broken {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "container {} exited with {} after {} restarts",
                    cs.name, t.exit_code, cs.restart_count
                ),
            };
        }
    }
    let scheduled =
        condition("PodScheduled").is_some_and(|c| c.status == "True") || status.host_ip.is_some();
    if !scheduled {
        return PodState::Waiting {
            stage: Stage::Scheduling,
            detail,
        };
    }
    let ready = condition("Ready").is_some_and(|c| c.status == "True");
    if ready && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        return PodState::Ready { ip };
    }
    let running = statuses.clone().next().is_some()
        && !any_waiting
        && status
            .container_statuses
            .iter()
            .flatten()
            .all(|cs| cs.state.as_ref().is_some_and(|s| s.running.is_some()));
    let stage = if running {
        Stage::Starting
    } else {
        Stage::Pulling
    };
    PodState::Waiting { stage, detail }
}

/// How long each stage may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// Until a node is assigned.
    pub scheduling: Duration,
    /// From scheduled until the containers run (image pull, volume mounts).
    pub image_pull: Duration,
    /// From running until Ready.
    pub start: Duration,
}

impl Default for Budgets {
    fn default() -> Budgets {
        Budgets {
            scheduling: Duration::from_secs(60),
            image_pull: Duration::from_secs(300),
            start: Duration::from_secs(120),
        }
    }
}

impl Budgets {
    /// The budget of `stage`.
    pub fn of(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Scheduling => self.scheduling,
            Stage::Pulling => self.image_pull,
            Stage::Starting => self.start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" },
            "spec": { "containers": [{ "name": "c", "image": "i" }] },
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn stages_in_order() {
        assert_eq!(
            classify(&pod(serde_json::json!({ "phase": "Pending" }))),
            PodState::Waiting {
                stage: Stage::Scheduling,
                detail: None
            }
        );
        let pulling = pod(serde_json::json!({
            "phase": "Pending", "hostIP": "10.0.0.1",
            "conditions": [{ "type": "PodScheduled", "status": "True" }],
            "containerStatuses": [{ "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "ContainerCreating" } } }]
        }));
        assert_eq!(
            classify(&pulling),
            PodState::Waiting {
                stage: Stage::Pulling,
                detail: Some("ContainerCreating".into())
            }
        );
        let starting = pod(serde_json::json!({
            "phase": "Running", "podIP": "10.1.0.5",
            "conditions": [{ "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "False" }],
            "containerStatuses": [{ "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "running": {} } }]
        }));
        assert_eq!(
            classify(&starting),
            PodState::Waiting {
                stage: Stage::Starting,
                detail: None
            }
        );
        let ready = pod(serde_json::json!({
            "phase": "Running", "podIP": "10.1.0.5",
            "conditions": [{ "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "state": { "running": {} } }]
        }));
        assert_eq!(
            classify(&ready),
            PodState::Ready {
                ip: "10.1.0.5".parse().unwrap()
            }
        );
    }

    #[test]
    fn fatal_reasons_fail_fast() {
        for reason in [
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "CrashLoopBackOff",
        ] {
            let p = pod(serde_json::json!({
                "phase": "Pending", "conditions": [{ "type": "PodScheduled", "status": "True" }],
                "containerStatuses": [{ "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": reason, "message": "boom" } } }]
            }));
            assert_eq!(
                classify(&p),
                PodState::Broken {
                    reason: reason.into(),
                    message: "boom".into()
                }
            );
        }
        let p = pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory." }]
        }));
        assert!(
            matches!(classify(&p), PodState::Broken { reason, message } if reason == "Unschedulable" && message.contains("Insufficient"))
        );
    }

    #[test]
    fn finished_pods_are_replaced() {
        assert_eq!(
            classify(&pod(serde_json::json!({ "phase": "Succeeded" }))),
            PodState::Replace {
                reason: "Succeeded".into()
            }
        );
        assert_eq!(
            classify(&pod(
                serde_json::json!({ "phase": "Failed", "reason": "Evicted" })
            )),
            PodState::Replace {
                reason: "Evicted".into()
            }
        );
        let mut p = pod(serde_json::json!({ "phase": "Running" }));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            classify(&p),
            PodState::Replace {
                reason: "Terminating".into()
            }
        );
    }
}
