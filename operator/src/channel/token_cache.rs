//! Recent token reviews, so that an agent reconnecting (to this replica,
//! again and again when something is wrong) costs the API server one
//! TokenReview and one pod read per [`TTL`], not one per connection.
//!
//! Bounded: at most `capacity` entries, the oldest evicted first. Keyed by
//! the token's SHA-256, so the tokens themselves are not kept. An entry
//! lives [`TTL`] at most and never past the token's own `exp` claim (read
//! without verifying it: it can only shorten the entry's life, and the
//! review already said the token is genuine). Refusals are not cached: a
//! client sending garbage gets no cheaper answer than a review.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::time::Instant;

use super::auth::PodIdentity;

/// The longest a review is trusted without asking again.
pub const TTL: Duration = Duration::from_secs(30);

/// A token's cache key.
pub type Key = [u8; 32];

/// See the module documentation.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<Key, (PodIdentity, Instant)>,
    /// The keys of `entries`, oldest insert first: each exactly once.
    order: VecDeque<Key>,
}

impl TokenCache {
    /// An empty cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The key of `token`.
    pub fn key(token: &str) -> Key {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// The identity reviewed for `key`, unless it has expired by `now`.
    pub fn get(&self, key: &Key, now: Instant) -> Option<PodIdentity> {
        let (identity, expires) = self.entries.get(key)?;
        (now < *expires).then(|| identity.clone())
    }

    /// Remembers a review of `token` (whose key is `key`) made at `now`.
    pub fn insert(&mut self, key: Key, token: &str, identity: PodIdentity, now: Instant) {
        let lifetime = match expiry(token) {
            Some(exp) => exp
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(TTL),
            None => TTL,
        };
        if lifetime.is_zero() {
            return;
        }
        let entry = (identity, now + lifetime);
        if self.entries.insert(key, entry).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => self.entries.remove(&oldest),
                None => break,
            };
        }
    }

    /// Entries held (expired ones included, until evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The `exp` claim of a JWT, unverified; `None` when the token is not a
/// JWT with one.
pub fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodIdentity {
        PodIdentity {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            policy: "grpc".into(),
            revision: String::new(),
        }
    }

    /// An unsigned JWT with `exp` seconds from now.
    fn jwt_expiring_in(seconds: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({"aud": ["goaway.dev/agent"], "exp": now + seconds});
        format!(
            "{}.{}.sig",
            engine.encode(br#"{"alg":"RS256"}"#),
            engine.encode(claims.to_string())
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_is_trusted_for_the_ttl_at_most() {
        let mut cache = TokenCache::new(8);
        let key = TokenCache::key("opaque");
        cache.insert(key, "opaque", pod("a"), Instant::now());
        assert_eq!(cache.get(&key, Instant::now()), Some(pod("a")));
        assert_eq!(cache.get(&TokenCache::key("other"), Instant::now()), None);
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key, Instant::now()), Some(pod("a")));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_entry_outlives_its_token() {
        let mut cache = TokenCache::new(8);
        // Expires in 5s: trusted for 5s, not the TTL.
        let soon = jwt_expiring_in(5);
        let key = TokenCache::key(&soon);
        cache.insert(key, &soon, pod("a"), Instant::now());
        assert!(cache.get(&key, Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(cache.get(&key, Instant::now()), None);
        // Already expired: not kept at all.
        let expired = jwt_expiring_in(-10);
        cache.insert(
            TokenCache::key(&expired),
            &expired,
            pod("b"),
            Instant::now(),
        );
        assert_eq!(cache.get(&TokenCache::key(&expired), Instant::now()), None);
        // Far off: the TTL bounds it.
        let later = jwt_expiring_in(3600);
        assert!(
            expiry(&later).unwrap() > SystemTime::now() + Duration::from_secs(3000),
            "the claim is read"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_entries_go_first_when_full() {
        let mut cache = TokenCache::new(2);
        let now = Instant::now();
        for name in ["a", "b", "c"] {
            cache.insert(TokenCache::key(name), name, pod(name), now);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&TokenCache::key("a"), now), None);
        assert_eq!(cache.get(&TokenCache::key("c"), now), Some(pod("c")));
        // Refreshing an entry does not grow the cache.
        cache.insert(TokenCache::key("c"), "c", pod("c"), now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&TokenCache::key("b"), now), Some(pod("b")));
    }
}
