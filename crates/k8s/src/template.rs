//! Pod templates per session type, looked up per user, then group, then default (the seed's
//! `session_types/<user>/`, `<group>/`, `default/` search), and rendered into the pod to create:
//! name, labels, annotations, a restricted security context, the home volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Capabilities, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};

use crate::names;

/// Largest template file read.
pub const MAX_TEMPLATE_BYTES: u64 = 256 * 1024;

/// What went wrong with a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The user, a group or the session type cannot name a template file.
    #[error(
        "{what} {value:?} cannot name a template (allowed: letters, digits, '_', '.', '@', '-'; no leading '.')"
    )]
    BadName {
        /// "user", "group" or "session type".
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// No template for this user and type.
    #[error("no template for session type {session_type:?} (looked in {looked})")]
    NotFound {
        /// The type asked for.
        session_type: String,
        /// The directories searched.
        looked: String,
    },
    /// The file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The template file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a pod.
    #[error("{path}: {message}")]
    Invalid {
        /// The template file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// How users' home directories reach their pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Home {
    /// Whatever the template mounts (a fresh, non-persistent home by default).
    #[default]
    None,
    /// One shared claim (NFS or similar, ReadWriteMany) for all users: `MOUNT/<user>` is the
    /// claim's `<user>` subdirectory (the seed's `mhd-` shared home).
    Shared {
        /// Name of the existing PersistentVolumeClaim.
        claim: String,
        /// Where homes live in the pod (`/home`).
        mount: String,
    },
    /// A fresh home per pod (emptyDir) whose listed dotfiles are restored at start from, and saved
    /// at log-off to, `<claim>/<user>/<type>.tar` (the seed's `save-states`): an init container
    /// unpacks, a preStop hook packs. Both use the session image's `sh` and `tar`.
    Dotfiles {
        /// Name of the existing (ReadWriteMany) claim holding the saved files.
        claim: String,
        /// Paths relative to the home directory (`.bashrc`, `.config/xfce4`).
        files: Vec<String>,
        /// Where homes live in the pod (`/home`).
        mount: String,
    },
    /// A PersistentVolumeClaim per user, created on first start and kept across sessions.
    PerUser {
        /// Storage class; the cluster default when unset.
        storage_class: Option<String>,
        /// Requested size ("10Gi").
        size: String,
        /// Where homes live in the pod (`/home`).
        mount: String,
    },
}

/// Pool-wide rendering settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Namespace of the pods.
    pub namespace: String,
    /// Pool name (a label).
    pub pool: String,
    /// Session port when no container port is named `session` or `xpra`.
    pub default_port: u16,
    /// Home directories.
    pub home: Home,
    /// Allow `hostPath` volumes in templates (off: they expose the node).
    pub allow_host_path: bool,
}

/// Who the pod is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Exact user name.
    pub user: String,
    /// Groups, in the order templates are searched.
    pub groups: Vec<String>,
    /// The user's uid and gid, when known; the pod runs as them.
    pub uid: Option<u32>,
    /// See `uid`.
    pub gid: Option<u32>,
}

/// A rendered pod and what the backend needs to know about it.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The pod to create.
    pub pod: Pod,
    /// The per-user claim to ensure first ([`Home::PerUser`]).
    pub claim: Option<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    /// The session port.
    pub port: u16,
    /// The template it came from.
    pub template: PathBuf,
}

/// Parsed templates by path, with the modification time and size they were read at.
type Cache = BTreeMap<PathBuf, (SystemTime, u64, Arc<Pod>)>;

/// A directory of templates, with a cache keyed on each file's modification time and size.
#[derive(Debug)]
pub struct TemplateDir {
    root: PathBuf,
    cache: Mutex<Cache>,
}

