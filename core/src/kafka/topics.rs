//! Creating topics through the admin API, with one policy for a topic that already exists.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaErrorCode;

/// Creates `topics` (CreateTopics, `timeout` for the request and the operation) and returns, per
/// topic, whether it exists now or the code the cluster refused it with. An outer error means
/// the request itself failed (the cluster does not serve CreateTopics, say).
///
/// A topic that already exists is a success: callers create a topic because they found it
/// missing, and one that appeared since (made by another instance of the service, the operator,
/// or auto-creation) is what they asked for; failing would make instances that start together
/// fail each other. Callers that need particular partitions or configs check the topic they find,
/// as they would any existing topic.
pub async fn create_topics<C: ClientContext + 'static>(
    admin: &AdminClient<C>,
    topics: &[NewTopic<'_>],
    timeout: Duration,
) -> KafkaResult<Vec<(String, Result<(), RDKafkaErrorCode>)>> {
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    Ok(admin
        .create_topics(topics, &options)
        .await?
        .into_iter()
        .map(|result| match result {
            Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => (topic, Ok(())),
            Err((topic, code)) => (topic, Err(code)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use rdkafka::admin::TopicReplication;
    use rdkafka::client::DefaultClientContext;
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::kafka::{KafkaConfig, Role};

    #[tokio::test]
    async fn an_existing_topic_is_a_success_and_a_refused_one_says_why() {
        let cluster = MockCluster::new(1).unwrap();
        let admin: AdminClient<DefaultClientContext> =
            KafkaConfig::new(cluster.bootstrap_servers())
                .client_config(&Role::Admin, "test")
                .create()
                .unwrap();
        let timeout = Duration::from_secs(10);
        let topic = |name| NewTopic::new(name, 2, TopicReplication::Fixed(1));
        let first = create_topics(&admin, &[topic("raw.a")], timeout)
            .await
            .unwrap();
        assert_eq!(first, [("raw.a".to_owned(), Ok(()))]);
        let again = create_topics(&admin, &[topic("raw.a"), topic("bad name!")], timeout)
            .await
            .unwrap();
        assert_eq!(
            again,
            [
                ("raw.a".to_owned(), Ok(())),
                ("bad name!".to_owned(), Err(RDKafkaErrorCode::InvalidTopic))
            ]
        );
    }
}
