//! `cloud-bridge topics ensure`: creates the domain topics or checks them
//! against the configuration, fixing what Kafka lets us fix.
//!
//! | observed | action |
//! | --- | --- |
//! | topic missing | created with partitions, RF, `min.insync.replicas`, `retention.ms`, `max.message.bytes` |
//! | fewer partitions | **drift**; with `--add-partitions`, `create_partitions` |
//! | more partitions | noted; partitions cannot be removed |
//! | other replication factor | **drift** (needs a reassignment, not done here) |
//! | other `min.insync.replicas` / `retention.ms` / `max.message.bytes` | altered; other settings made on the topic are kept |
//!
//! Adding partitions moves keys to other partitions: a store's void could
//! then be read before its sale, which was still in the old partition. So
//! `topics ensure`, which the cloud's PreSync hook runs on every sync, never
//! does it on its own: raising `topics.partitions` is reported as drift until
//! an operator runs it with `--add-partitions` (with producers stopped and
//! consumers caught up), or, better, moves to a new topic (VERSIONING.md).
//!
//! Altering goes through Kafka's AlterConfigs, the one rdkafka offers, which
//! *replaces* a topic's settings: whatever was set on the topic and is not
//! in the request returns to the broker default. So the request carries the
//! topic's other settings as observed (an operator's `cleanup.policy` or
//! `segment.ms` survives), and a topic with a sensitive setting, whose value
//! Kafka does not return, is reported rather than altered.
//!
//! rdkafka (0.39) drops the broker's per-topic error codes of DescribeConfigs
//! and AlterConfigs: a refused describe comes back as a topic with no
//! settings at all, a refused alter as a success. So a topic described with
//! no settings (Kafka lists every setting, defaults included, of a topic it
//! describes) is reported as not checked and never altered: altering it
//! from nothing would reset whatever an operator set on it. And an alter is
//! believed only when a second describe shows our values.
//!
//! The comparison ([`plan`]) is pure; only [`ensure`] talks to Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use protocol::topics::KafkaTopic;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigResource, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

use crate::config::TopicsConfig;
use crate::kafka_log::KafkaLog;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Kafka admin client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Failed(String),
}

/// What a topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: Vec<(&'static str, String)>,
}

/// What the cluster has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub partitions: i32,
    pub replication_factor: i32,
    /// Our settings ([`TopicSpec::configs`]' keys) as the topic has them.
    pub configs: HashMap<String, String>,
    /// Every other setting made on the topic itself; `None` for a
    /// sensitive one, whose value Kafka does not return.
    pub other_overrides: BTreeMap<String, Option<String>>,
    /// Kafka described the topic with no settings at all: the describe was
    /// refused (see the module docs), so `configs` says nothing.
    pub configs_unread: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create,
    AddPartitions(i32),
    /// Our settings, with the topic's other settings to keep.
    AlterConfigs {
        set: Vec<(&'static str, String)>,
        keep: Vec<(String, String)>,
    },
    Note(String),
    Drift(String),
}

/// The desired state of every domain topic.
pub fn specs(cfg: &TopicsConfig) -> Vec<TopicSpec> {
    KafkaTopic::ALL
        .iter()
        .map(|t| {
            let retention = if *t == KafkaTopic::DeadLetters {
                cfg.dead_letter_retention_ms
            } else {
                cfg.retention_ms
            };
            TopicSpec {
                name: t.name(),
                partitions: cfg.partitions,
                replication_factor: cfg.replication_factor,
                configs: vec![
                    ("min.insync.replicas", cfg.min_insync_replicas.to_string()),
                    ("retention.ms", retention.to_string()),
                    ("max.message.bytes", cfg.max_message_bytes.to_string()),
                ],
            }
        })
        .collect()
}

