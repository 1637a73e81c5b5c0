//! The HTTP port: dister's own API ([`dister`]), the Nacos 1.x Open API ([`nacos`]) and the
//! console ([`ui`], which uses only the other two), served by one actix-web server that the
//! binary, or an embedding application, starts with [`serve`]. What they share lives here,
//! once: who the caller is ([`authorize`], one reading of every way a token is presented),
//! logging in ([`login`]), the cluster as the leader sees it ([`cluster_view`], [`seen`]), the
//! status an error means ([`status_of`]), and the request body's bound ([`read_body`]). Each API
//! wraps these answers in its own envelope: dister's JSON `{"result","message","data"}`,
//! Nacos' status and plain text.

pub mod dister;
pub mod nacos;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::auth::{Auth, Presented, Token, http_allowed};
use crate::error::ApiError;
use crate::metrics::HttpLabels;
use crate::node::NodeHandle;
use crate::raft::Role;
use crate::wire::{MemberStatus, StatusInfo};

/// What every handler of both APIs may ask for (`web::Data<Api>`).
#[derive(Clone)]
pub struct Api {
    /// The node.
    pub node: NodeHandle,
    /// Credentials, when the node has them (built once: the key behind login tokens is
    /// derived at start, not per request).
    pub auth: Option<Auth>,
    /// The Nacos answers rendered once per change.
    pub rendered: Arc<nacos::rendered::Rendered>,
}

impl Api {
    /// The API of `node`.
    pub fn new(node: NodeHandle) -> Api {
        Api { auth: Auth::from_config(node.config()), node, rendered: Arc::default() }
    }
}

/// A running HTTP server.
pub struct HttpApi {
    /// Stops the server.
    pub handle: ServerHandle,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Binds `addr` and serves both APIs and the console for `node` on one worker thread (HTTP
/// parsing stays off the node's own threads); HTTPS only when the node has TLS. Call it
/// inside the actix system the node runs in; stop it with `handle.stop(true)`.
pub fn serve(node: NodeHandle, addr: &str) -> std::io::Result<HttpApi> {
    let api = Api::new(node.clone());
    let max_connections = node.config().max_client_connections;
    let tls = node.cluster().tls().cloned();
    let server = HttpServer::new(move || {
        let metrics = node.cluster().metrics().clone();
        App::new()
            .app_data(web::Data::new(node.clone()))
            .app_data(web::Data::new(api.clone()))
            // Every request of both APIs counted by route (the pattern it matched, so the
            // series stay as few as the routes), method and status, and timed.
            .wrap_fn(move |req, srv| {
                use actix_web::dev::Service as _;
                let started = std::time::Instant::now();
                let method = method_label(req.method());
                let metrics = metrics.clone();
                let answer = srv.call(req);
                async move {
                    let res = answer.await;
                    // The pattern routing matched, read after the call (no second walk of
                    // the routes); a request that failed below the handlers is a 500.
                    let (route, code) = match &res {
                        Ok(r) => (r.request().match_pattern(), r.status().as_u16()),
                        Err(_) => (None, 500),
                    };
                    let route = route.unwrap_or_else(|| "unmatched".into());
                    metrics.http_request(HttpLabels { route, method, code }, started.elapsed());
                    res
                }
            })
            .configure(nacos::routes)
            .configure(ui::routes)
            .configure(dister::routes)
    })
    .workers(1)
    .max_connections(max_connections)
    .disable_signals();
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(addr, tls.http_config().map_err(std::io::Error::other)?)?,
        None => server.bind(addr)?,
    };
    let bound = server.addrs().first().copied().ok_or_else(|| std::io::Error::other("http: nothing bound"))?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(addr = %bound, "http api listening");
    Ok(HttpApi { handle, addr: bound })
}

/// A method as a label: the standard ones by name, any other as `other` (so a client cannot
/// make up series).
fn method_label(m: &actix_web::http::Method) -> String {
    use actix_web::http::Method;
    let known = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::HEAD, Method::PATCH, Method::OPTIONS];
    if known.contains(m) { m.as_str().to_string() } else { "other".to_string() }
}

