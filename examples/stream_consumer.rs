//! A consumer of the registry's RabbitMQ stream that asks the broker for only some routing
//! keys, and prints one JSON line per message.
//!
//! ```text
//! cargo run --example stream_consumer -- \
//!     --url rabbitmq-stream://guest:guest@localhost:5552/ --stream service-registry \
//!     --routing-key service.added --routing-key service.removed --offset first
//! ```
//!
//! Options: `--url` (default: RABBITMQ_URL, else the local broker), `--stream` (default
//! `service-registry`, the registry's RABBITMQ_EXCHANGE), `--routing-key` (repeatable; none =
//! every message), `--offset` (`first`, `last`, `next` or a stream offset; default `next`),
//! `--limit N` (stop after N messages; default: run until interrupted).
//!
//! The registry publishes each change with its routing key as the message's filter value, so
//! the broker sends only the chunks that hold a wanted key. A chunk may also hold other
//! messages, which is why the consumer checks each message's subject again (the post filter).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification, SimpleValue};
use rabbitmq_stream_client::{Environment, FilterConfiguration};
use serde_json::{json, Value};

/// What the command line asks for.
struct Options {
    url: url::Url,
    stream: String,
    routing_keys: Vec<String>,
    offset: OffsetSpecification,
    limit: Option<u64>,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let default_url = std::env::var("RABBITMQ_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "rabbitmq-stream://guest:guest@localhost:5552/".to_owned());
    let mut url = default_url;
    let mut stream = "service-registry".to_owned();
    let mut routing_keys = Vec::new();
    let mut offset = OffsetSpecification::Next;
    let mut limit = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = value()?,
            "--stream" => stream = value()?,
            "--routing-key" => routing_keys.push(value()?),
            "--offset" => {
                offset = match value()?.as_str() {
                    "first" => OffsetSpecification::First,
                    "last" => OffsetSpecification::Last,
                    "next" => OffsetSpecification::Next,
                    n => OffsetSpecification::Offset(n.parse().with_context(|| {
                        format!("--offset {n:?}: expected first, last, next or a number")
                    })?),
                }
            }
            "--limit" => {
                let n = value()?;
                limit = Some(
                    n.parse()
                        .with_context(|| format!("--limit {n:?}: expected a whole number"))?,
                );
            }
            other => bail!("unknown option {other:?} (see the comment at the top of this file)"),
        }
    }
    let url = url::Url::parse(&url).with_context(|| format!("--url {url:?} is not a URL"))?;
    if url.scheme() != "rabbitmq-stream" {
        bail!("--url: expected rabbitmq-stream://user:pass@host:5552/vhost");
    }
    Ok(Options {
        url,
        stream,
        routing_keys,
        offset,
        limit,
    })
}

/// A message as one JSON object: where it sits in the stream, its properties, and its body.
fn describe(offset: u64, message: &Message) -> Value {
    let properties = message.properties();
    let subject = properties.and_then(|p| p.subject.clone());
    let publishing_id = properties
        .and_then(|p| p.message_id.clone())
        .and_then(|id| u64::try_from(id).ok());
    let application: BTreeMap<String, String> = message
        .application_properties()
        .map(|props| {
            props
                .iter()
                .map(|(key, value)| {
                    let text = match value {
                        SimpleValue::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default();
    let body = message
        .data()
        .map(|bytes| {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        })
        .unwrap_or(Value::Null);
    json!({
        "offset": offset,
        "message_id": publishing_id,
        "subject": subject,
        "application_properties": application,
        "body": body,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options(std::env::args().skip(1))?;
    let url = &options.url;
    let host = url.host_str().unwrap_or("localhost");
    let user = if url.username().is_empty() {
        "guest"
    } else {
        url.username()
    };
    let vhost = match url.path().trim_start_matches('/') {
        "" => "/".to_owned(),
        path => percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .context("the vhost in --url is not UTF-8")?
            .into_owned(),
    };
    let environment = Environment::builder()
        .host(host)
        .port(url.port().unwrap_or(5552))
        .username(user)
        .password(url.password().unwrap_or("guest"))
        .virtual_host(&vhost)
        .build()
        .await
        .map_err(|e| anyhow!("connecting to {host}: {e}"))?;

    let filter = (!options.routing_keys.is_empty()).then(|| {
        let wanted = options.routing_keys.clone();
        FilterConfiguration::new(options.routing_keys.clone(), false).post_filter(move |message| {
            message
                .properties()
                .and_then(|p| p.subject.as_ref())
                .is_some_and(|subject| wanted.contains(subject))
        })
    });
    let mut consumer = environment
        .consumer()
        .offset(options.offset)
        .filter_input(filter)
        .build(&options.stream)
        .await
        .map_err(|e| anyhow!("subscribing to stream {:?}: {e}", options.stream))?;

    let mut printed = 0u64;
    while options.limit.is_none_or(|limit| printed < limit) {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(delivery) = delivery else { break };
        let delivery = delivery.map_err(|e| anyhow!("delivery failed: {e:?}"))?;
        println!("{}", describe(delivery.offset(), delivery.message()));
        printed += 1;
    }
    // Bounded: the broker may already be gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer.handle().close()).await;
    Ok(())
}