/// Compares one topic; an empty plan means it is as configured.
/// `add_partitions`: an operator asked for missing partitions to be added.
pub fn plan(spec: &TopicSpec, observed: Option<&Observed>, add_partitions: bool) -> Vec<Step> {
    let Some(o) = observed else {
        return vec![Step::Create];
    };
    let mut steps = Vec::new();
    if o.configs_unread {
        steps.push(Step::Drift(
            "settings not checked: Kafka described none of them, so this principal \
             probably lacks DescribeConfigs on the topic (grant it, or set \
             kafka.ensure_topics_at_startup = false and have the topics managed elsewhere)"
                .to_owned(),
        ));
    }
    if o.partitions < spec.partitions && add_partitions {
        steps.push(Step::AddPartitions(spec.partitions));
    } else if o.partitions < spec.partitions {
        steps.push(Step::Drift(format!(
            "has {} partitions, configured {}: adding partitions moves keys and breaks \
             per-store order for records not yet consumed; stop producers, let consumers \
             catch up and run `topics ensure --add-partitions`, or move to a new topic",
            o.partitions, spec.partitions
        )));
    } else if o.partitions > spec.partitions {
        steps.push(Step::Note(format!(
            "has {} partitions, more than the configured {} (partitions cannot be removed)",
            o.partitions, spec.partitions
        )));
    }
    if o.replication_factor != spec.replication_factor {
        steps.push(Step::Drift(format!(
            "replication factor is {}, configured {} (needs a partition reassignment)",
            o.replication_factor, spec.replication_factor
        )));
    }
    let mut wanted = spec.configs.clone();
    if !o.configs_unread {
        if let Some(why) = hold_min_insync(&mut wanted, o) {
            steps.push(Step::Drift(why));
        }
    }
    let differs = !o.configs_unread
        && wanted
            .iter()
            .any(|(k, v)| o.configs.get(*k).map(String::as_str) != Some(v.as_str()));
    if differs {
        let sensitive: Vec<&str> = o
            .other_overrides
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        if sensitive.is_empty() {
            steps.push(Step::AlterConfigs {
                set: wanted.clone(),
                keep: o
                    .other_overrides
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                    .collect(),
            });
        } else {
            steps.push(Step::Drift(format!(
                "settings differ from the configuration, but altering them would reset the \
                 topic's sensitive settings {sensitive:?}, whose values Kafka does not return; \
                 set {:?} by hand",
                wanted
            )));
        }
    }
    steps
}

/// `min.insync.replicas` is the one setting `ensure` never moves on its
/// own: above the topic's real replica count every `acks=all` write fails
/// (Kafka accepts the setting all the same), and below what the topic has
/// it weakens every write's durability. In either case the topic's value is
/// kept in `wanted` and the reason returned, to be reported as drift.
fn hold_min_insync(wanted: &mut Vec<(&'static str, String)>, o: &Observed) -> Option<String> {
    let want: i32 = wanted
        .iter()
        .find(|(k, _)| *k == "min.insync.replicas")?
        .1
        .parse()
        .ok()?;
    let have = o
        .configs
        .get("min.insync.replicas")
        .and_then(|v| v.parse::<i32>().ok());
    let why = if want > o.replication_factor {
        format!(
            "min.insync.replicas {want} is more than the topic's {} replicas: every \
             acks=all write would fail, so it is not set (fix the replication factor first)",
            o.replication_factor
        )
    } else if have.is_some_and(|h| want < h) {
        format!(
            "min.insync.replicas is {}, configured {want}: not lowered, which would weaken \
             the durability of every write (lower it by hand if that is meant)",
            have.unwrap_or_default()
        )
    } else {
        return None;
    };
    match have {
        Some(h) => {
            for (k, v) in wanted.iter_mut() {
                if *k == "min.insync.replicas" {
                    *v = h.to_string();
                }
            }
        }
        // Nothing known to keep: left to Kafka's default, not set.
        None => wanted.retain(|(k, _)| *k != "min.insync.replicas"),
    }
    Some(why)
}

/// The outcome of [`ensure`], one line per finding.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    /// Drift that could not be fixed: `topics ensure` exits non-zero.
    pub unfixed: Vec<String>,
}

/// Creates or checks (and with `fix`, repairs) every domain topic.
///
/// The admin client's context: its log lines go through [`KafkaLog`] too,
/// one limiter for the process, since start-up creates a client per attempt
/// while Kafka is unreachable.
pub struct AdminContext(&'static KafkaLog);

static ADMIN_LOG: std::sync::LazyLock<KafkaLog> =
    std::sync::LazyLock::new(|| KafkaLog::new("admin"));

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

/// `connection`: the security settings of the producer's config
/// ([`crate::config::KafkaConfig::connection`]), so a TLS or SASL cluster is
/// reached the same way.
pub async fn ensure(
    bootstrap: &str,
    connection: &BTreeMap<String, String>,
    cfg: &TopicsConfig,
    fix: bool,
    add_partitions: bool,
) -> Result<Report, AdminError> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap);
    for (k, v) in connection {
        client.set(k, v);
    }
    let admin: Arc<AdminClient<AdminContext>> =
        Arc::new(client.create_with_context(AdminContext(&ADMIN_LOG))?);
    let observed = observe(Arc::clone(&admin)).await?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut report = Report::default();
    for spec in specs(cfg) {
        for step in plan(&spec, observed.get(spec.name), add_partitions) {
            let line = apply(&admin, &opts, &spec, &step, fix).await;
            match (&step, line) {
                (Step::Drift(d), _) => {
                    report.unfixed.push(format!("{}: {d}", spec.name));
                }
                (_, Ok(l)) => report.lines.push(format!("{}: {l}", spec.name)),
                (_, Err(e)) => report.unfixed.push(format!("{}: {e}", spec.name)),
            }
        }
        if report
            .lines
            .iter()
            .chain(&report.unfixed)
            .all(|l| !l.starts_with(spec.name))
        {
            report.lines.push(format!("{}: ok", spec.name));
        }
    }
    Ok(report)
}

