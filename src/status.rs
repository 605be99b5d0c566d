//! `sidecar-governor status`: fetches a running agent's `/debug/proxies` JSON over plain
//! HTTP/1 (hyper, already in the tree) and renders a table — namespace, pod, quota, usage,
//! throttled share, memory high (when the agent reports it), last action and its reason.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use crate::quantity::format_cpu_millis;

/// The default endpoint: the agent's admin listener on this host (or in this pod, or
/// forwarded here by `kubectl port-forward`).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9478";

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("connect to {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("GET {url}")]
    Http { url: String, source: hyper::Error },
    #[error("GET {url}: timed out after {secs}s")]
    Timeout { url: String, secs: u64 },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: invalid JSON")]
    Json {
        url: String,
        source: serde_json::Error,
    },
}

/// The last action, as `/debug/proxies` reports it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Action {
    pub resource: String,
    pub direction: String,
    pub reason: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub at: u64,
}

/// One proxy, as `/debug/proxies` reports it (unknown fields are ignored, missing optional
/// ones tolerated, so the client works across agent versions).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ProxyStatus {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
    #[serde(default)]
    pub pod_uid: String,
    #[serde(default)]
    pub cpu_quota_millis: Option<u64>,
    #[serde(default)]
    pub cpu_original_millis: Option<u64>,
    #[serde(default)]
    pub cpu_usage_millis: Option<f64>,
    #[serde(default)]
    pub cpu_throttled_ratio: Option<f64>,
    #[serde(default)]
    pub memory_high_bytes: Option<u64>,
    #[serde(default)]
    pub memory_usage_bytes: Option<u64>,
    #[serde(default)]
    pub memory_growing: bool,
    #[serde(default)]
    pub backoff: bool,
    #[serde(default)]
    pub last_action: Option<Action>,
}

/// The whole `/debug/proxies` document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct AgentStatus {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub last_tick: u64,
    pub proxies: Vec<ProxyStatus>,
}

/// Splits `http://host:port[/prefix]` into the address to connect to and the path prefix.
fn split_endpoint(endpoint: &str) -> Result<(String, String, String), StatusError> {
    let bad = |reason: &str| StatusError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// endpoints are supported"))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_string(), prefix.to_string()))
}

/// GETs `{endpoint}/debug/proxies`.
pub async fn fetch(endpoint: &str, timeout: Duration) -> Result<AgentStatus, StatusError> {
    let (addr, host, prefix) = split_endpoint(endpoint)?;
    let path = format!("{prefix}/debug/proxies");
    let url = format!("http://{host}{path}");
    let work = async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|source| StatusError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let http = |source| StatusError::Http {
            url: url.clone(),
            source,
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(http)?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| StatusError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(http)?;
        driver.abort();
        if !status.is_success() {
            return Err(StatusError::Status {
                url: url.clone(),
                status: status.as_u16(),
            });
        }
        serde_json::from_slice(&body.to_bytes()).map_err(|source| StatusError::Json {
            url: url.clone(),
            source,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| StatusError::Timeout {
            url: url.clone(),
            secs: timeout.as_secs(),
        })?
}

fn bytes_mi(b: u64) -> String {
    format!("{}Mi", (b as f64 / (1024.0 * 1024.0)).round())
}

fn or_dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// Renders the table (`now` in seconds since the epoch, for the age of the last action).
/// Columns are as wide as their widest cell; the memory columns appear only when the agent
/// reports memory for some proxy.
pub fn render(status: &AgentStatus, now: u64) -> String {
    let memory = status
        .proxies
        .iter()
        .any(|p| p.memory_high_bytes.is_some() || p.memory_usage_bytes.is_some());
    let mut header = vec!["NAMESPACE", "POD", "QUOTA", "USAGE", "THROTTLED"];
    if memory {
        header.extend(["MEM-HIGH", "MEM-USE"]);
    }
    header.push("LAST ACTION");
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for p in &status.proxies {
        let (namespace, pod) = if p.pod.is_empty() {
            ("-".to_string(), format!("uid:{}", p.pod_uid))
        } else {
            (p.namespace.clone(), p.pod.clone())
        };
        let mut action = or_dash(p.last_action.as_ref(), |a| {
            format!(
                "{} {} {} -> {} ({}, {} ago)",
                a.resource,
                a.direction,
                a.from,
                a.to,
                a.reason,
                age(now.saturating_sub(a.at))
            )
        });
        if p.backoff {
            action.push_str(" [backing off]");
        }
        if p.memory_growing {
            action.push_str(" [memory growing]");
        }
        let mut row = vec![
            namespace,
            pod,
            or_dash(p.cpu_quota_millis, format_cpu_millis),
            or_dash(p.cpu_usage_millis, |u| format!("{}m", u.round())),
            or_dash(p.cpu_throttled_ratio, |r| format!("{:.1}%", r * 100.0)),
        ];
        if memory {
            row.push(or_dash(p.memory_high_bytes, bytes_mi));
            row.push(or_dash(p.memory_usage_bytes, bytes_mi));
        }
        row.push(action);
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    if status.proxies.is_empty() {
        out.push_str("(no proxies governed)\n");
    }
    let mut footer = format!("{} proxies", status.proxies.len());
    if status.dry_run {
        footer.push_str(", dry run (nothing is written)");
    }
    if status.last_tick > 0 {
        footer.push_str(&format!(
            ", last tick {} ago",
            age(now.saturating_sub(status.last_tick))
        ));
    }
    out.push_str(&footer);
    out.push('\n');
    out
}

fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_endpoint("http://127.0.0.1:9477").unwrap(),
            (
                "127.0.0.1:9477".into(),
                "127.0.0.1:9477".into(),
                String::new()
            )
        );
        assert_eq!(
            split_endpoint("http://agent/prefix/").unwrap(),
            ("agent:80".into(), "agent".into(), "/prefix".into())
        );
        assert!(split_endpoint("https://x").is_err());
        assert!(split_endpoint("http://").is_err());
    }

    #[test]
    fn memory_columns_only_when_reported() {
        let mut status: AgentStatus = serde_json::from_str(
            r#"{"dry_run":true,"last_tick":100,"proxies":[{"namespace":"shop","pod":"cart-1",
            "pod_uid":"u","cpu_quota_millis":250,"cpu_usage_millis":20.4,"cpu_throttled_ratio":0.0,
            "backoff":false,"last_action":{"resource":"cpu","direction":"down","reason":"idle",
            "from":"500m","to":"250m","at":90},"future_field":1}]}"#,
        )
        .unwrap();
        let table = render(&status, 100);
        assert!(!table.contains("MEM-HIGH"), "{table}");
        assert!(table.contains("shop"), "{table}");
        assert!(
            table.contains("cpu down 500m -> 250m (idle, 10s ago)"),
            "{table}"
        );
        assert!(table.contains("dry run"), "{table}");
        status.proxies[0].memory_high_bytes = Some(64 << 20);
        assert!(render(&status, 100).contains("64Mi"));
    }
}
