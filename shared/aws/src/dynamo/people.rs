//! People known from HR events and quarantines, in the runs table:
//! - `PERSON#<id>` / `PERSON` — the person as the latest HR event described them;
//! - `QUARANTINE#<id>` / `QUARANTINE` — what the brake held and why, its status and decision;
//! - `QUARANTINE#<id>` / `RUN#<n>` — each held run's input, in order (one item each, so a
//!   large quarantine stays far below DynamoDB's 400 KB item limit).

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use deprov_core::flow::RunInput;
use deprov_core::people::PersonRecord;
use deprov_core::ports::{Decided, StoreError};
use deprov_core::quarantine::{Decision, Quarantine, QuarantineStatus};

use super::{backend, corrupt, is_condition_failure, s, text, time, DynamoRunStore, Item};

fn quarantine_pk(id: &str) -> String {
    format!("QUARANTINE#{id}")
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(err.to_string()))
}

fn sortable(at: &DateTime<Utc>) -> String {
    time(at)
}

impl DynamoRunStore {
    pub(super) async fn record_person_item(&self, person: &PersonRecord) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("PERSON#{}", person.person_id)))
            .item("sk", s("PERSON"))
            .item("as_of", s(sortable(&person.as_of)))
            .item("record", s(encode(person)?))
            // An event effective earlier than the stored one (a late delivery) changes nothing.
            .condition_expression("attribute_not_exists(pk) OR as_of <= :as_of")
            .expression_attribute_values(":as_of", s(sortable(&person.as_of)))
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failure(&err) => Ok(()),
            Err(err) => Err(backend("PutItem person", err)),
        }
    }

    /// Items of one kind (`sk`) across the table.
    async fn scan_kind(&self, sk: &str) -> Result<Vec<Item>, StoreError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("sk = :sk")
            .expression_attribute_values(":sk", s(sk))
            .into_paginator()
            .items()
            .send();
        let mut items = Vec::new();
        while let Some(item) = pages.next().await {
            items.push(item.map_err(|err| backend("Scan", err))?);
        }
        Ok(items)
    }

    pub(super) async fn people_items(&self) -> Result<Vec<PersonRecord>, StoreError> {
        let mut people: Vec<PersonRecord> = self
            .scan_kind("PERSON")
            .await?
            .iter()
            .map(|item| {
                serde_json::from_str(text(item, "record")?)
                    .map_err(|err| corrupt("person record", err))
            })
            .collect::<Result<_, _>>()?;
        people.sort_by(|a, b| a.person_id.cmp(&b.person_id));
        Ok(people)
    }

    pub(super) async fn put_quarantine_items(
        &self,
        quarantine: &Quarantine,
    ) -> Result<Quarantine, StoreError> {
        let pk = quarantine_pk(&quarantine.quarantine_id);
        // The held runs first: the header makes the quarantine visible, complete.
        for (index, input) in quarantine.runs.iter().enumerate() {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s(format!("RUN#{index:06}")))
                .item("input", s(encode(input)?))
                .send()
                .await
                .map_err(|err| backend("PutItem held run", err))?;
        }
        let header = Quarantine {
            runs: Vec::new(),
            ..quarantine.clone()
        };
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("sk", s("QUARANTINE"))
            .item("status", s(quarantine.status.as_str()))
            .item("created_at", s(sortable(&quarantine.created_at)))
            .item("held", AttributeValue::N(quarantine.runs.len().to_string()))
            .item("record", s(encode(&header)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(quarantine.clone()),
            Err(err) if is_condition_failure(&err) => self
                .get_quarantine_items(&quarantine.quarantine_id)
                .await?
                .ok_or_else(|| corrupt("quarantine", "vanished")),
            Err(err) => Err(backend("PutItem quarantine", err)),
        }
    }

    pub(super) async fn get_quarantine_items(
        &self,
        id: &str,
    ) -> Result<Option<Quarantine>, StoreError> {
        let items = self
            .query(None, "pk = :pk", vec![(":pk", s(quarantine_pk(id)))])
            .await?;
        let Some(header) = items.iter().find(|item| {
            item.get("sk")
                .and_then(|sk| sk.as_s().ok())
                .map(String::as_str)
                == Some("QUARANTINE")
        }) else {
            return Ok(None);
        };
        let mut quarantine: Quarantine = serde_json::from_str(text(header, "record")?)
            .map_err(|err| corrupt(&format!("quarantine {id}"), err))?;
        // Query returns the items in `sk` order: RUN#000000, RUN#000001, …
        for item in items.iter().filter(|item| item.contains_key("input")) {
            let input: RunInput = serde_json::from_str(text(item, "input")?)
                .map_err(|err| corrupt(&format!("held run of quarantine {id}"), err))?;
            quarantine.runs.push(input);
        }
        Ok(Some(quarantine))
    }

    pub(super) async fn quarantine_items(&self) -> Result<Vec<Quarantine>, StoreError> {
        let mut quarantines = Vec::new();
        for header in self.scan_kind("QUARANTINE").await? {
            let id = text(&header, "pk")?
                .trim_start_matches("QUARANTINE#")
                .to_string();
            if let Some(quarantine) = self.get_quarantine_items(&id).await? {
                quarantines.push(quarantine);
            }
        }
        quarantines.sort_by(|a, b| {
            (a.created_at, &a.quarantine_id).cmp(&(b.created_at, &b.quarantine_id))
        });
        Ok(quarantines)
    }

    pub(super) async fn decide_quarantine_item(
        &self,
        id: &str,
        status: QuarantineStatus,
        decision: &Decision,
    ) -> Result<Decided, StoreError> {
        let Some(stored) = self.get_quarantine_items(id).await? else {
            return Ok(Decided::Unknown);
        };
        if stored.status != QuarantineStatus::Pending {
            return Ok(Decided::Before(Box::new(stored)));
        }
        let decided = Quarantine {
            status,
            decision: Some(decision.clone()),
            ..stored
        };
        let header = Quarantine {
            runs: Vec::new(),
            ..decided.clone()
        };
        // The first decision wins: only a pending quarantine is updated.
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(quarantine_pk(id)))
            .key("sk", s("QUARANTINE"))
            .update_expression("SET #status = :status, #record = :record")
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#record", "record")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":record", s(encode(&header)?))
            .expression_attribute_values(":pending", s(QuarantineStatus::Pending.as_str()))
            .send()
            .await;
        match update {
            Ok(_) => Ok(Decided::Now(Box::new(decided))),
            Err(err) if is_condition_failure(&err) => Ok(self
                .get_quarantine_items(id)
                .await?
                .map_or(Decided::Unknown, |q| Decided::Before(Box::new(q)))),
            Err(err) => Err(backend("UpdateItem quarantine", err)),
        }
    }
}