async fn apply(
    admin: &AdminClient<AdminContext>,
    opts: &AdminOptions,
    spec: &TopicSpec,
    step: &Step,
    fix: bool,
) -> Result<String, String> {
    if !fix {
        return match step {
            Step::Note(n) => Ok(n.clone()),
            other => Err(format!("differs: {other:?}")),
        };
    }
    match step {
        Step::Create => {
            let mut t = NewTopic::new(
                spec.name,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            );
            for (k, v) in &spec.configs {
                t = t.set(k, v);
            }
            let r = admin
                .create_topics([&t], opts)
                .await
                .map_err(|e| e.to_string())?;
            match r.into_iter().next() {
                Some(Ok(_)) => Ok(format!(
                    "created ({} partitions, RF {})",
                    spec.partitions, spec.replication_factor
                )),
                Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => {
                    Ok("created by someone else meanwhile".to_owned())
                }
                Some(Err((_, code))) => Err(format!("create failed: {code}")),
                None => Err("create: no result".to_owned()),
            }
        }
        Step::AddPartitions(n) => {
            let count = usize::try_from(*n).map_err(|e| e.to_string())?;
            let p = NewPartitions::new(spec.name, count);
            let r = admin
                .create_partitions([&p], opts)
                .await
                .map_err(|e| e.to_string())?;
            match r.into_iter().next() {
                Some(Ok(_)) => Ok(format!("partitions increased to {n}")),
                Some(Err((_, code))) => Err(format!("adding partitions failed: {code}")),
                None => Err("create_partitions: no result".to_owned()),
            }
        }
        Step::AlterConfigs { set, keep } => {
            let mut a = AlterConfig::new(ResourceSpecifier::Topic(spec.name));
            for (k, v) in keep {
                a = a.set(k, v);
            }
            for (k, v) in set {
                a = a.set(k, v);
            }
            let r = admin
                .alter_configs([&a], opts)
                .await
                .map_err(|e| e.to_string())?;
            match r.into_iter().next() {
                Some(Ok(_)) => {}
                Some(Err((_, code))) => return Err(format!("altering configs failed: {code}")),
                None => return Err("alter_configs: no result".to_owned()),
            }
            // "Ok" is all rdkafka ever says here (module docs): read back,
            // for a while, since the broker that answers may not have
            // applied the change from the metadata log yet.
            let mut missed = Vec::new();
            for attempt in 0..READ_BACK_TRIES {
                if attempt > 0 {
                    tokio::time::sleep(READ_BACK_PAUSE).await;
                }
                let now = describe(admin, spec.name)
                    .await
                    .map_err(|e| format!("altered configs, but cannot read them back: {e}"))?;
                missed = set
                    .iter()
                    .filter(|(k, v)| now.configs.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k} is {:?}, wanted {v:?}", now.configs.get(*k)))
                    .collect();
                if missed.is_empty() {
                    break;
                }
            }
            if missed.is_empty() {
                Ok(format!(
                    "configs set: {set:?}; other settings kept: {:?}",
                    keep.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
                ))
            } else {
                Err(format!(
                    "altering configs was not applied ({}): Kafka refused it, or another \
                     writer changed them; this principal needs AlterConfigs on the topic",
                    missed.join(", ")
                ))
            }
        }
        Step::Note(n) => Ok(n.clone()),
        Step::Drift(d) => Err(d.clone()),
    }
}

/// How long an alter is given to show in a describe: 10 × 0.5 s.
const READ_BACK_TRIES: usize = 10;
const READ_BACK_PAUSE: Duration = Duration::from_millis(500);