impl TemplateDir {
    /// Templates under `root`.
    pub fn new(root: impl Into<PathBuf>) -> TemplateDir {
        TemplateDir {
            root: root.into(),
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The template for `owner`'s `session_type`: `ROOT/<user>/<type>.yaml`, then
    /// `ROOT/<group>/<type>.yaml` for each group, then `ROOT/default/<type>.yaml`.
    pub fn lookup(
        &self,
        owner: &Owner,
        session_type: &str,
    ) -> Result<(PathBuf, Arc<Pod>), TemplateError> {
        if !names::is_dns_label(session_type) {
            return Err(TemplateError::BadName {
                what: "session type",
                value: session_type.to_string(),
            });
        }
        let mut looked = Vec::new();
        for dir in self.search_dirs(owner)? {
            let path = dir.join(format!("{session_type}.yaml"));
            match self.load(&path)? {
                Some(pod) => return Ok((path, pod)),
                None => looked.push(dir.display().to_string()),
            }
        }
        Err(TemplateError::NotFound {
            session_type: session_type.to_string(),
            looked: looked.join(", "),
        })
    }

    /// The session types `owner` may start, sorted (for the landing page).
    pub fn session_types(&self, owner: &Owner) -> Result<Vec<String>, TemplateError> {
        let mut types = std::collections::BTreeSet::new();
        for dir in self.search_dirs(owner)? {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(stem) = name.strip_suffix(".yaml")
                    && names::is_dns_label(stem)
                {
                    types.insert(stem.to_string());
                }
            }
        }
        Ok(types.into_iter().collect())
    }

    fn search_dirs(&self, owner: &Owner) -> Result<Vec<PathBuf>, TemplateError> {
        let mut dirs = Vec::with_capacity(owner.groups.len() + 2);
        check_component("user", &owner.user)?;
        dirs.push(self.root.join(&owner.user));
        for g in &owner.groups {
            check_component("group", g)?;
            dirs.push(self.root.join(g));
        }
        dirs.push(self.root.join("default"));
        Ok(dirs)
    }

    fn load(&self, path: &Path) -> Result<Option<Arc<Pod>>, TemplateError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(TemplateError::Io {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if let Some((m, l, pod)) = self.cache.lock().expect("template cache").get(path)
            && (*m, *l) == stamp
        {
            return Ok(Some(pod.clone()));
        }
        if meta.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::Invalid {
                path: path.to_path_buf(),
                message: format!("larger than {MAX_TEMPLATE_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|error| TemplateError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let pod = Arc::new(
            parse_template(&text).map_err(|message| TemplateError::Invalid {
                path: path.to_path_buf(),
                message,
            })?,
        );
        self.cache
            .lock()
            .expect("template cache")
            .insert(path.to_path_buf(), (stamp.0, stamp.1, pod.clone()));
        Ok(Some(pod))
    }
}

/// Parses a template: one YAML document holding a `v1` `Pod` with at least one container.
pub fn parse_template(text: &str) -> Result<Pod, String> {
    if text.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(format!("larger than {MAX_TEMPLATE_BYTES} bytes"));
    }
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    match (
        value.get("apiVersion").and_then(|v| v.as_str()),
        value.get("kind").and_then(|v| v.as_str()),
    ) {
        (Some("v1"), Some("Pod")) => {}
        (a, k) => {
            return Err(format!(
                "must be apiVersion v1, kind Pod (found {a:?}, {k:?})"
            ));
        }
    }
    let pod: Pod = serde_json::from_value(value).map_err(|e| format!("not a Pod: {e}"))?;
    let containers = pod.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
    if containers == 0 {
        return Err("spec.containers is empty".into());
    }
    Ok(pod)
}

fn check_component(what: &'static str, value: &str) -> Result<(), TemplateError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TemplateError::BadName {
            what,
            value: value.to_string(),
        })
    }
}

/// Name of the per-user home claim.
pub fn home_claim_name(user: &str) -> String {
    names::pod_name(user, "home")
}