/// The status an API error means, for both HTTP APIs.
pub(crate) fn status_of(e: &ApiError) -> StatusCode {
    match e {
        ApiError::BadRequest(_) | ApiError::UnknownNamespace(_) | ApiError::Apply(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        ApiError::Dropped { .. } | ApiError::ChangeInProgress(_) => StatusCode::CONFLICT,
        ApiError::NoLeader { .. }
        | ApiError::NotLeader { .. }
        | ApiError::Unreachable { .. }
        | ApiError::Overloaded { .. }
        | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Adds `Retry-After` (whole seconds, at least 1: the header takes no fraction).
pub(crate) fn with_retry_after(response: &mut HttpResponse, ms: Option<u64>) {
    let secs = ms.unwrap_or(1_000).div_ceil(1_000).max(1);
    response
        .headers_mut()
        .insert(actix_web::http::header::RETRY_AFTER, actix_web::http::header::HeaderValue::from(secs));
}

/// Reads a request body, refusing one over the node's `max_request_bytes` (actix's own limit
/// would answer plain text, and far lower than what the wire takes). The error is a status
/// and a reason, for each API to wrap its own way.
pub(crate) async fn read_body(
    node: &NodeHandle,
    mut payload: impl futures::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + Unpin,
) -> Result<web::Bytes, (StatusCode, String)> {
    use futures::StreamExt;
    let limit = node.config().max_request_bytes;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over max_request_bytes ({limit})")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Checks the caller of either API: the cluster token (`X-Dister-Token` header or `token`
/// parameter) or, with credentials configured, a login token (`Authorization: Bearer`, an
/// `accessToken` parameter, or an `accessToken` header as some Nacos clients send it; any
/// that verifies).
/// `param` reads the request's parameters (the query string, and for Nacos a form body too).
/// The refusal is a 403 saying what to present.
pub(crate) fn authorize<'a>(
    api: &Api,
    req: &'a HttpRequest,
    param: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), (StatusCode, String)> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let cluster = header("x-dister-token").or_else(|| param("token"));
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    // Any login token presented that verifies will do: a gateway's unrelated bearer header
    // does not hide the `accessToken` a Nacos client sent.
    let logins = [bearer, param("accessToken"), header("accessToken")];
    let now = SystemTime::now();
    let allowed = |login| http_allowed(api.node.config(), api.auth.as_ref(), &Presented { cluster, login }, now);
    if allowed(None) || logins.into_iter().flatten().any(|l| allowed(Some(l))) {
        return Ok(());
    }
    let why = if api.auth.is_some() {
        "log in first (POST /auth/login or /nacos/v1/auth/login) and present the token \
         (Authorization: Bearer TOKEN, or accessToken=TOKEN)"
    } else {
        "this cluster requires its token (X-Dister-Token header, or token=)"
    };
    Err((StatusCode::FORBIDDEN, why.into()))
}

/// Checks a username and password and issues a token for both APIs, valid on every node.
pub(crate) fn login(api: &Api, username: Option<&str>, password: Option<&str>) -> Result<Token, (StatusCode, String)> {
    let Some(auth) = &api.auth else {
        return Err((StatusCode::NOT_IMPLEMENTED, "auth is not enabled on this node".into()));
    };
    let (Some(user), Some(pass)) = (username, password) else {
        return Err((StatusCode::BAD_REQUEST, "username and password are required".into()));
    };
    auth.login(user, pass, SystemTime::now())
        .ok_or_else(|| (StatusCode::FORBIDDEN, "unknown user or wrong password".into()))
}

/// The cluster as the leader sees it (it alone hears from every member: their reachability
/// and match indexes), asked of it over the wire; this node's own view when it leads, or when
/// the leader cannot be asked within a second. Every description of the members (dister's
/// `/node`, Nacos' `/ns/operator/servers`, the console) starts from this.
pub(crate) async fn cluster_view(node: &NodeHandle) -> Result<StatusInfo, ApiError> {
    let here = node.cluster().status().await?;
    if here.role == Role::Leader {
        return Ok(here);
    }
    let Some(leader) = here.leader else { return Ok(here) };
    let Some(addr) = here.members.iter().find(|m| m.id == leader).map(|m| m.addr.clone()) else {
        return Ok(here);
    };
    let ask = async {
        let c = crate::Client::dial(&addr, &node.cluster().dial()).await.ok()?;
        // The node named, leading a term at least this node's: not whoever has its address now.
        c.status().await.ok().filter(|s| s.role == Role::Leader && s.id == leader && s.term >= here.term)
    };
    Ok(tokio::time::timeout(std::time::Duration::from_secs(1), ask).await.ok().flatten().unwrap_or(here))
}

/// How a member is seen in a [`cluster_view`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The node answering, or a member the leader hears from.
    Up,
    /// A member the leader does not hear from.
    Down,
    /// Not the leader's view: only the node answering is known to be up.
    Unknown,
}

/// How `view` sees member `m`, and `m`'s Raft role in it.
pub(crate) fn seen(view: &StatusInfo, m: &MemberStatus) -> (Seen, String) {
    let seen = match (m.id == view.id, view.role, m.reachable) {
        (true, _, _) => Seen::Up,
        (_, Role::Leader, Some(true)) => Seen::Up,
        (_, Role::Leader, _) => Seen::Down,
        _ => Seen::Unknown,
    };
    let role = match view.leader {
        _ if m.id == view.id => view.role.to_string(),
        Some(l) if l == m.id => "leader".into(),
        Some(_) => "follower".into(),
        None => "unknown".into(),
    };
    (seen, role)
}