/// The topic settings [`specs`] sets.
const OUR_CONFIGS: [&str; 3] = ["min.insync.replicas", "retention.ms", "max.message.bytes"];

/// Partitions, replication factor and settings of the domain topics that exist.
async fn observe(
    admin: Arc<AdminClient<AdminContext>>,
) -> Result<HashMap<String, Observed>, AdminError> {
    let a = Arc::clone(&admin);
    // Metadata requests block: keep them off the async workers.
    let md = tokio::task::spawn_blocking(move || {
        a.inner().fetch_metadata(None, Duration::from_secs(15))
    })
    .await
    .map_err(|e| AdminError::Failed(format!("metadata task: {e}")))??;
    let mut out = HashMap::new();
    for t in md.topics() {
        if !KafkaTopic::ALL.iter().any(|k| k.name() == t.name()) || t.error().is_some() {
            continue;
        }
        // The weakest partition's: one left with fewer replicas (a botched
        // reassignment) is drift; one with extra ones while a reassignment
        // runs is not.
        let rf = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0);
        out.insert(
            t.name().to_owned(),
            Observed {
                partitions: i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                replication_factor: i32::try_from(rf).unwrap_or(i32::MAX),
                configs: HashMap::new(),
                other_overrides: BTreeMap::new(),
                configs_unread: false,
            },
        );
    }
    let names: Vec<String> = out.keys().cloned().collect();
    if !names.is_empty() {
        let specs: Vec<ResourceSpecifier<'_>> =
            names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
        let res = admin.describe_configs(&specs, &describe_options()).await?;
        for (name, r) in names.iter().zip(res) {
            let r = r.map_err(|code| AdminError::Failed(format!("describe {name}: {code}")))?;
            if let Some(o) = out.get_mut(name) {
                read_settings(&r, o);
            }
        }
    }
    Ok(out)
}

fn describe_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(15)))
}

/// One topic's settings, as [`observe`] reads them.
async fn describe(admin: &AdminClient<AdminContext>, name: &str) -> Result<Observed, AdminError> {
    let res = admin
        .describe_configs(&[ResourceSpecifier::Topic(name)], &describe_options())
        .await?;
    let r = res
        .into_iter()
        .next()
        .ok_or_else(|| AdminError::Failed(format!("describe {name}: no result")))?
        .map_err(|code| AdminError::Failed(format!("describe {name}: {code}")))?;
    let mut o = Observed::default();
    read_settings(&r, &mut o);
    Ok(o)
}