/// Renders `template` into the pod for `owner`'s `session_type`.
///
/// The template keeps what it says about images, resources, env, probes and volumes. Switchboard
/// adds the name, namespace, labels and annotations, and makes the pod safe unless the template is
/// explicit: it runs as the user's uid/gid (non-root), with the runtime's seccomp profile, no
/// privilege escalation, all capabilities dropped and no service-account token. A template that
/// asks for privileged containers, added capabilities, uid 0, host namespaces or (unless allowed)
/// hostPath volumes is refused.
pub fn render(
    template: &Pod,
    path: &Path,
    owner: &Owner,
    session_type: &str,
    opts: &RenderOptions,
) -> Result<Rendered, TemplateError> {
    let invalid = |message: String| TemplateError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut pod = template.clone();
    let name = names::pod_name(&owner.user, session_type);
    let meta = &mut pod.metadata;
    meta.name = Some(name.clone());
    meta.generate_name = None;
    meta.namespace = Some(opts.namespace.clone());
    meta.resource_version = None;
    meta.uid = None;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(names::MANAGED_BY.into(), names::MANAGER.into());
    labels.insert(names::USER_LABEL.into(), names::label_value(&owner.user));
    labels.insert(names::TYPE_LABEL.into(), session_type.into());
    labels.insert(names::POOL_LABEL.into(), names::label_value(&opts.pool));
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(names::USER_ANNOTATION.into(), owner.user.clone());
    annotations.insert(names::TYPE_ANNOTATION.into(), session_type.into());

    let spec = pod.spec.as_mut().ok_or_else(|| invalid("no spec".into()))?;
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        return Err(invalid(
            "hostNetwork, hostPID and hostIPC are not allowed in session pods".into(),
        ));
    }
    if !opts.allow_host_path && spec.volumes.iter().flatten().any(|v| v.host_path.is_some()) {
        return Err(invalid(
            "hostPath volumes are not allowed (pool setting allow_host_path)".into(),
        ));
    }
    spec.restart_policy.get_or_insert_with(|| "Never".into());
    spec.automount_service_account_token.get_or_insert(false);
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if psc.run_as_user == Some(0) || psc.run_as_group == Some(0) {
        return Err(invalid("securityContext runs as uid or gid 0".into()));
    }
    if let Some(uid) = owner.uid {
        psc.run_as_user.get_or_insert(i64::from(uid));
    }
    if let Some(gid) = owner.gid {
        psc.run_as_group.get_or_insert(i64::from(gid));
        psc.fs_group.get_or_insert(i64::from(gid));
    }
    psc.run_as_non_root.get_or_insert(true);
    psc.seccomp_profile.get_or_insert_with(|| SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    });

    let mut port = None;
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        if sc.privileged == Some(true) {
            return Err(invalid(format!("container {:?} is privileged", c.name)));
        }
        if sc.run_as_user == Some(0) || sc.run_as_group == Some(0) {
            return Err(invalid(format!(
                "container {:?} runs as uid or gid 0",
                c.name
            )));
        }
        if sc.allow_privilege_escalation == Some(true) {
            return Err(invalid(format!(
                "container {:?} allows privilege escalation",
                c.name
            )));
        }
        let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
        if caps.add.as_ref().is_some_and(|a| !a.is_empty()) {
            return Err(invalid(format!(
                "container {:?} adds capabilities {:?}",
                c.name, caps.add
            )));
        }
        caps.drop.get_or_insert_with(|| vec!["ALL".into()]);
        sc.allow_privilege_escalation = Some(false);
        if port.is_none() {
            port = c
                .ports
                .iter()
                .flatten()
                .find(|p| matches!(p.name.as_deref(), Some("session" | "xpra")))
                .and_then(|p| u16::try_from(p.container_port).ok());
        }
    }

    if let Home::Dotfiles {
        claim,
        files,
        mount,
    } = &opts.home
    {
        dotfiles(spec, owner, session_type, claim, files, mount).map_err(invalid)?;
    }
    let mut claim = None;
    let home = match &opts.home {
        Home::None | Home::Dotfiles { .. } => None,
        Home::Shared { claim, mount } => Some((claim.clone(), mount.clone())),
        Home::PerUser {
            storage_class,
            size,
            mount,
        } => {
            let claim_name = home_claim_name(&owner.user);
            claim = Some(home_claim(
                &claim_name,
                owner,
                opts,
                storage_class.as_deref(),
                size,
            ));
            Some((claim_name, mount.clone()))
        }
    };
    if let Some((claim_name, mount)) = home {
        check_component("user", &owner.user)?;
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "switchboard-home".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: None,
            }),
            ..Default::default()
        });
        let shared = matches!(opts.home, Home::Shared { .. });
        for c in &mut spec.containers {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: "switchboard-home".into(),
                    mount_path: format!("{}/{}", mount.trim_end_matches('/'), owner.user),
                    sub_path: shared.then(|| owner.user.clone()),
                    ..Default::default()
                });
        }
    }
    Ok(Rendered {
        pod,
        claim,
        port: port.unwrap_or(opts.default_port),
        template: path.to_path_buf(),
    })
}

