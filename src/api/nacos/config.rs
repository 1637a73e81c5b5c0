//! Nacos configs: key/value pairs of `DataMap`, so they are replicated, durable and readable
//! with dister's own `kv` commands. A config's content is the value of
//! `nacos/config/TENANT/GROUP/DATA_ID` and its type the value of
//! `nacos/config-type/TENANT/GROUP/DATA_ID`, both written in one entry. A listener's long poll
//! waits on `KeyWatch` for the content keys it names.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use md5::{Digest, Md5};

use super::naming::{DEFAULT_GROUP, PUBLIC, valid_id};
use super::{NacosError, Params, Reply, rendered, text};
use crate::actors::data_map::Pairs;
use crate::api::Api;
use crate::auth::hex;
use crate::wire::Consistency;

/// Where Nacos configs live in the key/value store.
pub const CONFIG_PREFIX: &str = "nacos/config/";
const TYPE_PREFIX: &str = "nacos/config-type/";

/// Longest long poll a listener may ask for.
const MAX_LONG_POLL: Duration = Duration::from_secs(120);

/// One config: tenant (namespace), group, data id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigId {
    /// Namespace; empty is the public one.
    pub tenant: String,
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
}

impl ConfigId {
    /// Checks each part as Nacos does; an empty tenant is the public namespace.
    pub fn new(data_id: &str, group: &str, tenant: &str) -> Result<ConfigId, NacosError> {
        if !valid_id(data_id) {
            return Err(NacosError::bad(format!("dataId {data_id:?} is not valid: letters, digits, -_.:")));
        }
        if !valid_id(group) {
            return Err(NacosError::bad(format!("group {group:?} is not valid: letters, digits, -_.:")));
        }
        if !tenant.is_empty() && !valid_id(tenant) {
            return Err(NacosError::bad(format!("tenant {tenant:?} is not valid: letters, digits, -_.:")));
        }
        Ok(ConfigId { tenant: tenant.into(), group: group.into(), data_id: data_id.into() })
    }

    fn from_params(p: &Params) -> Result<ConfigId, NacosError> {
        Self::new(p.required("dataId")?, p.get("group").unwrap_or(DEFAULT_GROUP), p.get("tenant").unwrap_or(""))
    }

    fn scope(&self) -> String {
        let tenant = if self.tenant.is_empty() { PUBLIC } else { &self.tenant };
        format!("{tenant}/{}/{}", self.group, self.data_id)
    }

    /// The key holding the content.
    pub fn key(&self) -> String {
        format!("{CONFIG_PREFIX}{}", self.scope())
    }

    fn type_key(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.scope())
    }
}

/// Nacos' MD5 of a content: lowercase hex; nothing for no config.
pub fn md5_of(content: Option<&str>) -> String {
    content.map(|c| hex(&Md5::digest(c.as_bytes()))).unwrap_or_default()
}

/// The config `id` as served (body, MD5, type) from `pairs`, rendered once per change.
fn rendered(api: &Api, pairs: &Pairs, id: &ConfigId) -> Option<Arc<rendered::Config>> {
    let key = id.key();
    let content = pairs.get(&key)?;
    Some(api.rendered.config(&key, content, pairs.get(&id.type_key()), pairs.len()))
}

/// `GET /cs/configs`: the raw content, 404 when there is none.
pub async fn get(api: web::Data<Api>, p: Params) -> Reply {
    let id = ConfigId::from_params(&p)?;
    let view = api.node.kv().view(Consistency::Linearizable).await?;
    let Some(config) = rendered(&api, &view.state, &id) else {
        return Err(NacosError(StatusCode::NOT_FOUND, "config data not exist".into()));
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Content-MD5", config.md5.as_str()))
        .insert_header(("Config-Type", config.kind()))
        .body(config.body.clone()))
}

/// `POST /cs/configs`: publishes (creates or replaces) a config; answers `true`.
pub async fn publish(api: web::Data<Api>, p: Params) -> Reply {
    let id = ConfigId::from_params(&p)?;
    let content = p.required("content")?;
    let kind = p.get("type").unwrap_or("text");
    api.node.kv().set(vec![(id.key(), content.to_string()), (id.type_key(), kind.to_string())]).await?;
    Ok(text("true"))
}

/// `DELETE /cs/configs`: removes a config (absent is fine); answers `true`.
pub async fn remove(api: web::Data<Api>, p: Params) -> Reply {
    let id = ConfigId::from_params(&p)?;
    api.node.kv().delete(vec![id.key(), id.type_key()]).await?;
    Ok(text("true"))
}

/// One line of `Listening-Configs`: the config and the MD5 the client has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The config.
    pub id: ConfigId,
    /// The client's MD5 of it ("" for none).
    pub md5: String,
}

