//! Services as users write them: a JSON array of services (or one), in this project's form
//! or dister's, read into [`Service`]s. dister's files give every field as a string
//! (`"port": "3306"`, `"priority": "100"`, `"interval": "2000"`) and its `web` nodes by
//! `url` alone; both are read as they are, and any other field (`user`, `pass`,
//! `database`, ...) is kept. What cannot be read is refused naming the service and node.

use serde_json::{Map, Value};

use crate::messages::registry::{CheckKind, Service, ServiceNode};

/// Fields holding a whole number, and the largest each takes.
const WHOLE: [(&str, u64); 5] = [
    ("port", u16::MAX as u64),
    ("interval", u64::MAX),
    ("interval_ms", u64::MAX),
    ("timeout_ms", u64::MAX),
    ("ttl_ms", u64::MAX),
];

/// Fields holding a number that may have a fraction.
const FRACTIONAL: [&str; 2] = ["weight", "priority"];

/// Fields holding true or false.
const FLAGS: [&str; 2] = ["enabled", "ephemeral"];

/// Reads a request body: a JSON array of services, or one service.
pub fn parse_services(body: &[u8]) -> Result<Vec<Service>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    services_from_value(value)
}

/// Reads services from JSON already parsed: an array of services, or one service.
pub fn services_from_value(value: Value) -> Result<Vec<Service>, String> {
    match value {
        Value::Array(items) => items.into_iter().enumerate().map(|(i, s)| service(s, i + 1)).collect(),
        one @ Value::Object(_) => Ok(vec![service(one, 1)?]),
        other => Err(format!("a service file is a JSON array of services, not {}", kind_of(&other))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `nth` service of a file.
fn service(value: Value, nth: usize) -> Result<Service, String> {
    let Value::Object(mut fields) = value else {
        return Err(format!("service {nth} is {}, not an object", kind_of(&value)));
    };
    let name = match fields.get("name") {
        Some(Value::String(n)) => n.clone(),
        Some(other) => return Err(format!("service {nth}: name is {}, not a string", kind_of(other))),
        None => return Err(format!("service {nth} has no name")),
    };
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    // Each node read on its own, so that what is wrong with one names it.
    let nodes = match fields.remove("node") {
        Some(Value::Array(nodes)) => nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| read_node(node, &kind).map_err(|why| format!("service {name:?}, node {}: {why}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => return Err(format!("service {name:?}: node is {}, not an array", kind_of(&other))),
    };
    let service: Service =
        serde_json::from_value(Value::Object(fields)).map_err(|e| format!("service {name:?}: {e}"))?;
    Ok(Service { nodes, ..service })
}

/// Reads one node of service `service`, as a service file gives its nodes.
pub fn node_from_value(service: &str, node: Value) -> Result<ServiceNode, String> {
    read_node(node, "").map_err(|why| format!("service {service:?}: {why}"))
}

/// One node of a service of type `kind`, read as [`normalize_node`] puts it.
fn read_node(mut node: Value, kind: &str) -> Result<ServiceNode, String> {
    normalize_node(&mut node, kind)?;
    serde_json::from_value(node).map_err(|e| e.to_string())
}

/// Puts a node as dister writes it in this project's form: numbers and flags given as
/// strings read as such, `interval` as `interval_ms`, a web node's host and port taken from
/// its url.
fn normalize_node(node: &mut Value, kind: &str) -> Result<(), String> {
    let Value::Object(fields) = node else {
        return Err(format!("a node is an object, not {}", kind_of(node)));
    };
    if let Some(interval) = fields.remove("interval") {
        if fields.contains_key("interval_ms") {
            return Err("interval and interval_ms are the same field: give one".into());
        }
        fields.insert("interval_ms".into(), interval);
    }
    for (field, max) in WHOLE {
        if let Some(v) = fields.get_mut(field) {
            let n = match &*v {
                Value::String(s) => {
                    s.trim().parse::<u64>().map_err(|_| format!("{field} {s:?} is not a whole number"))?
                }
                Value::Number(n) => n.as_u64().ok_or_else(|| format!("{field} {n} is not a whole number"))?,
                other => return Err(format!("{field} is {}, not a number", kind_of(other))),
            };
            if n > max {
                return Err(format!("{field} {n} is above {max}"));
            }
            *v = Value::from(n);
        }
    }
    for field in FRACTIONAL {
        if let Some(v) = fields.get_mut(field)
            && let Value::String(s) = &*v
        {
            let n: f64 = s.trim().parse().map_err(|_| format!("{field} {s:?} is not a number"))?;
            *v = serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| format!("{field} {s:?} is not finite"))?;
        }
    }
    for field in FLAGS {
        if let Some(v) = fields.get_mut(field) {
            let flag = match &*v {
                Value::Bool(b) => *b,
                Value::String(s) if s.trim().eq_ignore_ascii_case("true") || s.trim() == "1" => true,
                Value::String(s) if s.trim().eq_ignore_ascii_case("false") || s.trim() == "0" => false,
                Value::Number(n) if n.as_u64() == Some(1) => true,
                Value::Number(n) if n.as_u64() == Some(0) => false,
                other => return Err(format!("{field} {other} is neither true nor false")),
            };
            *v = Value::Bool(flag);
        }
    }
    let check = match fields.get("check") {
        Some(Value::String(c)) => serde_json::from_value(Value::String(c.clone())).ok(),
        _ => CheckKind::of_type(kind),
    };
    if check == Some(CheckKind::Web) {
        fill_from_url(fields)?;
    }
    Ok(())
}

/// A web node may be given by its url alone: its host and port are the url's.
fn fill_from_url(fields: &mut Map<String, Value>) -> Result<(), String> {
    let Some(Value::String(url)) = fields.get("url") else { return Ok(()) };
    let uri: awc::http::Uri = url.parse().map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("url {url:?} must start with http://"));
    }
    let host = uri.host().ok_or_else(|| format!("url {url:?} names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(80);
    fields.entry("host").or_insert(Value::String(host));
    fields.entry("port").or_insert(Value::from(port));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::registry::{Health, RegistryCommand};

    /// dister's own sample file (its addresses moved to loopback), as dister ships it.
    const DISTER_FILE: &str = r#"[
      {"name": "db1", "type": "mysql", "node": [
        {"host": "127.0.0.15", "port": "3306", "user": "root", "pass": "123456", "database": "test", "priority": "100", "interval": "2000"}]},
      {"name": "memcache", "type": "tcp", "node": [
        {"host": "127.0.0.15", "port": "11211", "priority": "100", "interval": "1000"}]},
      {"name": "sites", "type": "web", "node": [
        {"url": "http://127.0.0.15:8080/health.php", "interval": "5000", "priority": "100"},
        {"url": "http://127.0.0.15/health.php", "interval": "5000", "priority": "100"}]},
      {"name": "taskmanager", "type": "custom", "node": [
        {"host": "127.0.0.100", "script": "echo 1", "interval": "5000", "priority": "100"}]}
    ]"#;

    #[test]
    fn dister_files_are_read_as_they_are() {
        let mut set = RegistryCommand::Set(parse_services(DISTER_FILE.as_bytes()).unwrap());
        set.prepare(true).unwrap();
        let RegistryCommand::Set(services) = set else { unreachable!() };
        let db = &services[0].nodes[0];
        assert_eq!((db.port, db.weight, db.interval_ms), (3306, 100.0, Some(2000)));
        assert_eq!(db.extra_text("user").as_deref(), Some("root"));
        assert_eq!(db.extra_text("database").as_deref(), Some("test"));
        assert_eq!(db.effective_check(), Some(CheckKind::Mysql), "the type's check, written into the node");
        let checks: Vec<_> = services.iter().map(|s| s.nodes[0].check).collect();
        let want = [CheckKind::Mysql, CheckKind::Tcp, CheckKind::Web, CheckKind::Custom];
        assert_eq!(checks, want.map(Some));
        let sites = &services[2].nodes;
        assert_eq!((sites[0].host.as_str(), sites[0].port), ("127.0.0.15", 8080), "host and port from the url");
        assert_eq!(sites[1].port, 80);
        assert_eq!(services[3].nodes[0].port, 0, "a custom node needs no port");
        // Written out, each node carries dister's status beside health, and reads back the same.
        let json = serde_json::to_value(&services[0]).unwrap();
        assert_eq!(
            (&json["node"][0]["status"], &json["node"][0]["health"]),
            (&Value::from(0), &Value::from("unknown"))
        );
        assert_eq!(json["node"][0]["pass"], "123456", "extra fields are kept");
        let back: Vec<Service> = services_from_value(Value::Array(vec![json])).unwrap();
        assert_eq!(back[0], services[0]);
        assert!(!back[0].nodes[0].extra.contains_key("status"), "status is health's, not an extra field");
    }

    #[test]
    fn a_healthy_node_has_status_one() {
        let mut s = parse_services(DISTER_FILE.as_bytes()).unwrap().remove(1);
        s.nodes[0].health = Health::Healthy;
        assert_eq!(serde_json::to_value(&s).unwrap()["node"][0]["status"], 1);
    }

    /// Bad input is refused naming the service and node, before anything is written.
    #[test]
    fn bad_nodes_are_refused_naming_service_and_node() {
        let refused = |file: &str, scripts: bool| -> String {
            match parse_services(file.as_bytes()) {
                Err(e) => e,
                Ok(s) => RegistryCommand::Set(s).prepare(scripts).unwrap_err(),
            }
        };
        let e =
            refused(r#"[{"name":"db1","type":"mysql","node":[{"host":"127.0.0.1","port":"33o6","user":"u"}]}]"#, false);
        assert!(e.contains(r#"service "db1", node 1: port "33o6" is not a whole number"#), "{e}");
        let e = refused(r#"[{"name":"db1","type":"mysql","node":[{"host":"127.0.0.1","port":"3306"}]}]"#, false);
        assert!(e.contains(r#"service "db1", node 127.0.0.1:3306: a mysql check needs a user"#), "{e}");
        let e = refused(r#"{"name":"sites","type":"web","node":[{"host":"127.0.0.1","port":"80"}]}"#, false);
        assert!(e.contains(r#"service "sites", node 127.0.0.1:80: a web check needs a url"#), "{e}");
        let e = refused(r#"[{"name":"t","type":"custom","node":[{"host":"127.0.0.9","script":"echo 1"}]}]"#, false);
        assert!(e.contains(r#"service "t", node 127.0.0.9:0: a custom check runs its script"#), "{e}");
        assert!(e.contains("allow_script_checks is off"), "{e}");
        let e = refused(r#"[{"name":"m","type":"tcp","node":[{"host":"127.0.0.1","port":"70000"}]}]"#, true);
        assert!(e.contains(r#"service "m", node 1: port 70000 is above 65535"#), "{e}");
        let e = refused(r#"[{"name":"m","type":"tcp","node":[{"host":"127.0.0.1"}]}]"#, true);
        assert!(e.contains("a port (1 to 65535) is needed"), "{e}");
        let e = refused(r#"[{"name":"m","node":[{"host":"127.0.0.1","port":1,"priority":"lots"}]}]"#, true);
        assert!(e.contains(r#"service "m", node 1: priority "lots" is not a number"#), "{e}");
        let e = refused(r#"[{"name":"s","type":"web","node":[{"url":"https://127.0.0.1/"}]}]"#, true);
        assert!(e.contains("must start with http://"), "{e}");
        assert!(refused("7", true).contains("not a number"));
        let e = refused(r#"[{"name":"m","node":[{"host":"127.0.0.1","port":1,"enabled":"maybe"}]}]"#, true);
        assert!(e.contains(r#"service "m", node 1: enabled "maybe" is neither true nor false"#), "{e}");
        let e = refused(r#"[{"name":"m","node":[{"host":"127.0.0.1","port":1,"check":"tcpp"}]}]"#, true);
        assert!(e.contains(r#"service "m", node 1: unknown variant `tcpp`"#), "{e}");
        let e =
            refused(r#"[{"name":"m","node":[{"host":"127.0.0.1","port":1,"interval":"5","interval_ms":5}]}]"#, true);
        assert!(e.contains(r#"service "m", node 1: interval and interval_ms"#), "{e}");
        let e = refused(r#"[{"name":"p","type":"pgsql","node":[{"host":"/run/pg","port":5432,"user":"u"}]}]"#, true);
        assert!(e.contains("host must not be a socket path"), "{e}");
    }
}