/// Restores `$SB_DOTFILES/$SB_TYPE.tar` into `$HOME` (a constant script; the data is in env).
const RESTORE: &str =
    r#"a="$SB_DOTFILES/$SB_TYPE.tar"; if [ -f "$a" ]; then tar -xf "$a" -C "$HOME"; fi"#;
/// Packs the listed dotfiles that exist into `$SB_DOTFILES/$SB_TYPE.tar` (atomically by rename).
/// `$SB_DOTFILE_LIST` holds only checked relative paths (no spaces, globs or `..`).
const SAVE: &str = r#"cd "$HOME" || exit 0; l=""; for f in $SB_DOTFILE_LIST; do [ -e "$f" ] && l="$l $f"; done; [ -n "$l" ] || exit 0; tar -cf "$SB_DOTFILES/$SB_TYPE.tar.new" $l && mv "$SB_DOTFILES/$SB_TYPE.tar.new" "$SB_DOTFILES/$SB_TYPE.tar""#;
/// Where the user's saved dotfiles are mounted.
const DOTFILES_DIR: &str = "/switchboard/dotfiles";

/// Whether `f` may be listed as a dotfile: a relative path of `[A-Za-z0-9._/-]`, no `..`.
pub fn valid_dotfile(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 255
        && !f.starts_with('/')
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && !f.split('/').any(|c| c == ".." || c.is_empty())
}

