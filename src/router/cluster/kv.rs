//! The JetStream key-value buckets of the cluster (retained messages and
//! the session directory): opened, or made when missing.

use async_nats::jetstream::{self, kv};

/// Opens the bucket `name`: the existing one (as it is), or a new one
/// with history 1 (only the latest value of a key matters) and `replicas`
/// replicas. The bucket's stream is made here as
/// `Context::create_key_value` makes it (ADR-8), because that function
/// first reads the account's JetStream info, which async-nats 0.46 cannot
/// parse from a 2.9 server (Debian 12's nats-server).
pub(super) async fn open_bucket(
    context: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = context.get_key_value(name).await {
        return Ok(store);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    if let Err(error) = context.get_or_create_stream(config).await {
        // Two nodes starting together: the other one may have made it in
        // between ("subjects overlap with an existing stream"); it opens.
        return context.get_key_value(name).await.map_err(|_| error.into());
    }
    Ok(context.get_key_value(name).await?)
}