/// Parses `Listening-Configs`: lines `dataId^2group^2md5[^2tenant]^1`.
pub fn parse_probes(s: &str) -> Result<Vec<Probe>, NacosError> {
    s.split('\u{1}')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\u{2}').collect();
            match f.as_slice() {
                [d, g, m] => Ok(Probe { id: ConfigId::new(d, g, "")?, md5: m.to_string() }),
                [d, g, m, t] => Ok(Probe { id: ConfigId::new(d, g, t)?, md5: m.to_string() }),
                _ => {
                    Err(NacosError::bad(format!("Listening-Configs line {line:?} is not dataId^2group^2md5[^2tenant]")))
                }
            }
        })
        .collect()
}

/// The answer naming the changed configs, URL-encoded as Nacos sends it.
pub fn changed_body(changed: &[&Probe]) -> String {
    let mut s = String::new();
    for p in changed {
        s.push_str(&p.id.data_id);
        s.push('\u{2}');
        s.push_str(&p.id.group);
        if !p.id.tenant.is_empty() {
            s.push('\u{2}');
            s.push_str(&p.id.tenant);
        }
        s.push('\u{1}');
    }
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `POST /cs/configs/listener`: answers at once with the configs whose MD5 differs from the
/// client's; else waits (`Long-Pulling-Timeout` ms, at most two minutes) for one of them to
/// change anywhere in the cluster, and answers empty if none does.
pub async fn listen(api: web::Data<Api>, req: HttpRequest, p: Params) -> Reply {
    let timeout = match req.headers().get("Long-Pulling-Timeout") {
        Some(v) => {
            let ms = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| NacosError::bad(format!("Long-Pulling-Timeout must be milliseconds, not {v:?}")))?;
            Duration::from_millis(ms).min(MAX_LONG_POLL)
        }
        None => Duration::from_secs(30),
    };
    let no_hangup = req
        .headers()
        .get("Long-Pulling-Timeout-No-Hangup")
        .is_some_and(|v| v.to_str().is_ok_and(|s| s.eq_ignore_ascii_case("true")));
    let probes = parse_probes(p.required("Listening-Configs")?)?;
    let keys: Vec<String> = probes.iter().map(|pr| pr.id.key()).collect();
    let no_md5 = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Watch first, then read at the index the watch has seen: a change is either
        // in what is read or wakes the watch, never lost between the two. The guard
        // drops the watch however this ends (the client may hang up mid-wait, and
        // actix drops this future then).
        let watch = api.node.kv().watch_keys(keys.clone()).await?;
        let _guard = Unwatch { node: &api.node, id: watch.id };
        // The view and renderings are dropped before the wait: a poller pins no old state.
        let changed: Vec<&Probe> = {
            let view = api.node.kv().view_at(watch.seen).await?;
            let current: Vec<_> = probes.iter().map(|pr| rendered(&api, &view.state, &pr.id)).collect();
            probes
                .iter()
                .zip(&current)
                .filter(|(pr, c)| c.as_ref().map_or(&no_md5, |c| &c.md5) != &pr.md5)
                .map(|(pr, _)| pr)
                .collect()
        };
        if !changed.is_empty() || no_hangup {
            return Ok(text_owned(changed_body(&changed)));
        }
        match tokio::time::timeout_at(deadline, watch.changed).await {
            // Changed (perhaps back to what the client has): look again.
            Ok(_) => continue,
            Err(_) => return Ok(text_owned(String::new())),
        }
    }
}

/// Drops a watch when it goes out of scope.
struct Unwatch<'a> {
    node: &'a crate::node::NodeHandle,
    id: u64,
}

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.node.kv().unwatch(self.id);
    }
}

fn text_owned(body: String) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_with_and_without_tenant_and_answers_encode() {
        let probes = parse_probes("a.yaml\u{2}G\u{2}abc\u{1}b\u{2}G\u{2}\u{2}dev\u{1}").unwrap();
        assert_eq!(probes.len(), 2);
        assert_eq!(
            (probes[0].id.tenant.as_str(), probes[1].id.tenant.as_str(), probes[1].md5.as_str()),
            ("", "dev", "")
        );
        assert_eq!(probes[1].id.key(), "nacos/config/dev/G/b");
        assert_eq!(probes[0].id.key(), "nacos/config/public/G/a.yaml");
        assert_eq!(changed_body(&[&probes[0], &probes[1]]), "a.yaml%02G%01b%02G%02dev%01");
        assert!(parse_probes("only\u{2}two\u{1}").is_err());
        assert!(parse_probes("bad/id\u{2}G\u{2}x\u{1}").is_err());
        assert_eq!(md5_of(Some("hello")), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(md5_of(None), "");
    }
}