fn dotfiles(
    spec: &mut k8s_openapi::api::core::v1::PodSpec,
    owner: &Owner,
    session_type: &str,
    claim: &str,
    files: &[String],
    mount: &str,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::{
        Container, EmptyDirVolumeSource, EnvVar, ExecAction, Lifecycle, LifecycleHandler,
    };
    if !valid_component(&owner.user) {
        return Err(format!(
            "user {:?} cannot name a dotfiles directory",
            owner.user
        ));
    }
    if let Some(bad) = files.iter().find(|f| !valid_dotfile(f)) {
        return Err(format!("dotfile {bad:?} is not a plain relative path"));
    }
    let home = format!("{}/{}", mount.trim_end_matches('/'), owner.user);
    let env = |extra: bool| {
        let mut e = vec![
            EnvVar {
                name: "HOME".into(),
                value: Some(home.clone()),
                ..Default::default()
            },
            EnvVar {
                name: "SB_DOTFILES".into(),
                value: Some(DOTFILES_DIR.into()),
                ..Default::default()
            },
            EnvVar {
                name: "SB_TYPE".into(),
                value: Some(session_type.into()),
                ..Default::default()
            },
        ];
        if extra {
            e.push(EnvVar {
                name: "SB_DOTFILE_LIST".into(),
                value: Some(files.join(" ")),
                ..Default::default()
            });
        }
        e
    };
    let mounts = vec![
        VolumeMount {
            name: "switchboard-home".into(),
            mount_path: home.clone(),
            ..Default::default()
        },
        VolumeMount {
            name: "switchboard-dotfiles".into(),
            mount_path: DOTFILES_DIR.into(),
            sub_path: Some(owner.user.clone()),
            ..Default::default()
        },
    ];
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: "switchboard-home".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "switchboard-dotfiles".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    });
    let image = spec.containers[0].image.clone();
    for (i, c) in spec.containers.iter_mut().enumerate() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(mounts[0].clone());
        if i > 0 {
            continue;
        }
        if c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()) {
            return Err(format!(
                "container {:?} has its own preStop hook; dotfiles need it to save",
                c.name
            ));
        }
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(mounts[1].clone());
        let env_list = c.env.get_or_insert_with(Vec::new);
        for e in env(true) {
            if !env_list.iter().any(|x| x.name == e.name) {
                env_list.push(e);
            }
        }
        c.lifecycle.get_or_insert_with(Lifecycle::default).pre_stop = Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), SAVE.into()]),
            }),
            ..Default::default()
        });
    }
    spec.init_containers.get_or_insert_with(Vec::new).insert(
        0,
        Container {
            name: "switchboard-dotfiles".into(),
            image,
            command: Some(vec!["sh".into(), "-c".into(), RESTORE.into()]),
            env: Some(env(false)),
            volume_mounts: Some(mounts),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    Ok(())
}

fn valid_component(value: &str) -> bool {
    check_component("user", value).is_ok()
}

fn home_claim(
    name: &str,
    owner: &Owner,
    opts: &RenderOptions,
    storage_class: Option<&str>,
    size: &str,
) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let mut labels = BTreeMap::new();
    labels.insert(names::MANAGED_BY.to_string(), names::MANAGER.to_string());
    labels.insert(
        names::USER_LABEL.to_string(),
        names::label_value(&owner.user),
    );
    let mut annotations = BTreeMap::new();
    annotations.insert(names::USER_ANNOTATION.to_string(), owner.user.clone());
    PersistentVolumeClaim {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XPRA: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  labels: { team: hpc }
spec:
  containers:
    - name: xpra
      image: registry.example.org/xpra-xfce:3.1
      ports: [{ name: xpra, containerPort: 14500 }]
      readinessProbe:
        tcpSocket: { port: 14500 }
        periodSeconds: 1
"#;

    fn owner() -> Owner {
        Owner {
            user: "alice".into(),
            groups: vec!["staff".into()],
            uid: Some(1000),
            gid: Some(1000),
        }
    }

    fn opts() -> RenderOptions {
        RenderOptions {
            namespace: "sessions".into(),
            pool: "desktops".into(),
            default_port: 14500,
            home: Home::None,
            allow_host_path: false,
        }
    }

    #[test]
    fn lookup_goes_user_then_group_then_default() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["alice", "staff", "default"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let with_image = |img: &str| XPRA.replace("registry.example.org/xpra-xfce:3.1", img);
        std::fs::write(dir.path().join("default/xfce.yaml"), with_image("default")).unwrap();
        std::fs::write(
            dir.path().join("default/kde.yaml"),
            with_image("default-kde"),
        )
        .unwrap();
        std::fs::write(dir.path().join("staff/xfce.yaml"), with_image("staff")).unwrap();
        std::fs::write(dir.path().join("alice/kde.yaml"), with_image("alice")).unwrap();
        let t = TemplateDir::new(dir.path());
        let image = |o: &Owner, ty: &str| {
            t.lookup(o, ty).unwrap().1.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
        };
        assert_eq!(image(&owner(), "kde").as_deref(), Some("alice"));
        assert_eq!(image(&owner(), "xfce").as_deref(), Some("staff"));
        let bob = Owner {
            user: "bob".into(),
            groups: vec![],
            uid: None,
            gid: None,
        };
        assert_eq!(image(&bob, "xfce").as_deref(), Some("default"));
        assert!(matches!(
            t.lookup(&bob, "gnome"),
            Err(TemplateError::NotFound { .. })
        ));
        assert_eq!(t.session_types(&owner()).unwrap(), vec!["kde", "xfce"]);
        // Path tricks are refused before touching the file system.
        let evil = Owner {
            user: "../etc".into(),
            groups: vec![],
            uid: None,
            gid: None,
        };
        assert!(matches!(
            t.lookup(&evil, "xfce"),
            Err(TemplateError::BadName { .. })
        ));
        assert!(matches!(
            t.lookup(&bob, "../x"),
            Err(TemplateError::BadName { .. })
        ));
        // An edit is seen (the cache keys on mtime and size).
        std::fs::write(
            dir.path().join("default/xfce.yaml"),
            with_image("default-v2"),
        )
        .unwrap();
        assert_eq!(image(&bob, "xfce").as_deref(), Some("default-v2"));
    }

    #[test]
    fn render_names_labels_and_restricts() {
        let pod = parse_template(XPRA).unwrap();
        let r = render(&pod, Path::new("t.yaml"), &owner(), "xfce", &opts()).unwrap();
        assert_eq!(r.port, 14500);
        let meta = &r.pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("alice-xfce"));
        assert_eq!(meta.namespace.as_deref(), Some("sessions"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "hpc");
        assert_eq!(labels[names::USER_LABEL], "alice");
        assert_eq!(labels[names::TYPE_LABEL], "xfce");
        let spec = r.pod.spec.as_ref().unwrap();
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(
            (psc.run_as_user, psc.run_as_group, psc.run_as_non_root),
            (Some(1000), Some(1000), Some(true))
        );
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn render_refuses_unsafe_templates() {
        for (bad, why) in [
            (
                "      securityContext: { privileged: true }\n",
                "privileged",
            ),
            (
                "      securityContext: { capabilities: { add: [NET_ADMIN] } }\n",
                "adds capabilities",
            ),
            ("      securityContext: { runAsUser: 0 }\n", "uid or gid 0"),
        ] {
            let pod = parse_template(&format!("{XPRA}{bad}")).unwrap();
            let err = render(&pod, Path::new("t.yaml"), &owner(), "xfce", &opts())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
        let host = format!("{XPRA}  hostNetwork: true\n");
        assert!(
            render(
                &parse_template(&host).unwrap(),
                Path::new("t"),
                &owner(),
                "x",
                &opts()
            )
            .is_err()
        );
        let hp = format!("{XPRA}  volumes: [{{ name: h, hostPath: {{ path: /srv }} }}]\n");
        let hp = parse_template(&hp).unwrap();
        assert!(render(&hp, Path::new("t"), &owner(), "x", &opts()).is_err());
        assert!(
            render(
                &hp,
                Path::new("t"),
                &owner(),
                "x",
                &RenderOptions {
                    allow_host_path: true,
                    ..opts()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn homes_shared_and_per_user() {
        let pod = parse_template(XPRA).unwrap();
        let shared = RenderOptions {
            home: Home::Shared {
                claim: "homes".into(),
                mount: "/home".into(),
            },
            ..opts()
        };
        let r = render(&pod, Path::new("t"), &owner(), "xfce", &shared).unwrap();
        let m = &r.pod.spec.as_ref().unwrap().containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (m.mount_path.as_str(), m.sub_path.as_deref()),
            ("/home/alice", Some("alice"))
        );
        assert!(r.claim.is_none());
        let per = RenderOptions {
            home: Home::PerUser {
                storage_class: None,
                size: "5Gi".into(),
                mount: "/home".into(),
            },
            ..opts()
        };
        let r = render(&pod, Path::new("t"), &owner(), "xfce", &per).unwrap();
        let claim = r.claim.unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("alice-home"));
        let v = &r.pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(
            v.persistent_volume_claim.as_ref().unwrap().claim_name,
            "alice-home"
        );
    }

    #[test]
    fn dotfiles_restore_and_save_without_user_data_in_scripts() {
        let pod = parse_template(XPRA).unwrap();
        let opts = RenderOptions {
            home: Home::Dotfiles {
                claim: "dotfiles".into(),
                files: vec![".bashrc".into(), ".config/xfce4".into()],
                mount: "/home".into(),
            },
            ..opts()
        };
        let r = render(&pod, Path::new("t"), &owner(), "xfce", &opts).unwrap();
        let spec = r.pod.spec.as_ref().unwrap();
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, "switchboard-dotfiles");
        assert_eq!(
            init.image.as_deref(),
            Some("registry.example.org/xpra-xfce:3.1")
        );
        let script = init.command.as_ref().unwrap()[2].clone();
        assert_eq!(script, RESTORE);
        assert!(
            !script.contains("alice") && !script.contains("xfce"),
            "data travels in env, not in the script"
        );
        let c = &spec.containers[0];
        let stop = c
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(stop.command.as_ref().unwrap()[2], SAVE);
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["HOME"], "/home/alice");
        assert_eq!(env["SB_DOTFILE_LIST"], ".bashrc .config/xfce4");
        let m = c.volume_mounts.as_ref().unwrap();
        assert!(
            m.iter()
                .any(|m| m.mount_path == DOTFILES_DIR && m.sub_path.as_deref() == Some("alice"))
        );
        assert!(
            m.iter()
                .any(|m| m.mount_path == "/home/alice" && m.name == "switchboard-home")
        );
        let vols = spec.volumes.as_ref().unwrap();
        assert!(vols.iter().any(|v| v.empty_dir.is_some()));
        assert!(r.claim.is_none());
        // Unsafe file lists and a template's own preStop are refused.
        for bad in ["../x", "/etc/passwd", "a b", "*", "$(id)", ""] {
            let o = RenderOptions {
                home: Home::Dotfiles {
                    claim: "d".into(),
                    files: vec![bad.into()],
                    mount: "/home".into(),
                },
                ..opts.clone()
            };
            assert!(
                render(&pod, Path::new("t"), &owner(), "xfce", &o).is_err(),
                "{bad:?}"
            );
        }
        let own = format!(
            "{XPRA}      lifecycle: {{ preStop: {{ exec: {{ command: [\"true\"] }} }} }}\n"
        );
        assert!(
            render(
                &parse_template(&own).unwrap(),
                Path::new("t"),
                &owner(),
                "xfce",
                &opts
            )
            .is_err()
        );
    }

    #[test]
    fn dotfile_scripts_round_trip_in_a_real_shell() {
        // The two constant scripts, run by /bin/sh with the env the pod gets.
        let root = tempfile::tempdir().unwrap();
        let (home, saved) = (root.path().join("home"), root.path().join("saved"));
        std::fs::create_dir_all(home.join(".config/xfce4")).unwrap();
        std::fs::create_dir_all(&saved).unwrap();
        std::fs::write(home.join(".bashrc"), "alias ll='ls -l'\n").unwrap();
        std::fs::write(home.join(".config/xfce4/panel.xml"), "<panel/>").unwrap();
        std::fs::write(home.join("scratch.bin"), "not saved").unwrap();
        let run = |script: &str, home: &Path| {
            let st = std::process::Command::new("sh")
                .args(["-c", script])
                .env("HOME", home)
                .env("SB_DOTFILES", &saved)
                .env("SB_TYPE", "xfce")
                .env("SB_DOTFILE_LIST", ".bashrc .config/xfce4 .missing")
                .status()
                .unwrap();
            assert!(st.success(), "{script}");
        };
        run(SAVE, &home);
        assert!(saved.join("xfce.tar").is_file());
        let fresh = root.path().join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        run(RESTORE, &fresh);
        assert_eq!(
            std::fs::read_to_string(fresh.join(".bashrc")).unwrap(),
            "alias ll='ls -l'\n"
        );
        assert_eq!(
            std::fs::read_to_string(fresh.join(".config/xfce4/panel.xml")).unwrap(),
            "<panel/>"
        );
        assert!(
            !fresh.join("scratch.bin").exists(),
            "only listed files travel"
        );
        // Nothing saved yet: the restore is a no-op, not a failure.
        std::fs::remove_file(saved.join("xfce.tar")).unwrap();
        run(RESTORE, &fresh);
    }

    #[test]
    fn parse_rejects_non_pods_and_bombs() {
        assert!(
            parse_template("apiVersion: v1\nkind: Service\n")
                .unwrap_err()
                .contains("kind Pod")
        );
        assert!(parse_template("apiVersion: v1\nkind: Pod\nspec: { containers: [] }\n").is_err());
        assert!(parse_template(": : :").is_err());
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
        assert!(parse_template(bomb).is_err());
    }
}
