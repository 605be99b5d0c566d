//! Optional authentication and authorisation of `/metrics`, as controller-runtime's metrics
//! server does it: the bearer token is checked with a Kubernetes `TokenReview`, and the user
//! it names must be allowed `get` on the non-resource URL `/metrics` by a
//! `SubjectAccessReview`. No token (or one the API server does not accept) is 401, a user
//! without the permission 403. Answers are cached per token (its SHA-256, never the token
//! itself) for a bounded time and in a bounded table, so a scrape every few seconds costs the
//! API server two reviews per TTL at most; an API error is never cached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The shortest and longest time a review's answer may be reused.
pub const CACHE_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(600));
/// The most tokens whose answers are kept (the oldest go first).
pub const CACHE_CAPACITY_MAX: usize = 65_536;

/// What a token may do with the protected path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The token names a user allowed `get` on the path.
    Allowed,
    /// No token, or one the API server does not accept: 401.
    Unauthenticated,
    /// A valid user without the permission: 403.
    Forbidden,
}

/// Why a review could not be made (the request is answered 500 and nothing is cached).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TokenReview: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("SubjectAccessReview for {user}: {source}")]
    SubjectAccessReview {
        user: String,
        #[source]
        source: kube::Error,
    },
}

/// How long and how many answers are cached.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            capacity: 1024,
        }
    }
}

impl CacheConfig {
    /// Checks the TTL and capacity are within their bounds.
    pub fn validated(self) -> Result<CacheConfig, String> {
        let (min, max) = CACHE_TTL_RANGE;
        if self.ttl < min || self.ttl > max {
            return Err(format!(
                "metrics auth cache TTL must be between {}s and {}s",
                min.as_secs(),
                max.as_secs()
            ));
        }
        if self.capacity == 0 || self.capacity > CACHE_CAPACITY_MAX {
            return Err(format!(
                "metrics auth cache size must be between 1 and {CACHE_CAPACITY_MAX}"
            ));
        }
        Ok(self)
    }
}

/// Reviews tokens against the API server, with the cache in front.
pub struct MetricsAuth {
    client: kube::Client,
    config: CacheConfig,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for MetricsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAuth")
            .field("config", &self.config)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

type Key = [u8; 32];

#[derive(Debug, Default)]
struct Cache {
    answers: HashMap<Key, (Decision, Instant)>,
    /// Insertion order, for eviction at capacity.
    order: VecDeque<Key>,
}

impl Cache {
    /// The answer for `key` unless it has expired (an expired one stays until it is replaced
    /// or evicted: `answers` and `order` always hold the same keys).
    fn get(&self, key: &Key, now: Instant) -> Option<Decision> {
        self.answers
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(decision, _)| *decision)
    }

    fn put(&mut self, key: Key, decision: Decision, expires: Instant, capacity: usize) {
        if self.answers.insert(key, (decision, expires)).is_none() {
            self.order.push_back(key);
        }
        while self.answers.len() > capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.answers.remove(&oldest);
        }
    }

    fn len(&self) -> usize {
        self.answers.len()
    }
}

impl MetricsAuth {
    pub fn new(client: kube::Client, config: CacheConfig) -> MetricsAuth {
        MetricsAuth {
            client,
            config,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Answers cached now (tests, logs).
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or_default()
    }

    /// What `token` may do with `verb` on `path`, from the cache or two reviews.
    pub async fn check(&self, token: &str, verb: &str, path: &str) -> Result<Decision, AuthError> {
        let key = cache_key(token, verb, path);
        let now = Instant::now();
        if let Some(decision) = self.cache.lock().ok().and_then(|c| c.get(&key, now)) {
            return Ok(decision);
        }
        let decision = self.review(token, verb, path).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(
                key,
                decision,
                Instant::now() + self.config.ttl,
                self.config.capacity,
            );
        }
        Ok(decision)
    }

    async fn review(&self, token: &str, verb: &str, path: &str) -> Result<Decision, AuthError> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(AuthError::TokenReview)?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                debug!(error = ?status.error, "metrics: token not authenticated");
                return Ok(Decision::Unauthenticated);
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = access
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::SubjectAccessReview {
                user: name.clone(),
                source,
            })?;
        if answer.status.is_some_and(|s| s.allowed) {
            Ok(Decision::Allowed)
        } else {
            debug!(user = name, path, "metrics: user not allowed");
            Ok(Decision::Forbidden)
        }
    }
}

fn cache_key(token: &str, verb: &str, path: &str) -> Key {
    let mut hash = Sha256::new();
    hash.update(verb.as_bytes());
    hash.update([0]);
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(token.as_bytes());
    hash.finalize().into()
}

/// The bearer token of a request, if it carries one.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Axum middleware: lets the request through only when its token is allowed.
pub async fn require_token(
    State(auth): State<Arc<MetricsAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized\n",
        )
            .into_response()
    };
    let Some(token) = bearer(&request) else {
        return unauthorized();
    };
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_string();
    match auth.check(token, &verb, &path).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => unauthorized(),
        Ok(Decision::Forbidden) => (StatusCode::FORBIDDEN, "Forbidden\n").into_response(),
        Err(e) => {
            warn!(error = %e, "metrics: cannot review the token");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot review the token\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_expires() {
        let mut cache = Cache::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        for i in 0..5u8 {
            cache.put([i; 32], Decision::Allowed, later, 3);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&[0; 32], now), None, "the oldest went first");
        assert_eq!(cache.get(&[4; 32], now), Some(Decision::Allowed));
        assert_eq!(cache.get(&[4; 32], later), None, "expired");
        cache.put(
            [4; 32],
            Decision::Forbidden,
            later + Duration::from_secs(1),
            3,
        );
        assert_eq!(
            cache.get(&[4; 32], later),
            Some(Decision::Forbidden),
            "replaced"
        );
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn keys_separate_tokens_verbs_and_paths() {
        let a = cache_key("t", "get", "/metrics");
        assert_ne!(a, cache_key("u", "get", "/metrics"));
        assert_ne!(a, cache_key("t", "post", "/metrics"));
        assert_ne!(a, cache_key("t", "get", "/metric"));
        assert_eq!(a, cache_key("t", "get", "/metrics"));
    }

    #[test]
    fn cache_config_bounds() {
        assert!(CacheConfig::default().validated().is_ok());
        let ttl = |s| CacheConfig {
            ttl: Duration::from_secs(s),
            capacity: 10,
        };
        assert!(ttl(0).validated().is_err());
        assert!(ttl(601).validated().is_err());
        assert!(ttl(600).validated().is_ok());
        let size = |capacity| CacheConfig {
            ttl: Duration::from_secs(5),
            capacity,
        };
        assert!(size(0).validated().is_err());
        assert!(size(CACHE_CAPACITY_MAX + 1).validated().is_err());
    }
}
