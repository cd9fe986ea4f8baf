//! Who may pull: with `server.htpasswd` set, every `/v2/` request needs
//! Basic credentials that match a bcrypt entry of that file (`user:$2y$…`,
//! as `htpasswd -B` writes them). Without it the mirror is anonymous, and
//! credentials a client sends anyway (the Docker daemon forwards its Docker
//! Hub login) are ignored.

use base64::Engine as _;
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub struct Htpasswd {
    users: HashMap<String, String>,
    /// Verified `Authorization` values (by their sha256): bcrypt is slow on
    /// purpose, and a pull is dozens of requests.
    verified: moka::future::Cache<[u8; 32], ()>,
}

impl Htpasswd {
    /// Reads the file; an error names the file and the line.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("server.htpasswd: cannot read {}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("server.htpasswd: {} line {}: expected user:bcrypt-hash", path.display(), i + 1));
            };
            if !hash.starts_with("$2") {
                return Err(format!(
                    "server.htpasswd: {} line {}: only bcrypt entries are accepted (create them with `htpasswd -B`)",
                    path.display(),
                    i + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if users.is_empty() {
            return Err(format!("server.htpasswd: {} has no users", path.display()));
        }
        Ok(Htpasswd { users, verified: moka::future::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(300)).build() })
    }

    /// Whether an `Authorization` header value holds valid credentials.
    pub async fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else { return false };
        let key: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
        if self.verified.contains_key(&key) {
            return true;
        }
        let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let Ok(pair) = String::from_utf8(decoded) else { return false };
        let Some((user, password)) = pair.split_once(':') else { return false };
        let Some(hash) = self.users.get(user).cloned() else { return false };
        // bcrypt takes milliseconds of CPU by design: off the async workers.
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await.unwrap_or(false);
        if ok {
            self.verified.insert(key, ()).await;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bcrypt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        std::fs::write(&f, format!("# users\nci:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
        let h = Htpasswd::load(&f).unwrap();
        let basic = |u: &str, p: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        assert!(h.allows(Some(&basic("ci", "s3cret"))).await);
        assert!(h.allows(Some(&basic("ci", "s3cret"))).await);
        assert!(!h.allows(Some(&basic("ci", "wrong"))).await);
        assert!(!h.allows(Some(&basic("nobody", "s3cret"))).await);
        assert!(!h.allows(Some("Bearer x")).await && !h.allows(None).await);
        std::fs::write(&f, "ci:{SHA}abc\n").unwrap();
        assert!(Htpasswd::load(&f).err().unwrap().contains("bcrypt"));
    }
}
