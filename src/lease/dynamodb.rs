//! The lease in a DynamoDB table: one item per rack, keyed by `name` (a string hash key), every
//! write conditional on the item last read. Items are never deleted (a release empties the
//! holder), so the fencing counter only ever grows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::{LeaseError, LeaseRecord, LeaseStore};
use crate::metrics::Metrics;
use crate::rack::sdk::map_error;
use crate::rack::RackError;

/// The calls made, as (service, operation): metric labels, and the IAM actions granted.
const GET_ITEM: (&str, &str) = ("dynamodb", "GetItem");
const PUT_ITEM: (&str, &str) = ("dynamodb", "PutItem");

/// A rack's lease item in a DynamoDB table.
pub struct DynamoLeaseStore {
    client: Client,
    table: String,
    name: String,
    metrics: Metrics,
}

impl DynamoLeaseStore {
    pub fn new(client: Client, table: &str, name: &str, metrics: Metrics) -> Self {
        DynamoLeaseStore {
            client,
            table: table.into(),
            name: name.into(),
            metrics,
        }
    }

    /// A failed call: counted by the outcome the rack adapter's classification gives it
    /// (transient, access denied...), and reported with AWS's own code and message.
    fn failed<E>(
        &self,
        (service, operation): (&'static str, &'static str),
        e: &SdkError<E>,
    ) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = map_error(service, operation, &self.table, e);
        self.count((service, operation), err.outcome());
        let message = match err {
            RackError::Api { message, .. } => message,
            other => other.to_string(),
        };
        LeaseError {
            table: self.table.clone(),
            operation,
            message,
        }
    }

    fn count(&self, (service, operation): (&'static str, &'static str), outcome: &'static str) {
        self.metrics.api_call(service, operation, outcome);
    }
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Item = std::collections::HashMap<String, AttributeValue>;

fn number(item: &Item, key: &str) -> Option<u64> {
    item.get(key)?.as_n().ok()?.parse().ok()
}

/// The lease an item holds, if it is one.
fn record(item: &Item) -> Option<LeaseRecord> {
    Some(LeaseRecord {
        holder: item.get("holder")?.as_s().ok()?.clone(),
        fence: number(item, "fence")?,
        renewals: number(item, "renewals")?,
        expires_at: UNIX_EPOCH + Duration::from_millis(number(item, "expires_at_ms")?),
        duration: Duration::from_millis(number(item, "duration_ms").unwrap_or(0)),
    })
}

#[async_trait]
impl LeaseStore for DynamoLeaseStore {
    async fn read(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("name", AttributeValue::S(self.name.clone()))
            .consistent_read(true)
            .send()
            .await;
        let out = match out {
            Ok(o) => {
                self.count(GET_ITEM, "success");
                o
            }
            Err(e) => return Err(self.failed(GET_ITEM, &e)),
        };
        let Some(item) = out.item else {
            return Ok(None);
        };
        match record(&item) {
            Some(r) => Ok(Some(r)),
            None => Err(LeaseError {
                table: self.table.clone(),
                operation: "GetItem",
                message: format!(
                    "the item {} is not a rack-reconciler lease (fence, renewals, expires_at_ms): is the table another tool's?",
                    self.name
                ),
            }),
        }
    }

    async fn swap(
        &self,
        expected: Option<&LeaseRecord>,
        new: &LeaseRecord,
    ) -> Result<bool, LeaseError> {
        let ms = epoch_ms(new.expires_at);
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("name", AttributeValue::S(self.name.clone()))
            .item("holder", AttributeValue::S(new.holder.clone()))
            .item("fence", n(new.fence))
            .item("renewals", n(new.renewals))
            .item("expires_at_ms", n(ms))
            .item("duration_ms", n(new.duration.as_millis() as u64))
            // A retry of a write that had landed fails its condition: the item then tells.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        put = match expected {
            None => put
                .condition_expression("attribute_not_exists(#n)")
                .expression_attribute_names("#n", "name"),
            Some(old) => put
                .condition_expression("#h = :h AND fence = :f AND renewals = :r")
                .expression_attribute_names("#h", "holder")
                .expression_attribute_values(":h", AttributeValue::S(old.holder.clone()))
                .expression_attribute_values(":f", n(old.fence))
                .expression_attribute_values(":r", n(old.renewals)),
        };
        match put.send().await {
            Ok(_) => {
                self.count(PUT_ITEM, "success");
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(PutItemError::is_conditional_check_failed_exception) =>
            {
                self.count(PUT_ITEM, "condition_failed");
                // The SDK resent a write whose first attempt had landed (its answer was lost):
                // the item is what this write stored, so it succeeded.
                let landed = e
                    .as_service_error()
                    .and_then(|se| match se {
                        PutItemError::ConditionalCheckFailedException(c) => c.item(),
                        _ => None,
                    })
                    .and_then(record)
                    .is_some_and(|stored| stored == *new);
                Ok(landed)
            }
            Err(e) => Err(self.failed(PUT_ITEM, &e)),
        }
    }
}