/// Fills `o`'s settings from a described topic.
fn read_settings(r: &ConfigResource, o: &mut Observed) {
    o.configs_unread = r.entries.is_empty();
    for key in OUR_CONFIGS {
        if let Some(v) = r.get(key).and_then(|e| e.value.clone()) {
            o.configs.insert(key.to_owned(), v);
        }
    }
    o.other_overrides = r
        .entries
        .iter()
        .filter(|e| {
            e.source == ConfigSource::DynamicTopic && !OUR_CONFIGS.contains(&e.name.as_str())
        })
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TopicsConfig {
        TopicsConfig {
            partitions: 12,
            replication_factor: 3,
            min_insync_replicas: 2,
            retention_ms: 1000,
            dead_letter_retention_ms: 2000,
            max_message_bytes: 1_000_000,
        }
    }

    fn observed_as(spec: &TopicSpec) -> Observed {
        Observed {
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            configs: spec
                .configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            other_overrides: BTreeMap::new(),
            configs_unread: false,
        }
    }

    #[test]
    fn a_topic_as_configured_needs_nothing_and_a_missing_one_is_created() {
        for spec in specs(&cfg()) {
            assert!(plan(&spec, Some(&observed_as(&spec)), false).is_empty());
            assert_eq!(plan(&spec, None, false), [Step::Create]);
        }
    }

    #[test]
    fn fewer_partitions_are_added_only_when_asked_and_another_replication_factor_is_drift() {
        let spec = specs(&cfg()).remove(0);
        let mut o = observed_as(&spec);
        o.partitions = 3;
        o.replication_factor = 1;
        o.configs.insert("retention.ms".into(), "5".into());
        let steps = plan(&spec, Some(&o), true);
        assert!(steps.contains(&Step::AddPartitions(12)));
        assert!(steps.iter().any(|s| matches!(s, Step::Drift(_))));
        assert!(steps.iter().any(|s| matches!(s, Step::AlterConfigs { .. })));

        o.replication_factor = spec.replication_factor;
        let steps = plan(&spec, Some(&o), false);
        assert!(!steps.iter().any(|s| matches!(s, Step::AddPartitions(_))));
        assert!(
            steps.iter().any(
                |s| matches!(s, Step::Drift(d) if d.contains("has 3 partitions, configured 12"))
            ),
            "{steps:?}"
        );
    }

    #[test]
    fn altering_our_settings_keeps_the_topics_other_settings_or_refuses_to_reset_them() {
        let spec = specs(&cfg()).remove(0);
        let mut o = observed_as(&spec);
        o.configs.insert("retention.ms".into(), "5".into());
        o.other_overrides
            .insert("cleanup.policy".into(), Some("compact,delete".into()));
        assert_eq!(
            plan(&spec, Some(&o), false),
            [Step::AlterConfigs {
                set: spec.configs.clone(),
                keep: vec![("cleanup.policy".into(), "compact,delete".into())],
            }]
        );
        // A setting whose value Kafka hides would be reset: not altered.
        o.other_overrides.insert("some.secret".into(), None);
        let steps = plan(&spec, Some(&o), false);
        assert!(
            matches!(&steps[..], [Step::Drift(d)] if d.contains("some.secret")),
            "{steps:?}"
        );
        // As configured: nothing to do, whatever else the topic has.
        let mut o = observed_as(&spec);
        o.other_overrides.insert("some.secret".into(), None);
        assert!(plan(&spec, Some(&o), false).is_empty());
    }

    #[test]
    fn a_topic_described_with_no_settings_is_reported_and_never_altered() {
        let spec = specs(&cfg()).remove(0);
        // What a refused DescribeConfigs looks like through rdkafka.
        let unread = Observed {
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            configs_unread: true,
            ..Observed::default()
        };
        let steps = plan(&spec, Some(&unread), false);
        assert!(
            matches!(&steps[..], [Step::Drift(d)] if d.contains("not checked") && d.contains("DescribeConfigs")),
            "{steps:?}"
        );
        // What metadata shows is still compared.
        let fewer = Observed {
            partitions: spec.partitions - 1,
            ..unread
        };
        let steps = plan(&spec, Some(&fewer), false);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(
            !steps.iter().any(|s| matches!(s, Step::AlterConfigs { .. })),
            "{steps:?}"
        );
    }

    /// `min.insync.replicas` above the topic's real replica count would
    /// fail every `acks=all` write, and below the topic's own it would
    /// weaken them: either way it is reported, never set.
    #[test]
    fn min_insync_replicas_is_never_raised_past_the_replicas_nor_lowered() {
        let spec = specs(&cfg()).remove(0);
        let mut o = observed_as(&spec);
        o.replication_factor = 1;
        o.configs.insert("min.insync.replicas".into(), "1".into());
        o.configs.insert("retention.ms".into(), "5".into());
        let steps = plan(&spec, Some(&o), false);
        let set = steps.iter().find_map(|s| match s {
            Step::AlterConfigs { set, .. } => Some(set.clone()),
            _ => None,
        });
        assert!(
            set.as_ref()
                .is_some_and(|set| set.contains(&("min.insync.replicas", "1".into()))
                    && set.contains(&("retention.ms", "1000".into()))),
            "retention is fixed, min.insync.replicas kept at 1: {steps:?}"
        );
        assert!(
            steps.iter().any(
                |s| matches!(s, Step::Drift(d) if d.contains("every acks=all write would fail"))
            ),
            "{steps:?}"
        );
        // Only that differs: reported, nothing altered.
        o.configs.insert("retention.ms".into(), "1000".into());
        let steps = plan(&spec, Some(&o), false);
        assert!(
            !steps.iter().any(|s| matches!(s, Step::AlterConfigs { .. })),
            "{steps:?}"
        );

        // A hardened topic (3 replicas, min 3) under a config asking for 2.
        let mut hardened = observed_as(&spec);
        hardened
            .configs
            .insert("min.insync.replicas".into(), "3".into());
        let steps = plan(&spec, Some(&hardened), false);
        assert!(
            matches!(&steps[..], [Step::Drift(d)] if d.contains("not lowered")),
            "{steps:?}"
        );
    }

    #[test]
    fn dead_letters_keep_their_own_retention() {
        let s = specs(&cfg());
        let dlq = s
            .iter()
            .find(|t| t.name == KafkaTopic::DeadLetters.name())
            .expect("dlq spec");
        assert!(dlq.configs.contains(&("retention.ms", "2000".to_owned())));
    }
}
