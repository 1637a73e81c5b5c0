//! The Nacos 1.x Open API, under `/nacos/v1` on the HTTP port, so that applications written
//! against Nacos work against dister unchanged. Nothing is stored twice: instances and
//! services are the registry's (a Nacos service is a registry service whose name carries its
//! namespace and group, see [`naming::ServiceId`]); configs are key/value pairs of `DataMap`
//! under `nacos/config/` (see [`config::ConfigId`]); config listeners wait on `KeyWatch`.
//! Handlers parse Nacos' parameters, call `NodeHandle`, and answer in Nacos' shapes.
//!
//! Parameters come as Nacos clients send them: in the query string, in a form body, or both.
//! Errors are a status and a plain-text reason, as Nacos answers them; never a panic.

pub mod config;
pub mod naming;
pub mod rendered;

use std::collections::BTreeMap;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use serde_json::json;

use crate::api::Api;
use crate::error::ApiError;

/// The routes under `/nacos/v1` and Nacos' metrics path, for `App::configure`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Nacos serves its Prometheus metrics here (Spring's actuator): the same text as /metrics.
    cfg.route("/nacos/actuator/prometheus", web::get().to(crate::api::dister::metrics));
    cfg.service(
        web::scope("/nacos/v1")
            .route("/auth/login", web::post().to(login))
            .route("/auth/users/login", web::post().to(login))
            .route("/ns/instance", web::post().to(naming::register))
            .route("/ns/instance", web::put().to(naming::register))
            .route("/ns/instance", web::delete().to(naming::deregister))
            .route("/ns/instance", web::get().to(naming::detail))
            .route("/ns/instance/list", web::get().to(naming::list))
            .route("/ns/instance/beat", web::put().to(naming::beat))
            .route("/ns/service", web::post().to(naming::service_create))
            .route("/ns/service", web::put().to(naming::service_update))
            .route("/ns/service", web::delete().to(naming::service_delete))
            .route("/ns/service", web::get().to(naming::service_get))
            .route("/ns/service/list", web::get().to(naming::service_list))
            .route("/ns/operator/metrics", web::get().to(naming::metrics))
            .route("/ns/operator/servers", web::get().to(naming::servers))
            .route("/cs/configs", web::get().to(config::get))
            .route("/cs/configs", web::post().to(config::publish))
            .route("/cs/configs", web::delete().to(config::remove))
            .route("/cs/configs/listener", web::post().to(config::listen))
            .default_service(web::to(|req: HttpRequest| async move {
                NacosError(StatusCode::NOT_FOUND, format!("no such path or method: {} {}", req.method(), req.path()))
                    .error_response()
            })),
    );
}

/// A Nacos error: a status and a reason in plain text.
#[derive(Debug)]
pub struct NacosError(pub StatusCode, pub String);

impl NacosError {
    /// A 400 for bad input.
    pub fn bad(message: impl Into<String>) -> Self {
        NacosError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<(StatusCode, String)> for NacosError {
    fn from((status, message): (StatusCode, String)) -> Self {
        NacosError(status, message)
    }
}

impl From<ApiError> for NacosError {
    fn from(e: ApiError) -> Self {
        NacosError(crate::api::status_of(&e), e.to_string())
    }
}

impl std::fmt::Display for NacosError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// Lets handlers return `Result<_, NacosError>`: the error is Nacos' status and
/// `caused: REASON;`.
impl ResponseError for NacosError {
    fn status_code(&self) -> StatusCode {
        self.0
    }

    fn error_response(&self) -> HttpResponse {
        let mut response =
            HttpResponse::build(self.0).content_type("text/plain; charset=utf-8").body(format!("caused: {};", self.1));
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Nacos clients try the next server on a 5xx; others read when to come back.
            crate::api::with_retry_after(&mut response, None);
        }
        response
    }
}

/// A handler's answer.
pub type Reply = Result<HttpResponse, NacosError>;

/// The plain `ok` naming writes answer.
pub fn text(body: &'static str) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(body)
}

/// A request's parameters: the query string, then a form body (which wins on a clash).
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Reads the query string and, if the body is a form, the body.
    pub fn of(req: &HttpRequest, body: &[u8]) -> Params {
        let mut map: BTreeMap<String, String> =
            form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
        let is_form = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form || (!body.is_empty() && req.headers().get("content-type").is_none()) {
            map.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(map)
    }

    /// Sets a parameter.
    pub fn insert(&mut self, name: String, value: String) {
        self.0.insert(name, value);
    }

    /// A parameter, if present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A parameter that must be present.
    pub fn required(&self, name: &str) -> Result<&str, NacosError> {
        self.get(name).ok_or_else(|| NacosError::bad(format!("Required parameter '{name}' is not present")))
    }

    /// A boolean as clients write them (`true`, `True`, `1`, ...), `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, NacosError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| NacosError::bad(format!("{name} must be true or false, not {v:?}"))),
        }
    }

    /// A number, `default` when absent.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, NacosError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| NacosError::bad(format!("{name} must be a number, not {v:?}"))),
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// The extractor every guarded Nacos handler takes: reads the body (up to the node's
/// `max_request_bytes`) and its parameters, and checks the caller's token by the rule both
/// APIs share ([`crate::api::authorize`]).
impl FromRequest for Params {
    type Error = NacosError;
    type Future = LocalBoxFuture<'static, Result<Params, NacosError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        async move {
            let api = req
                .app_data::<web::Data<Api>>()
                .ok_or_else(|| NacosError(StatusCode::INTERNAL_SERVER_ERROR, "the Nacos API is not set up".into()))?;
            let body = crate::api::read_body(&api.node, payload).await?;
            let params = Params::of(&req, &body);
            crate::api::authorize(api, &req, |k| params.get(k))?;
            Ok(params)
        }
        .boxed_local()
    }
}

async fn login(api: web::Data<Api>, req: HttpRequest, payload: web::Payload) -> Reply {
    let body = crate::api::read_body(&api.node, payload).await?;
    let p = Params::of(&req, &body);
    let t = crate::api::login(&api, p.get("username"), p.get("password"))?;
    Ok(HttpResponse::Ok().json(json!({
        "accessToken": t.token,
        "tokenTtl": t.ttl.as_secs(),
        "globalAdmin": true,
        "username": p.get("username"),
    })))
}
