//! The broker's `GET /metrics` read back: scraped from the lab's broker
//! (its `[api]` on loopback, inside its namespace, where no token is
//! needed), checked with `promtool check metrics` (Debian package
//! `prometheus`), and parsed into samples a test can compare with what
//! happened.

use std::{collections::BTreeMap, io::Write as _, process::Stdio, time::Duration};

use anyhow::{Context as _, bail, ensure};

use crate::Lab;

/// One scrape: every sample by its name and labels.
#[derive(Debug)]
pub struct Metrics {
    text: String,
    /// `name{k="v",…}` with the labels sorted by name, to the value as written.
    samples: BTreeMap<String, String>,
}

/// How long promtool and a scrape may take.
const LIMIT: Duration = Duration::from_secs(20);

impl Metrics {
    /// Parses the text format's sample lines (comments and blank lines are
    /// skipped; `promtool_check` judges the rest of the format).
    pub fn parse(text: &str) -> anyhow::Result<Metrics> {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = parse_sample(line).with_context(|| format!("sample {line:?}"))?;
            ensure!(
                samples.insert(key, value).is_none(),
                "sample {line:?} appears twice"
            );
        }
        Ok(Metrics {
            text: text.to_string(),
            samples,
        })
    }

    /// The text as scraped.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of `name` with exactly `labels` as written, if there is
    /// that sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&str> {
        self.samples.get(&key(name, labels)).map(String::as_str)
    }

    /// The value of `name` with exactly `labels`, a whole number (every
    /// figure of the broker is: counts, blocks, wei, seconds).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<u128> {
        let key = key(name, labels);
        let value = self
            .samples
            .get(&key)
            .with_context(|| format!("no sample {key} in:\n{}", self.text))?;
        value
            .parse()
            .with_context(|| format!("{key} is {value}, not a whole number"))
    }

    /// [`Metrics::value`] of `blockhost_broker_<name>`.
    pub fn broker(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<u128> {
        self.value(&format!("blockhost_broker_{name}"), labels)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    labels.sort();
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// `name{k="v",…} value [timestamp]` as (its key, value).
fn parse_sample(line: &str) -> anyhow::Result<(String, String)> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inside) = rest.strip_prefix('{') {
        loop {
            inside = inside.trim_start_matches(',');
            if let Some(after) = inside.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inside
                .split_once("=\"")
                .context("a label without a value")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("an unfinished escape"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("an unterminated label value"),
                }
            };
            labels.push((label.to_string(), value));
            inside = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next().context("no value")?;
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Ok((key(name, &labels), value.to_string()))
}

/// `promtool check metrics` on `text`: an error with what it said unless it
/// passes (lint problems included).
pub fn promtool_check(text: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (cargo xtask setup installs the Debian package prometheus)")?;
    // promtool reads all of its input before it answers: written first.
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())
        .context("writing to promtool")?;
    let out = child.wait_with_output().context("waiting for promtool")?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Lab {
    /// `GET /metrics` from the broker's API (plain HTTP on its `[api]
    /// listen`, which must be loopback: no token), checked with promtool.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let api = self
            .config
            .api
            .as_ref()
            .context("the lab's broker has no [api]")?;
        ensure!(
            api.listen.ip().is_loopback() && api.tls_cert.is_none(),
            "the lab scrapes plain HTTP on loopback, not {}",
            api.listen
        );
        let url = format!("http://{}/metrics", api.listen);
        // The request's socket must be made inside the broker's namespace.
        let runtime = self.net.broker.runtime()?;
        let scraped = runtime
            .spawn({
                let url = url.clone();
                async move {
                    let response = reqwest::Client::builder()
                        .timeout(LIMIT)
                        .build()?
                        .get(&url)
                        .send()
                        .await?
                        .error_for_status()?;
                    response.text().await
                }
            })
            .await;
        // Dropped inside the lab's runtime, where a blocking shutdown panics.
        runtime.shutdown_background();
        let text = scraped
            .context("the scrape's task")?
            .with_context(|| format!("GET {url}"))?;
        promtool_check(&text)?;
        Metrics::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels_in_any_order() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\n\
                    a_total{x=\"1\",y=\"q\\\"uote\"} 7\n\
                    b 340282366920938463463374607431768211455\n\
                    c{z=\"\"} 1.5 1700000000\n";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(
            m.value("a_total", &[("y", "q\"uote"), ("x", "1")]).unwrap(),
            7
        );
        assert_eq!(m.value("b", &[]).unwrap(), u128::MAX);
        assert_eq!(m.get("c", &[("z", "")]), Some("1.5"));
        assert!(m.value("c", &[("z", "")]).is_err(), "not a whole number");
        assert!(
            m.value("a_total", &[("x", "1")]).is_err(),
            "labels must all match"
        );
        assert!(m.get("d", &[]).is_none());
        for bad in ["e{x=\"1} 2", "f", "g{x} 1", "h 1\nh 1"] {
            assert!(Metrics::parse(bad).is_err(), "{bad:?}");
        }
    }
}
