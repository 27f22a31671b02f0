//! Teams (DESIGN section 8): who may call which model, and each team's share
//! of the cache. The policy file is re-read when it changes; a malformed file
//! keeps the last good policy in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::identity::Caller;

/// One team of the policy file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Team {
    /// IAM ARNs (globs with `*`) whose callers belong to the team.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Claims a verified JWT must carry, every one equal, for its caller to belong.
    #[serde(default)]
    pub jwt: BTreeMap<String, String>,
    /// Model names (exact, or globs with `*`) the team may call.
    #[serde(default)]
    pub models: Vec<String>,
    /// The fraction of the cache budget the team is guaranteed.
    #[serde(default)]
    pub cache_share: Option<f64>,
}

/// The policy file: `{"teams": {...}, "alb_oidc": false}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub teams: BTreeMap<String, Team>,
    /// Whether the ALB in front authenticates with OIDC, so its `x-amzn-oidc-*`
    /// headers can be believed (the ALB overwrites them on every request it
    /// authenticates). Off by default: without it, ALB callers have no identity.
    #[serde(default)]
    pub alb_oidc: bool,
}

impl Policy {
    /// Parses and checks a policy: team names are plain names, shares lie in
    /// (0, 1] and add up to at most 1.
    pub fn parse(bytes: &[u8]) -> Result<Policy, String> {
        let policy: Policy = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut total = 0.0;
        for (name, team) in &policy.teams {
            crate::repository::validate_segment("team name", name).map_err(|e| e.to_string())?;
            if let Some(share) = team.cache_share {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(format!(
                        "team {name:?}: cache_share {share} must be in (0, 1]"
                    ));
                }
                total += share;
            }
            if team.principals.is_empty() && team.jwt.is_empty() {
                return Err(format!(
                    "team {name:?} has neither principals nor jwt claims: nobody could belong to it"
                ));
            }
        }
        if total > 1.0 + 1e-9 {
            return Err(format!("cache shares add up to {total}, more than 1"));
        }
        Ok(policy)
    }

    /// The teams `caller` belongs to, in name order.
    pub fn teams_of(&self, caller: &Caller) -> Vec<&str> {
        self.teams
            .iter()
            .filter(|(_, team)| {
                let by_arn = caller
                    .arn
                    .as_deref()
                    .is_some_and(|arn| team.principals.iter().any(|p| glob_match(p, arn)));
                let by_jwt = !team.jwt.is_empty()
                    && team
                        .jwt
                        .iter()
                        .all(|(claim, want)| caller.claims.get(claim) == Some(want));
                by_arn || by_jwt
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Whether any of `teams` lists `model` (exactly or by glob).
    pub fn grants(&self, teams: &[&str], model: &str) -> bool {
        teams
            .iter()
            .filter_map(|t| self.teams.get(*t))
            .any(|team| team.models.iter().any(|m| glob_match(m, model)))
    }

    /// The team a model's cache bytes count against: its owner when the
    /// manifest names one, else the first team (by name) that may call it.
    pub fn team_for(&self, model: &str, owner: Option<&str>) -> Option<String> {
        if let Some(owner) = owner {
            return Some(owner.to_string());
        }
        self.teams
            .iter()
            .find(|(_, team)| team.models.iter().any(|m| glob_match(m, model)))
            .map(|(name, _)| name.clone())
    }

    /// Each team's guaranteed share of the cache, as a fraction.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        self.teams
            .iter()
            .filter_map(|(name, team)| team.cache_share.map(|s| (name.clone(), s)))
            .collect()
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// What the status event shows of the policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    pub path: Option<PathBuf>,
    /// Whether a policy is in force (false with a path means every request is refused).
    pub loaded: bool,
    pub teams: Vec<String>,
    /// Seconds since the policy in force was read.
    pub loaded_seconds_ago: Option<u64>,
    /// Why the file on disk is not the policy in force, if it is not.
    pub last_error: Option<String>,
}

/// The access policy in force, re-read from its file when the file changes.
///
/// The file is only ever read by a background thread (every `interval`, at
/// least every 50 ms apart): a request or health check never waits on the
/// file, so a policy file that blocks (a FIFO, a stalled network mount) can
/// only stall that thread, and the last good policy stays in force.
#[derive(Debug)]
pub struct AccessControl {
    path: Option<PathBuf>,
    /// The policy in force and what is known of the file. A std Mutex, held
    /// only to copy or swap these fields; never across file I/O.
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    policy: Option<Arc<Policy>>,
    loaded_at: Option<Instant>,
    last_error: Option<String>,
    /// (modified time, length) of the file last read, to notice changes.
    fingerprint: Option<(SystemTime, u64)>,
}

/// The outcome of asking for the policy in force.
#[derive(Debug, Clone)]
pub enum Access {
    /// No policy configured: every caller may use every model.
    Open,
    Policy(Arc<Policy>),
    /// A policy is configured but none could ever be read: refuse everything.
    Unavailable(String),
}

/// How long start-up waits for the first read of the policy file. A file that
/// takes longer leaves every request refused (503 `policy_unavailable`) until
/// it has been read, rather than start-up hanging.
const FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// A policy file larger than this is refused (policies are a few KB).
const MAX_POLICY_BYTES: u64 = 1 << 20;

impl AccessControl {
    /// `path` None: no policy, everything open. Otherwise starts the thread
    /// that reads the file, and waits (at most 2 s) for its first read.
    pub fn new(path: Option<&Path>, interval: Duration) -> AccessControl {
        let control = AccessControl {
            path: path.map(Path::to_path_buf),
            state: Arc::new(Mutex::new(State::default())),
        };
        let Some(path) = control.path.clone() else {
            return control;
        };
        let (first_read, wait) = std::sync::mpsc::channel();
        // The thread holds the state weakly: it ends once the control is dropped.
        let state = Arc::downgrade(&control.state);
        let interval = interval.max(Duration::from_millis(50));
        let spawned = std::thread::Builder::new()
            .name("policy-reload".into())
            .spawn(move || {
                loop {
                    let Some(state) = state.upgrade() else { return };
                    refresh(&path, &state);
                    drop(state);
                    let _ = first_read.send(());
                    std::thread::sleep(interval);
                }
            });
        match spawned {
            Ok(_) => {
                if wait.recv_timeout(FIRST_READ_WAIT).is_err() {
                    let mut state = control.lock();
                    if state.policy.is_none() && state.last_error.is_none() {
                        state.last_error = Some(format!(
                            "reading the file has not finished after {} s (a FIFO or a stalled mount?)",
                            FIRST_READ_WAIT.as_secs()
                        ));
                    }
                }
            }
            Err(error) => {
                control.lock().last_error =
                    Some(format!("cannot start the policy reload thread: {error}"));
            }
        }
        control
    }

    /// The policy in force. Never touches the file.
    pub fn current(&self) -> Access {
        let Some(path) = &self.path else {
            return Access::Open;
        };
        let state = self.lock();
        match &state.policy {
            Some(policy) => Access::Policy(policy.clone()),
            None => Access::Unavailable(format!(
                "the access policy {} could not be loaded ({}); every request is refused until it is fixed",
                path.display(),
                state
                    .last_error
                    .as_deref()
                    .unwrap_or("it has not been read yet")
            )),
        }
    }

    pub fn status(&self) -> PolicyStatus {
        let state = self.lock();
        PolicyStatus {
            path: self.path.clone(),
            loaded: state.policy.is_some(),
            teams: state
                .policy
                .as_ref()
                .map(|p| p.teams.keys().cloned().collect())
                .unwrap_or_default(),
            loaded_seconds_ago: state.loaded_at.map(|at| at.elapsed().as_secs()),
            last_error: state.last_error.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Re-reads the file if it changed since the last read, then swaps the
/// outcome in. The file is read with no lock held.
fn refresh(path: &Path, state: &Mutex<State>) {
    let fingerprint = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    if fingerprint.is_some() && fingerprint == lock(state).fingerprint {
        return;
    }
    let outcome = read_policy_file(path).and_then(|bytes| Policy::parse(&bytes));
    let mut state = lock(state);
    state.fingerprint = fingerprint;
    match outcome {
        Ok(policy) => {
            tracing::info!(path = %path.display(), teams = ?policy.teams.keys().collect::<Vec<_>>(), "access policy loaded");
            state.policy = Some(Arc::new(policy));
            state.loaded_at = Some(Instant::now());
            state.last_error = None;
        }
        Err(error) => {
            if state.policy.is_some() {
                tracing::error!(path = %path.display(), %error, "access policy cannot be used; the last good policy stays in force");
            } else {
                tracing::error!(path = %path.display(), %error, "access policy cannot be used and none was ever loaded; refusing every request");
            }
            state.last_error = Some(error);
        }
    }
}

/// The policy file's bytes: opened without blocking (a FIFO's open would wait
/// for a writer), refused unless it is a regular file, read to at most
/// [`MAX_POLICY_BYTES`] (plus one byte, to tell a larger file).
fn read_policy_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let kind = file.metadata().map_err(|e| e.to_string())?.file_type();
    if !kind.is_file() {
        return Err(format!(
            "it is not a regular file ({})",
            if kind.is_dir() {
                "a directory"
            } else {
                "a FIFO, socket or device"
            }
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(format!("it is larger than {MAX_POLICY_BYTES} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
      "teams": {
        "fraud":  {"principals": ["arn:aws:iam::111111111111:role/fraud-*"], "jwt": {"team": "fraud"},
                   "models": ["fraud-*", "shared-*"], "cache_share": 0.5},
        "search": {"principals": ["arn:aws:iam::222222222222:role/search-api"], "models": ["ranker"]}
      }
    }"#;

    fn caller(arn: Option<&str>, claims: &[(&str, &str)]) -> Caller {
        Caller {
            arn: arn.map(str::to_string),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source: "test",
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("fraud-*", "fraud-model"));
        assert!(glob_match("fraud-*", "fraud-"));
        assert!(!glob_match("fraud-*", "fraud"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match(
            "arn:aws:iam::1:role/*",
            "arn:aws:iam::1:role/x/y"
        ));
        assert!(!glob_match("ranker", "ranker2"));
    }

    #[test]
    fn membership_by_arn_or_every_jwt_claim() {
        let policy = Policy::parse(POLICY.as_bytes()).unwrap();
        assert_eq!(
            policy.teams_of(&caller(
                Some("arn:aws:iam::111111111111:role/fraud-scorer"),
                &[]
            )),
            ["fraud"]
        );
        assert_eq!(
            policy.teams_of(&caller(
                Some("arn:aws:iam::222222222222:role/search-api"),
                &[]
            )),
            ["search"]
        );
        assert_eq!(
            policy.teams_of(&caller(None, &[("team", "fraud"), ("sub", "u1")])),
            ["fraud"]
        );
        assert!(
            policy
                .teams_of(&caller(None, &[("team", "search")]))
                .is_empty()
        );
        assert!(
            policy
                .teams_of(&caller(Some("arn:aws:iam::999999999999:role/fraud-x"), &[]))
                .is_empty()
        );
        assert!(policy.teams_of(&caller(None, &[])).is_empty());
    }

    #[test]
    fn grants_and_attribution() {
        let policy = Policy::parse(POLICY.as_bytes()).unwrap();
        assert!(policy.grants(&["fraud"], "shared-embed"));
        assert!(!policy.grants(&["fraud"], "ranker"));
        assert!(policy.grants(&["search"], "ranker"));
        assert_eq!(policy.team_for("ranker", None).as_deref(), Some("search"));
        assert_eq!(
            policy.team_for("ranker", Some("fraud")).as_deref(),
            Some("fraud")
        );
        assert_eq!(policy.team_for("other", None), None);
        assert_eq!(
            policy.shares(),
            BTreeMap::from([("fraud".to_string(), 0.5)])
        );
    }

    #[test]
    fn rejects_malformed_policies() {
        for bad in [
            r#"{"teams": {"a": {"principals": ["x"], "cache_share": 1.5}}}"#,
            r#"{"teams": {"a": {"principals": ["x"], "cache_share": 0.6}, "b": {"principals": ["y"], "cache_share": 0.6}}}"#,
            r#"{"teams": {"a": {"principals": ["x"], "modles": ["m"]}}}"#,
            r#"{"teams": {"a": {"models": ["m"]}}}"#,
            r#"{"teams": {"../a": {"principals": ["x"]}}}"#,
            r#"{"teams": "#,
        ] {
            assert!(Policy::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    /// Waits (at most 5 s) until `control`'s policy satisfies `done`: the
    /// background thread reloads it every 50 ms at most.
    fn eventually(control: &AccessControl, done: impl Fn(&Access) -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if done(&control.current()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_fifo_never_blocks_and_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let fifo = |path: &Path| {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        // A FIFO from the start: start-up returns, and refuses with a reason.
        fifo(&path);
        let started = Instant::now();
        let control = AccessControl::new(Some(&path), Duration::ZERO);
        assert!(
            started.elapsed() < FIRST_READ_WAIT,
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(control.current(), Access::Unavailable(m) if m.contains("not a regular file")),
            "{:?}",
            control.current()
        );
        // Then a good file: loaded.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, POLICY).unwrap();
        assert!(eventually(&control, |a| matches!(a, Access::Policy(_))));
        // Then a FIFO again: the last good policy stays, and asking is instant.
        std::fs::remove_file(&path).unwrap();
        fifo(&path);
        assert!(eventually(&control, |_| control
            .status()
            .last_error
            .is_some()));
        let asked = Instant::now();
        assert!(matches!(control.current(), Access::Policy(p) if p.teams.len() == 2));
        assert!(asked.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_malformed_file_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, POLICY).unwrap();
        let control = AccessControl::new(Some(&path), Duration::ZERO);
        assert!(matches!(control.current(), Access::Policy(p) if p.teams.len() == 2));
        std::fs::write(&path, "{ not json").unwrap();
        assert!(eventually(&control, |_| control
            .status()
            .last_error
            .is_some()));
        assert!(matches!(control.current(), Access::Policy(p) if p.teams.len() == 2));
        let status = control.status();
        assert!(status.loaded && status.last_error.is_some());
        std::fs::write(
            &path,
            r#"{"teams": {"solo": {"principals": ["*"], "models": ["*"]}}}"#,
        )
        .unwrap();
        assert!(eventually(
            &control,
            |a| matches!(a, Access::Policy(p) if p.teams.len() == 1)
        ));
        assert!(control.status().last_error.is_none());
    }

    #[test]
    fn no_good_policy_ever_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, "{ not json").unwrap();
        let control = AccessControl::new(Some(&path), Duration::ZERO);
        assert!(
            matches!(control.current(), Access::Unavailable(message) if message.contains("refused"))
        );
        let missing = AccessControl::new(Some(&dir.path().join("absent.json")), Duration::ZERO);
        assert!(matches!(missing.current(), Access::Unavailable(_)));
        assert!(matches!(
            AccessControl::new(None, Duration::ZERO).current(),
            Access::Open
        ));
    }
}
