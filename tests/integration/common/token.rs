//! A Docker-Hub-style token server: `GET /token?service=…&scope=…`,
//! anonymous or with Basic credentials, answering an ES256 JWT that
//! registry:2 (`auth: token`) accepts. Public repositories may be pulled
//! anonymously; `private/*` and every push need the credentials.

use super::{respond, serve, Server};
use base64::Engine as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub const USER: &str = "lab";
pub const PASSWORD: &str = "labpass";

pub struct TokenServer {
    server: Server,
    signer: Arc<Signer>,
    pub cert_pem: String,
    /// Tokens handed out so far.
    pub issued: Arc<AtomicUsize>,
}

struct Signer {
    key: jsonwebtoken::EncodingKey,
    cert_der_b64: String,
}

impl Signer {
    fn mint(&self, grants: &[(String, Vec<String>)]) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let access: Vec<serde_json::Value> =
            grants.iter().map(|(name, actions)| serde_json::json!({"type": "repository", "name": name, "actions": actions})).collect();
        let claims = serde_json::json!({
            "iss": "auth.docker.io", "sub": "test", "aud": "registry.docker.io",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_id()),
            "access": access,
        });
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.typ = Some("JWT".into());
        h.x5c = Some(vec![self.cert_der_b64.clone()]);
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl TokenServer {
    pub async fn start() -> TokenServer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["token-issuer".to_string()]).unwrap();
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyCertSign];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let signer = Arc::new(Signer {
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
        });
        let issued = Arc::new(AtomicUsize::new(0));
        let (s, n) = (signer.clone(), issued.clone());
        let server = serve(move |req: http::Request<hyper::body::Incoming>| {
            let (s, n) = (s.clone(), n.clone());
            async move {
                if req.uri().path() != "/token" {
                    return respond(404, "not found");
                }
                let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
                let authed = match req.headers().get("authorization") {
                    None => false,
                    Some(v) if v.to_str().ok() == Some(expected.as_str()) => true,
                    Some(_) => return respond(401, r#"{"details":"incorrect username or password"}"#),
                };
                let mut grants = Vec::new();
                for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                    if k != "scope" {
                        continue;
                    }
                    // repository:<name>:<actions>
                    let mut parts = v.splitn(3, ':');
                    let (Some("repository"), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else { continue };
                    let allowed: Vec<String> = actions
                        .split(',')
                        .filter(|a| match *a {
                            "pull" => authed || !name.starts_with("private/"),
                            "push" => authed,
                            _ => false,
                        })
                        .map(str::to_owned)
                        .collect();
                    grants.push((name.to_owned(), allowed));
                }
                n.fetch_add(1, Ordering::SeqCst);
                let token = s.mint(&grants);
                let body =
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 300, "issued_at": "2026-01-01T00:00:00Z"});
                http::Response::builder().header("content-type", "application/json").body(super::full(body.to_string())).unwrap()
            }
        })
        .await;
        TokenServer { server, signer, cert_pem: cert.pem(), issued }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A token for `repo` with `actions`, for seeding.
    pub fn mint(&self, repo: &str, actions: &[&str]) -> String {
        self.signer.mint(&[(repo.to_owned(), actions.iter().map(|a| a.to_string()).collect())])
    }
}
