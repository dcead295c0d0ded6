//! The dashboard's server side with many stored tasks: each page and each piece of data a page
//! reads, timed over HTTP as the browser asks for it (signed in with the cookie the first URL
//! sets), against a static asset of the same server as the reference (the cost of HTTP and
//! routing alone).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use uuid::Uuid;

use crate::{server_cmd, Stat};

/// Medians of every page and data read, by name, and the reference.
pub struct Figures {
    pub reads: Vec<(String, Stat)>,
    /// The static asset.
    pub asset: Stat,
}

/// `rounds` of every read, against the engine of `dir` (which must be running; `env`: the
/// settings it runs with beyond the folder's, such as a cluster's database).
pub async fn measure(
    bin: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    sample: &[Uuid],
    rounds: usize,
) -> Result<Figures> {
    if sample.is_empty() {
        bail!("the dashboard figures need stored tasks (--stored 1 or more)");
    }
    let out = server_cmd(bin, dir, 1)
        .envs(env.iter().copied())
        .args(["dashboard", "--no-open", "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let v: Value = serde_json::from_slice(&out.stdout).context("dashboard --json")?;
    let url = v["url"].as_str().context("no url")?.to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let signed = http.get(&url).send().await?;
    let key = signed
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.split("#k=").nth(1))
        .context("no page key from the first URL")?
        .to_string();
    let cookie = signed
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .context("no cookie from the first URL")?
        .to_string();
    let origin = url::Url::parse(&url)?.origin().ascii_serialization();
    let get = |path: String| {
        let (http, cookie, origin, key) =
            (http.clone(), cookie.clone(), origin.clone(), key.clone());
        async move {
            let t = Instant::now();
            let r = http
                .get(format!("{origin}{path}"))
                .header("cookie", cookie)
                .header("x-orchestr8-key", key)
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
            }
            Ok::<_, anyhow::Error>((ms, body))
        }
    };
    // A position in the middle of the list, as the `next` of a page there would give it.
    let middle = sample[sample.len() / 2];
    let (_, body) = get(format!("/dashboard/api/tasks/{middle}")).await?;
    let t: Value = serde_json::from_slice(&body)?;
    let created =
        chrono::DateTime::parse_from_rfc3339(t["created_at"].as_str().context("created_at")?)?;
    let deep = format!("{}.{middle}", created.timestamp_micros());
    let reads: Vec<(&str, String)> = vec![
        ("the page itself (HTML)", "/dashboard/tasks".into()),
        (
            "overview: counts, running, charts",
            "/dashboard/api/overview".into(),
        ),
        ("tasks, first page", "/dashboard/api/tasks?limit=50".into()),
        (
            "tasks, status+agent filter",
            "/dashboard/api/tasks?status=completed&agent_name=agent-3&limit=50".into(),
        ),
        (
            "tasks, a page in the middle",
            format!("/dashboard/api/tasks?limit=50&after={deep}"),
        ),
        (
            "tasks, name search",
            "/dashboard/api/tasks?q=synthetic-4242&limit=50".into(),
        ),
        (
            "task filters (agents, projects)",
            "/dashboard/api/facets".into(),
        ),
        ("one task, everything", String::new()),
        ("agents with 7-day records", "/dashboard/api/agents".into()),
        ("workflows", "/dashboard/api/workflows?limit=200".into()),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); reads.len()];
    let mut asset = Vec::new();
    for round in 0..rounds {
        for (i, (_, path)) in reads.iter().enumerate() {
            let path = if path.is_empty() {
                format!(
                    "/dashboard/api/tasks/{}",
                    sample[(round * 7919) % sample.len()]
                )
            } else {
                path.clone()
            };
            times[i].push(get(path).await?.0);
        }
        let t = Instant::now();
        http.get(format!("{origin}/dashboard/assets/icon.svg"))
            .send()
            .await?
            .bytes()
            .await?;
        asset.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Figures {
        reads: reads
            .iter()
            .zip(times)
            .map(|((name, _), t)| (name.to_string(), Stat::of(t)))
            .collect(),
        asset: Stat::of(asset),
    })
}
